"""The wheels scripts/gpu-wheels downloads install offline over the GPU image's packages.

The proof pip's resolver gives: in a fresh Python 3.12 venv standing in for the GPU image (the same
stand-in the script resolves over), `pip install --dry-run --no-index --find-links .whl` of voxport's
[gpu] and [dev] requirements, and of voxcpm / nano-vllm-voxcpm with --no-deps, must succeed: no
requirement is left that neither the image nor .whl/ satisfies. A dry run, not a real install, keeps
it to seconds. Skipped when .whl/ has not been built here (it needs the registry) or no python3.12, unless
VOXPORT_REQUIRE_GPU_WHEELS is set: CI builds .whl/ on every change (`python3 scripts/gpu_wheels.py wheels
.whl`, which itself fails when a dependency cannot be carried) and sets it, so there this test runs.
"""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from tests.gates import missing

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".whl"
REQUIRE = "VOXPORT_REQUIRE_GPU_WHEELS"


def gpu_wheels() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_wheels", ROOT / "scripts" / "gpu_wheels.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_image_list_names_what_the_gpu_machine_has() -> None:
    packages = gpu_wheels().image_packages()
    assert {"torch", "triton", "numpy"} <= set(packages)
    assert all(version for version in packages.values())


def _wheels_and_python(wheels: Path) -> tuple[ModuleType, str]:
    if not (wheels / "requirements.txt").is_file():
        missing(REQUIRE, f"{wheels} is not built (scripts/gpu-wheels downloads it from the registry)")
    module = gpu_wheels()
    python = module.python312()
    if python is None:
        missing(REQUIRE, "there is no python3.12 here (the GPU image's Python)")
    return module, python


def test_a_missing_wheel_set_skips_only_when_not_required(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(REQUIRE, raising=False)
    with pytest.raises(pytest.skip.Exception, match="is not built"):
        _wheels_and_python(tmp_path)
    monkeypatch.setenv(REQUIRE, "1")
    with pytest.raises(pytest.fail.Exception, match=f"{REQUIRE} is set but .* is not built"):
        _wheels_and_python(tmp_path)


def test_a_source_only_package_is_carried_only_as_a_pure_python_wheel(tmp_path: Path) -> None:
    """scripts/gpu_wheels.py's check on what `pip wheel` built from a source distribution: a pure-Python
    wheel is carried, a platform one is refused by name (it could not have been compiled there)."""
    module = gpu_wheels()
    for name in ("pure-1.0-py3-none-any.whl", "compiled-2.0-cp312-cp312-linux_x86_64.whl"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "out").mkdir()
    with pytest.raises(module.NotCarried, match=r"compiled-2\.0-cp312-cp312-linux_x86_64\.whl") as refused:
        module.carry_built(tmp_path, tmp_path / "out")
    assert "pure-1.0" not in str(refused.value)
    (tmp_path / "compiled-2.0-cp312-cp312-linux_x86_64.whl").unlink()
    assert module.carry_built(tmp_path, tmp_path / "out") == ["pure-1.0-py3-none-any.whl"]
    assert (tmp_path / "out" / "pure-1.0-py3-none-any.whl").is_file()


@pytest.mark.slow
@pytest.mark.timeout(1200)  # its own bounds add up to more than the default
def test_downloaded_wheels_install_offline_over_the_image(tmp_path: Path) -> None:
    module, python = _wheels_and_python(WHEELS)
    image_python = module.image_venv(tmp_path / "image", python)
    offline = [
        str(image_python),
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--no-index",
        "--find-links",
        str(WHEELS),
    ]
    offline += ["--disable-pip-version-check", "--only-binary=:all:"]

    closure = subprocess.run(
        [*offline, "-r", str(WHEELS / "requirements.txt")], capture_output=True, text=True, timeout=300
    )
    engines = subprocess.run(
        [*offline, "--no-deps", *module.NO_DEPS], capture_output=True, text=True, timeout=300
    )

    assert closure.returncode == 0, closure.stderr[-3000:]
    assert engines.returncode == 0, engines.stderr[-3000:]
    assert "Would install" in closure.stdout
