"""The wheel closure the GPU machine needs, resolved by pip over what its image already has.

Used by scripts/gpu-wheels (which adds the ffmpeg binary and measures), by CI (.ci/run runs the `wheels`
step on every change, from a fresh clone) and by tests/test_gpu_wheels.py (which proves the set installs
offline). The GPU image is stood in for by a fresh Python 3.12 virtual
environment holding a metadata-only `*.dist-info` for each package of scripts/gpu-image-packages.txt: pip's
resolver then counts those as installed and satisfied, resolves only the rest, and never fetches torch's
CUDA build to read its metadata. The stubs declare no dependencies, so whatever voxport needs is asked for
by voxport's own requirements (pyproject.toml), not inherited from an image package.

    python3 scripts/gpu_wheels.py requirements OUT.txt   voxport's [gpu] + [dev] requirements, one per line
    python3 scripts/gpu_wheels.py image-venv DIR         the stand-in environment
    python3 scripts/gpu_wheels.py wheels DIR             resolve, then download (or build) the set into DIR

`wheels`: pip's resolver, in the stand-in, works out what the requirements need beyond the image (binary
wheels preferred); each pin is then downloaded as a wheel for the GPU image's platforms, or, when the
registry has only a source distribution of it, built into a wheel here with `pip wheel`. A build that is
not pure Python (`*-none-any.whl`) cannot be carried (nothing can be compiled there, and a wheel built
here is not for the image's platform): the step fails, naming it, as it does when pip finds no
distribution at all. The interpreter is the GPU image's version (3.12); GPU_WHEELS_PYTHON names another
(the CPU-side check of scripts/gpu-session resolves for the Python its torch CPU build exists for).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
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
    "kubernetes-validate": "deploy/kubernetes/'s schema check (tests/test_kubernetes.py), not run there: its "
    "wheel is 22 MB of Kubernetes schemas, and jsonschema with rpds-py behind it",
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
    """An interpreter of the GPU image's Python version, to resolve environment markers as it will.

    GPU_WHEELS_PYTHON, when set, is used whatever its version (no fallback)."""
    if os.environ.get("GPU_WHEELS_PYTHON"):
        return os.environ["GPU_WHEELS_PYTHON"]
    candidates = [shutil.which("python3.12") or ""]
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


PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35)]
PLATFORMS += ["manylinux2014_x86_64", "manylinux1_x86_64", "any"]


# What one call to the GPU machine carries, at most, and the part the ffmpeg binary takes of it: measured
# (scripts/gpu-wheels' last line), imageio-ffmpeg's binary at xz -9. The wheels step checks the rest fits.
CALL_LIMIT = 64 << 20
FFMPEG_XZ_BYTES = 48_424_968


def repository_bytes() -> int:
    """The working tree as the device tool copies it: tracked and untracked files git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    )
    paths = map(ROOT.joinpath, listed.stdout.decode().split("\0"))
    return sum(p.stat().st_size for p in paths if p.is_file())


def check_size(out: Path) -> str:
    """The size line; NotCarried when the wheels, the repository and ffmpeg.xz would not fit one call."""
    mib = 1 << 20
    wheels, repo = sum(p.stat().st_size for p in out.iterdir()), repository_bytes()
    total = wheels + repo + FFMPEG_XZ_BYTES
    line = (f"{total / mib:.1f} MiB = wheels {wheels / mib:.1f} + ffmpeg.xz {FFMPEG_XZ_BYTES / mib:.1f}"
            f" (as measured) + repository {repo / mib:.1f} (limit {CALL_LIMIT / mib:.0f} MiB)")  # fmt: skip
    if total >= CALL_LIMIT:
        biggest = sorted(out.glob("*.whl"), key=lambda p: p.stat().st_size, reverse=True)[:3]
        names = ", ".join(f"{p.name} ({p.stat().st_size / mib:.1f} MiB)" for p in biggest)
        raise NotCarried(f"too big for one call: {line}; the biggest wheels: {names}")
    return line


class NotCarried(Exception):
    """A requirement the GPU machine cannot be given as a wheel."""


def _pip(python: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, "-m", "pip", *args, "--disable-pip-version-check"], capture_output=True, text=True
    )


