"""The wire between workers and the engine host: msgpack headers (msgspec Structs, tagged) on a ZMQ
ROUTER (host) / DEALER (worker) pair, with audio as one raw float32 frame after the header.

Worker -> host: Ping, Acquire, Release, Generate, Cancel, Encode, Forget, Claim, Done; the supervisor sends
Gone. Host -> worker: Pong, Granted, Refused, Encoded, Failed, Claimed, and Step: one per engine step per
worker, listing every stream of that worker that has new samples (or ended), with the samples of all of
them concatenated in one frame in the listed order. Seek and Sought go both ways.

Zero copy: a frame handed to ZMQ with copy=False is a fresh array that nothing writes to again (ZMQ keeps
the reference until the bytes are out). Received frames are not copied (voxport.topology.loopsock): a
sample array a worker holds is a view on a message ZMQ has handed over and never reuses.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import numpy as np

from voxport.engine.base import EngineError, EngineInfo, EngineInputError, EngineUnavailable

_log = logging.getLogger("voxport.topology")

# -- worker -> host ---------------------------------------------------------------------------------


class Ping(msgspec.Struct, tag=True):
    """Sent every PING_S by each worker: the host learns it is alive, and answers with a Pong."""


class Acquire(msgspec.Struct, tag=True):
    id: int
    epoch: str


class Release(msgspec.Struct, tag=True):
    """A held slot released, or a wait for one abandoned."""

    id: int


class Generate(msgspec.Struct, tag=True):
    id: int
    epoch: str
    text: str
    voice: str | None  # an Encode'd key
    cfg_value: float
    inference_timesteps: int
    max_length: int
    seed: int | None
    normalize: bool


class Cancel(msgspec.Struct, tag=True):
    id: int


class Encode(msgspec.Struct, tag=True):
    id: int
    epoch: str
    wav_path: str
    transcript: str | None
    key: str


class Forget(msgspec.Struct, tag=True):
    key: str


class Seek(msgspec.Struct, tag=True):
    """Cancel the in-flight request `request_id` wherever it runs: a worker asks the host, the host asks
    every other worker (with its own id), each answers Sought; the host answers the asker."""

    id: int
    request_id: str
    viewer: str = ""  # the asker's tenant: another tenant's request is not found (voxport.tenants)
    job: bool = False  # a speech job's id: the store already says cancelled, its runner's work stops


class Sought(msgspec.Struct, tag=True):
    id: int
    found: bool


class Claim(msgspec.Struct, tag=True):
    """Single flight across workers (voxport.topology.flight): may this worker produce cache key `key`?
    Answered Claimed at once when nobody holds it, else when its holder is Done (or gone)."""

    id: int
    epoch: str
    key: str


class Done(msgspec.Struct, tag=True):
    """The holder of `key` finished (its result is in the cache, or it failed)."""

    key: str


class Gone(msgspec.Struct, tag=True):
    """From the supervisor: this worker died; free what it held."""

    worker: str


# -- host -> worker ---------------------------------------------------------------------------------


class Pong(msgspec.Struct, tag=True):
    epoch: str  # new at each engine host start: a worker that sees it change fails what it had in flight
    ready: bool
    capacity: int
    info: EngineInfo | None
    generating: int  # global admission figures
    queued: int


class Claimed(msgspec.Struct, tag=True):
    """`lead`: produce it (and send Done); otherwise the holder finished: look in the cache again."""

    id: int
    lead: bool


class Granted(msgspec.Struct, tag=True):
    id: int


class Refused(msgspec.Struct, tag=True):
    id: int
    message: str


class Encoded(msgspec.Struct, tag=True):
    id: int
    mode: str
    positions: int


class Failed(msgspec.Struct, tag=True):
    """A request (Acquire, Encode, Generate) that failed; `kind`: input | unavailable | engine."""

    id: int
    kind: str
    message: str
    param: str | None = None


class Out(msgspec.Struct, array_like=True):
    """One stream's part of a Step: `samples` new samples (in the frame), then maybe its end."""

    id: int
    samples: int
    input_tokens: int
    steps: int
    end: bool = False
    error: Failed | None = None


class Step(msgspec.Struct, tag=True):
    streams: list[Out]


ToHost = Ping | Acquire | Release | Generate | Cancel | Encode | Forget | Gone | Seek | Sought | Claim | Done
ToWorker = Pong | Granted | Refused | Encoded | Failed | Step | Seek | Sought | Claimed

PING_S = 0.25  # how often a worker pings
# Silence after which either side counts the other as gone, while nothing from it waits unread (an
# overloaded loop reads late; that is not silence). Only the fallback for a hung process: a dead engine
# host is seen at once (the worker's socket reports the disconnect), a dead worker from the supervisor.
LOST_S = 10.0

_encoder = msgspec.msgpack.Encoder()
_to_host = msgspec.msgpack.Decoder(ToHost)
_to_worker = msgspec.msgpack.Decoder(ToWorker)


def failure(id_: int, exc: BaseException) -> Failed:
    if isinstance(exc, EngineInputError):
        return Failed(id_, "input", str(exc), exc.param)
    if isinstance(exc, EngineUnavailable):
        return Failed(id_, "unavailable", str(exc) or "the engine is unavailable")
    _log.error("engine request failed: %s", type(exc).__name__, exc_info=exc)
    return Failed(id_, "engine", "the engine failed while serving the request")


def raised(failed: Failed) -> Exception:
    """The engine exception a Failed stands for."""
    if failed.kind == "input":
        return EngineInputError(failed.message, failed.param)
    if failed.kind == "unavailable":
        return EngineUnavailable(failed.message)
    return EngineError(failed.message)


def pack(message: Any) -> bytes:
    return _encoder.encode(message)


def unpack_to_host(data: bytes) -> ToHost:
    return _to_host.decode(data)


def unpack_to_worker(data: bytes) -> ToWorker:
    return _to_worker.decode(data)


def samples_frame(chunks: list[np.ndarray]) -> np.ndarray:
    """One fresh float32 array (never written again: it may be sent zero-copy)."""
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate([np.asarray(c, dtype=np.float32).ravel() for c in chunks])


def split_samples(frame: bytes | memoryview, outs: list[Out]) -> list[np.ndarray]:
    """The per-stream sample arrays of a Step, views on the received (owned, immutable) frame."""
    data = np.frombuffer(frame, dtype=np.float32)
    parts, at = [], 0
    for out in outs:
        parts.append(data[at : at + out.samples])
        at += out.samples
    return parts
