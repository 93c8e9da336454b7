"""The Dockerfile and what runs it agree: the build context keeps out what it must, the image installs what
scripts/dev installs, and the Kubernetes manifests run it under its name, its user and its volumes.
scripts/check-image builds the image and serves a request from it (README.md: too slow for CI)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _arg(name: str) -> str:
    found = re.search(rf"^ARG {name}=(\S*)$", DOCKERFILE, re.M)
    assert found, name
    return found.group(1).strip('"')


def _included(path: str) -> bool:
    """Whether .dockerignore lets `path` into the build context: its last matching pattern wins (this file
    uses a deny-all `*`, then `!name` and `**/name`)."""
    included = True
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if pattern and not pattern.startswith("#"):
            name = pattern.removeprefix("!").rstrip("/")
            anywhere = name.startswith("**/") and any(
                re.fullmatch(name[3:].replace(".", r"\.").replace("*", ".*"), part)
                for part in path.split("/")
            )
            if name == "*" or path == name or path.startswith(name + "/") or anywhere:
                included = pattern.startswith("!")
    return included


def test_the_build_context_holds_the_package_and_nothing_heavy() -> None:
    for needed in ("pyproject.toml", "README.md", "src/voxport/cli.py", "src/voxport/voices.json"):
        assert _included(needed), needed
    heavy = (".venv/bin/python", "models/tiny/model.safetensors", ".git/HEAD", "data/cache/x", "tests/x.py",
             ".image-cache/bookworm.tar", "src/voxport/__pycache__/cli.cpython-311.pyc")  # fmt: skip
    for kept_out in heavy:
        assert not _included(kept_out), kept_out


def test_dependencies_install_before_the_code_is_copied() -> None:
    install = DOCKERFILE.index("pip install --no-cache-dir -r /tmp/voxport/requirements.txt")
    assert DOCKERFILE.index("COPY pyproject.toml /tmp/voxport/pyproject.toml") < install
    assert install < DOCKERFILE.index("COPY src ")  # a code change reuses the dependency layer


def test_the_image_installs_what_scripts_dev_installs() -> None:
    dev = (ROOT / "scripts" / "dev").read_text()
    assert f"voxcpm_version={_arg('VOXCPM_VERSION')}\n" in dev
    assert f"nanovllm_version={_arg('NANOVLLM_VERSION')}\n" in dev
    assert (
        f"torch_version={_arg('TORCH_SPEC').removeprefix('torch==')}\n"
        in (ROOT / "scripts/check-image").read_text()
    )


def test_a_slim_python_base_with_a_non_root_user_and_the_entrypoint() -> None:
    assert re.fullmatch(r"python:3\.1[0-2]-slim(-\w+)?", _arg("BASE_IMAGE"))  # CUDA comes with torch's wheels
    assert re.search(r"^USER voxport$", DOCKERFILE, re.M)
    assert re.search(r"^ENTRYPOINT \[\"voxport\", \"serve\"\]$", DOCKERFILE, re.M)
    assert re.search(r"^HEALTHCHECK .*\n.*/health", DOCKERFILE, re.M)


def test_kubernetes_runs_this_image_with_its_user_and_volumes() -> None:
    k8s = ROOT / "deploy" / "kubernetes"
    deployment = yaml.safe_load((k8s / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # One name: the Dockerfile's tag, the Deployment's image, the kustomization's entry that rewrites it.
    assert "docker build -t voxport ." in DOCKERFILE
    assert container["image"] == "voxport"
    assert [i["name"] for i in yaml.safe_load((k8s / "kustomization.yaml").read_text())["images"]] == [
        "voxport"
    ]
    uid = re.search(r"useradd .*--uid (\d+) voxport", DOCKERFILE).group(1)
    assert pod["securityContext"]["runAsUser"] == int(uid)
    volumes = json.loads(re.search(r"^VOLUME (\[.*\])$", DOCKERFILE, re.M).group(1))
    assert (
        sorted(m["mountPath"] for m in container["volumeMounts"]) == sorted(volumes) == ["/data", "/models"]
    )
    config = " ".join((ROOT / "docs" / "configuration.md").read_text().split())
    assert "`/models` (hub cache, `HF_HOME`)" in config and "`/data` (`VOXPORT_DATA_DIR`)" in config
    assert "HF_HOME=/models" in DOCKERFILE and "VOXPORT_DATA_DIR=/data" in DOCKERFILE
