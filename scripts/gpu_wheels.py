"""The wheel closure the GPU machine needs, resolved by pip over what its image already has.

Used by scripts/gpu-wheels (which downloads and measures) and by tests/test_gpu_wheels.py (which proves
the downloaded set installs offline). The GPU image is stood in for by a fresh Python 3.12 virtual
environment holding a metadata-only `*.dist-info` for each package of scripts/gpu-image-packages.txt: pip's
resolver then counts those as installed and satisfied, resolves only the rest, and never fetches torch's
CUDA build to read its metadata. The stubs declare no dependencies, so whatever voxport needs is asked for
by voxport's own requirements (pyproject.toml), not inherited from an image package.

    python3 scripts/gpu_wheels.py requirements OUT.txt   voxport's [gpu] + [dev] requirements, one per line
    python3 scripts/gpu_wheels.py image-venv DIR         the stand-in environment
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
IMAGE_PACKAGES = ROOT / "scripts" / "gpu-image-packages.txt"
# Installed with --no-deps (their declared dependencies pull in packages inference never imports).
NO_DEPS = ["voxcpm==2.0.3", "nano-vllm-voxcpm==2.0.5"]
# Extras the GPU machine runs: the engine's, and the test suite's.
EXTRAS = ["gpu", "dev"]
# Required somewhere in the closure but never imported by what runs there, and too big for the 64 MiB a
# call carries: they are stood in for like image packages (so neither they nor what only they need are
# resolved). Each with the reason it can be left out.
NOT_CARRIED = {
    "imageio-ffmpeg": "its 68 MB wheel is only an ffmpeg binary: carried xz-compressed instead (.whl-ffmpeg)",
    "av": "PyAV's wheel is FFmpeg's libraries (40 MB): there the server encodes mp3, opus and aac with the "
    "carried ffmpeg binary instead (voxport.audio.pyav_available)",
    "ruff": "a linter, not run there",
    # The GPU tests stage runs only what needs a GPU: not the browser, fuzzing or property tests.
    "playwright": "the playground's browser test (tests/test_playground.py), not run there",
    "schemathesis": "the OpenAPI fuzz test (tests/test_schemathesis.py), not run there",
    "hypothesis": "property tests behind schemathesis, not run there",
    # voxcpm's text normaliser (normalize: true), imported on first use; without it the text is spoken as
    # written (voxport.engine.compat.normalize_text), which the GPU stage's one normalize test accepts.
    "wetext": "the text normaliser's grammars (5 MB, and kaldifst's 1.5 MB behind it), not needed there",
    "scikit-learn": "librosa imports it lazily, for features (segmentation, decomposition) not used",
    # uvicorn[standard]'s optional speed-ups: without them uvicorn runs on asyncio's loop and h11.
    "uvloop": "uvicorn's optional event loop; asyncio's is used instead",
    "httptools": "uvicorn's optional HTTP parser; h11 is used instead",
    "watchfiles": "uvicorn's --reload, not used",
    "websockets": "uvicorn's WebSocket support; voxport has no WebSocket route",
}
# Stand-in version for those: above any lower bound in the closure (none has an upper bound).
_NOT_CARRIED_VERSION = "999"
# pip itself, and the tools a fresh venv has anyway, are not something to stub.
_VENV_OWN = {"pip", "setuptools", "wheel"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_packages(path: Path = IMAGE_PACKAGES) -> dict[str, str]:
    """name -> version, from a `pip list --format=freeze` listing (comments and blanks skipped)."""
    packages = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, version = line.partition("==")
        packages[canonical(name)] = version.strip()
    return packages


def requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in EXTRAS:
        lines += project["optional-dependencies"][extra]
    return list(dict.fromkeys(lines))


def python312() -> str | None:
    """An interpreter of the GPU image's Python version, to resolve environment markers as it will."""
    candidates = [os.environ.get("GPU_WHEELS_PYTHON", ""), shutil.which("python3.12") or ""]
    candidates += sorted(str(p) for p in Path.home().glob(".pyenv/versions/3.12*/bin/python3.12"))
    for candidate in filter(None, candidates):
        # A pyenv shim is on PATH even when it cannot run that version: try each one.
        probe = [candidate, "-c", "import sys; sys.exit(sys.version_info[:2] != (3, 12))"]
        if subprocess.run(probe, capture_output=True).returncode == 0:
            return candidate
    return None


def image_venv(directory: Path, python: str) -> Path:
    """A venv that looks like the GPU image to pip. Returns its python."""
    subprocess.run([python, "-m", "venv", "--clear", str(directory)], check=True)
    bin_python = directory / "bin" / "python"
    purelib = subprocess.run(
        [str(bin_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    stubs = {**image_packages(), **dict.fromkeys(NOT_CARRIED, _NOT_CARRIED_VERSION)}
    for name, version in stubs.items():
        if name in _VENV_OWN:
            continue
        info = Path(purelib) / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "INSTALLER").write_text("gpu-image-stub\n")
        (info / "RECORD").write_text("")
    return bin_python


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("requirements", "image-venv"):
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] == "requirements":
        Path(argv[1]).write_text("\n".join(requirements()) + "\n")
        return 0
    python = python312()
    if python is None:
        print("gpu_wheels: no python3.12 here (the GPU image's version)", file=sys.stderr)
        return 2
    print(image_venv(Path(argv[1]), python))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