def resolve(image_python: str, requirements_txt: Path, report: Path) -> list[tuple[str, str, bool]]:
    """(name, version, has a wheel) for each package the requirements need beyond the image."""
    done = _pip(
        image_python,
        "install",
        "-q",
        "--dry-run",
        "--prefer-binary",
        "--report",
        str(report),
        "-r",
        str(requirements_txt),
    )
    if done.returncode != 0:
        raise NotCarried(f"pip's resolver failed over the GPU image's packages:\n{done.stderr[-3000:]}")
    pins = []
    for item in json.loads(report.read_text())["install"]:
        url = item["download_info"]["url"].split("#", 1)[0]
        pins.append((item["metadata"]["name"], item["metadata"]["version"], url.endswith(".whl")))
    return pins


def python_version(python: str) -> str:
    probe = [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]
    return subprocess.run(probe, check=True, capture_output=True, text=True).stdout.strip()


def download(python: str, out: Path, pins: list[str]) -> None:
    """Binary wheels for the image's platforms (pip of `python` downloads, for its version)."""
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    done = _pip(
        python,
        "download",
        "-q",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        python_version(python),
        "--implementation",
        "cp",
        *platforms,
        "-d",
        str(out),
        *pins,
    )
    if done.returncode != 0:
        raise NotCarried(f"downloading the wheels failed:\n{done.stderr[-3000:]}")


def build(python: str, out: Path, pins: list[str], scratch: Path) -> list[str]:
    """Wheels built here from source distributions; each must be pure Python. Returns their file names."""
    built = scratch / "built"
    done = _pip(python, "wheel", "-q", "--no-deps", "--no-binary=:all:", "-w", str(built), *pins)
    if done.returncode != 0:
        raise NotCarried(f"building wheels from source failed for {' '.join(pins)}:\n{done.stderr[-3000:]}")
    return carry_built(built, out)


def carry_built(built: Path, out: Path) -> list[str]:
    """Copies the wheels built into `built` to `out`, if every one is pure Python. Returns their names."""
    impure = sorted(p.name for p in built.glob("*.whl") if not p.name.endswith("-none-any.whl"))
    if impure:
        raise NotCarried(
            f"only a source distribution, and it builds a platform wheel ({', '.join(impure)}): nothing can "
            "be compiled on the GPU machine; find a package that ships wheels, or stand it in (NOT_CARRIED)"
        )
    names = []
    for wheel in sorted(built.glob("*.whl")):
        shutil.copy2(wheel, out / wheel.name)
        names.append(wheel.name)
    return names


def wheels(out: Path) -> int:
    """The resolution step of scripts/gpu-wheels: `out` gets every wheel to carry and requirements.txt."""
    python = python312()
    if python is None:
        print("gpu_wheels: no python3.12 here (the GPU image's version)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        (scratch / "requirements.txt").write_text("\n".join(requirements()) + "\n")
        image_python = str(image_venv(scratch / "image", python))
        try:
            pins = resolve(image_python, scratch / "requirements.txt", scratch / "report.json")
            names = " ".join(f"{name}=={version}" for name, version, _ in pins)
            print(f"gpu-wheels: {len(pins)} packages beyond the GPU image: {names}")
            if out.exists():
                shutil.rmtree(out)
            out.mkdir(parents=True)
            # tests/test_gpu_wheels.py resolves it again, offline
            shutil.copy2(scratch / "requirements.txt", out / "requirements.txt")
            download(python, out, [f"{n}=={v}" for n, v, wheel in pins if wheel] + NO_DEPS)
            sdists = [f"{n}=={v}" for n, v, wheel in pins if not wheel]
            if sdists:
                built = build(image_python, out, sdists, scratch)
                print(f"gpu-wheels: built from source distributions (pure Python): {' '.join(built)}")
            print(f"gpu-wheels: with ffmpeg.xz, a call would carry {check_size(out)}")
        except NotCarried as exc:
            print(f"gpu-wheels: cannot be carried: {exc}", file=sys.stderr)
            return 1
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("requirements", "image-venv", "wheels"):
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] == "requirements":
        Path(argv[1]).write_text("\n".join(requirements()) + "\n")
        return 0
    if argv[0] == "wheels":
        return wheels(Path(argv[1]))
    python = python312()
    if python is None:
        print("gpu_wheels: no python3.12 here (the GPU image's version)", file=sys.stderr)
        return 2
    print(image_venv(Path(argv[1]), python))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
