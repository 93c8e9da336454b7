"""Compatibility shims for importing the `voxcpm` package on CPU-only torch installs."""

from __future__ import annotations

import contextlib
import functools
import importlib.machinery
import io
import logging
import sys
import types
import warnings
from collections.abc import Iterator

log = logging.getLogger("voxport.engine")


def install_torchaudio_placeholder() -> bool:
    """Make `import torchaudio` succeed where the real one cannot load.

    `voxcpm` imports torchaudio at top level (for its V1 model), but VoxCPM2 never calls it: it
    loads audio with librosa. The registry's torchaudio wheels are CUDA builds that fail to load
    beside a CPU-only torch, and there is no CPU build, so a placeholder module is registered
    instead. It raises on any use, so a code path that really needs torchaudio fails loudly.
    Returns True when the placeholder was installed.
    """
    try:
        import torchaudio  # noqa: F401

        return bool(getattr(sys.modules["torchaudio"], "__voxport_placeholder__", False))
    except Exception:
        pass
    for name in [n for n in sys.modules if n == "torchaudio" or n.startswith("torchaudio.")]:
        del sys.modules[name]

    def unavailable(*_args, **_kwargs):
        raise RuntimeError("torchaudio is not usable in this environment; VoxCPM2 inference does not need it")

    def placeholder(name: str) -> types.ModuleType:
        module = types.ModuleType(name)
        # transformers calls importlib.util.find_spec("torchaudio"): it needs a real spec.
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)

        def attribute(attr: str):
            if attr.startswith("__"):  # introspection (inspect, pickle) must see a plain module
                raise AttributeError(attr)
            return unavailable

        module.__getattr__ = attribute  # type: ignore[method-assign]
        return module

    root = placeholder("torchaudio")
    root.__voxport_placeholder__ = True  # type: ignore[attr-defined]
    functional = placeholder("torchaudio.functional")
    root.functional = functional  # type: ignore[attr-defined]
    sys.modules["torchaudio"] = root
    sys.modules["torchaudio.functional"] = functional
    return True


def silence_progress_bars() -> None:
    """voxcpm wraps every generation loop in a tqdm bar on stderr; a server has no use for it.

    TQDM_DISABLE only works if set before tqdm is imported, which other packages do first, so the
    name voxcpm's model module looks up is replaced with a pass-through.
    """
    import voxcpm.model.voxcpm2 as voxcpm2

    def passthrough(iterable=None, *_args, **_kwargs):
        return iterable

    voxcpm2.tqdm = passthrough  # type: ignore[attr-defined]


class _LogWriter(io.TextIOBase):
    """A text stream whose lines go to a logger (at DEBUG: `--log-level debug` shows them)."""

    def __init__(self, logger: logging.Logger) -> None:
        self._log, self._pending = logger, ""

    def write(self, text: str) -> int:
        lines = (self._pending + text).split("\n")
        self._pending = lines.pop()
        for line in lines:
            if line.strip():
                self._log.debug("%s", line)
        return len(text)


@contextlib.contextmanager
def quiet_third_party(logger: logging.Logger) -> Iterator[None]:
    """While a model loads: what voxcpm prints on stdout or stderr (`Loading model from safetensors: ...`,
    `Running on device`) goes to `logger` at DEBUG instead of the server's output, and torch's FutureWarning
    that voxcpm's AudioVAE still calls `weight_norm` (harmless, about torch's future API) is not shown. The
    start-up output is then voxport's own lines. Process-wide while it lasts: use it around loading only."""
    writer = _LogWriter(logger)  # voxcpm prints to stderr; the log handler keeps the real one
    with warnings.catch_warnings(), contextlib.redirect_stdout(writer), contextlib.redirect_stderr(writer):
        warnings.filterwarnings("ignore", message=r".*weight_norm.* is deprecated", category=FutureWarning)
        yield


@functools.lru_cache(maxsize=1)
def _text_normalizer():
    log.info("building voxcpm's text normaliser for the first `normalize: true` request (once per process)")
    install_torchaudio_placeholder()
    from voxcpm.utils.text_normalize import TextNormalizer

    return TextNormalizer()


def normalize_text(text: str) -> str:
    """voxcpm's text normalisation (numbers, dates, currency spelled out), built on first use.

    Slow to build and CPU-bound: call it off the event loop. The normaliser's grammars assert on some
    inputs (control characters, a lone diaeresis after a digit, ...): such text, or text it would turn
    into nothing, is spoken as written rather than failing the request.
    """
    try:
        normalized = _text_normalizer().normalize(text)
    except Exception as exc:  # noqa: BLE001 - any failure inside a third-party grammar is the input's
        log.debug("text normaliser failed (%s); the text is used as written", type(exc).__name__)
        return text
    return normalized if normalized.strip() else text
