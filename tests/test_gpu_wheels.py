"""The wheels scripts/gpu-wheels downloads install offline over the GPU image's packages.

The proof pip's resolver gives: in a fresh Python 3.12 venv standing in for the GPU image (the same
stand-in the script resolves over), `pip install --dry-run --no-index --find-links .whl` of voxport's
[gpu] and [dev] requirements, and of voxcpm / nano-vllm-voxcpm with --no-deps, must succeed: no
requirement is left that neither the image nor .whl/ satisfies. A dry run, not a real install, keeps
it to seconds. Skipped when .whl/ has not been built here (it needs the registry) or no python3.12.
"""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".whl"


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


@pytest.mark.slow
def test_downloaded_wheels_install_offline_over_the_image(tmp_path: Path) -> None:
    if not (WHEELS / "requirements.txt").is_file():
        pytest.skip("run scripts/gpu-wheels first (it downloads .whl/ from the registry)")
    module = gpu_wheels()
    python = module.python312()
    if python is None:
        pytest.skip("no python3.12 here (the GPU image's Python)")
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
