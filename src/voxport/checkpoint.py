"""Finding the model checkpoint: a local directory as is, else a Hugging Face hub download."""

from __future__ import annotations

import re
from pathlib import Path

REQUIRED_FILES = ("config.json", "model.safetensors", "audiovae.pth")


class CheckpointUnavailable(RuntimeError):
    pass


def resolve_checkpoint(model: str) -> str:
    """Return a local directory holding the checkpoint named by `model`.

    A directory is used as is. Anything else is taken as a hub id and fetched (or found in the
    local hub cache). Failures raise CheckpointUnavailable with a message a person can act on.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
        if missing:
            raise CheckpointUnavailable(f"{path} is not a VoxCPM2 checkpoint: missing {', '.join(missing)}.")
        return str(path.resolve())
    if path.exists() or _looks_local(model):
        raise CheckpointUnavailable(f"--model {model}: no such directory.")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id=model)
    except Exception as exc:
        raise CheckpointUnavailable(
            f"--model {model}: no such local directory, and could not fetch '{model}' from the Hugging Face "
            f"hub ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}).\n"
            "Point --model (or VOXPORT_MODEL) at a local checkpoint directory, for example one "
            "downloaded elsewhere with `hf download openbmb/VoxCPM2 --local-dir DIR`, "
            "or build a random-weight test checkpoint with `voxport dummy-model DIR` "
            "(`scripts/dev dummy-model DIR` in a clone)."
        ) from None


def _looks_local(model: str) -> bool:
    """A path rather than a hub id ("org/name"): it starts like one, has more than one separator, is not a
    valid id, or its first part is a directory here (`models/tiny` beside a `models` folder)."""
    if model.startswith((".", "/", "~")) or "\\" in model or model.count("/") > 1:
        return True
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", model):
        return True
    return "/" in model and Path(model.split("/", 1)[0]).is_dir()
