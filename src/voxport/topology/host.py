"""The engine host: the one process that runs the engine. It admits generations for every worker (one
global `Admission`), encodes voice prompts once per key, runs generations, and sends each worker one Step
message per engine step with the new samples of all that worker's streams. It never waits on a socket
(no send high-water mark): a slow worker only makes its own queue longer; the worker merges what piled up.

It also says which worker produces each cache key (single flight across workers: voxport.topology.flight).

A worker that stops pinging for LOST_S, or that the supervisor reports Gone, loses its streams (cancelled:
the engine frees their places within one step), its slots, its voice references and the keys it leads.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from voxport.config import Settings
from voxport.engine.base import Engine, EngineUnavailable, GenerationStats, SynthesisRequest, VoicePrompt
from voxport.errors import VoxportError
from voxport.speech.admission import Admission, Slot
from voxport.topology import wire
from voxport.topology.flight import Leads
from voxport.topology.loopsock import LoopSocket

log = logging.getLogger("voxport.topology")


class EngineDied(RuntimeError):
    """The engine stopped being ready after it started."""


@dataclass
class _Worker:
    seen: float
    slots: dict[int, Slot] = field(default_factory=dict)
    waiting: dict[int, asyncio.Task] = field(default_factory=dict)  # Acquire not yet granted
    streams: dict[int, asyncio.Task] = field(default_factory=dict)
    voices: set[str] = field(default_factory=set)


@dataclass
class _Stream:
    id: int
    stats: GenerationStats
    chunks: list[np.ndarray] = field(default_factory=list)
    end: bool = False
    error: wire.Failed | None = None


class EngineHost:
    def __init__(self, settings: Settings, engine: Engine, address: str):
        self.engine = engine
        self.address = address
        max_concurrent, max_queue = settings.admission(engine.capacity)
        self.admission = Admission(max_concurrent, max_queue, engine.capacity)
        self.epoch = secrets.token_hex(6)
        self.workers: dict[bytes, _Worker] = {}
        self.prompts: dict[str, asyncio.Future[VoicePrompt]] = {}
        self.outbox: dict[bytes, dict[int, _Stream]] = {}
        self._flushing = False
        self._tasks: set[asyncio.Task] = set()
        self._sought: dict[int, asyncio.Future[bool]] = {}  # Seek sent to a worker -> its answer
        self._seeks = itertools.count(1)
        self.leads = Leads(self._send)  # single flight across workers (voxport.topology.flight)
        self.sock: LoopSocket | None = None

    # -- the loop ----------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        sock = zmq.Context.instance().socket(zmq.ROUTER)
        sock.setsockopt(zmq.SNDHWM, 0)  # never drop, never block: the workers drain at once
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(self.address)
        self.sock = LoopSocket(sock, self._receive)
        self.sock.start()
        sweeper = self._spawn(self._sweep())
        starting = asyncio.ensure_future(self.engine.start())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if starting.done():
                starting.result()  # a failed start ends the host (the supervisor stops the server)
                info = self.engine.info
                log.info("engine host ready: engine %s, capacity %d", info.name, self.engine.capacity)
            while not stop.is_set() and self.engine.ready:
                await asyncio.wait({stopping}, timeout=1.0)
            if not stop.is_set():  # the engine died under the host: a new host (a new engine) takes over
                log.error("the engine stopped: the engine host exits, to be restarted")
                raise EngineDied
        finally:
            for task in (starting, stopping, sweeper):
                task.cancel()
            for worker in list(self.workers):
                self._drop(worker)
            await self.engine.close()
            self.sock.close()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(wire.PING_S)
            now = time.monotonic()
            for identity, worker in list(self.workers.items()):
                if now - worker.seen > wire.LOST_S and not self.sock.unread():
                    log.warning("worker %s stopped pinging: its streams are cancelled", identity.decode())
                    self._drop(identity)

    def _receive(self, parts: list[memoryview]) -> None:
        identity, header = bytes(parts[0]), parts[1]
        try:
            message = wire.unpack_to_host(header)
        except Exception:  # noqa: BLE001 - a malformed message is dropped, never fatal
            log.warning("dropped a malformed message from %r", identity)
            return
        self._handle(identity, message)

    def _spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _send(self, identity: bytes, message: Any, *frames: Any) -> None:
        # SNDHWM 0: the send completes at once (a peer gone is not an error: ROUTER drops it).
        self.sock.send([identity, wire.pack(message), *frames], copy=not frames)

    # -- messages ---------------------------------------------------------------------------------

    def _handle(self, identity: bytes, message: wire.ToHost) -> None:
        if isinstance(message, wire.Gone):
            self._drop(message.worker.encode())
            return
        worker = self.workers.get(identity)
        if worker is None:
            worker = self.workers[identity] = _Worker(seen=time.monotonic())
        worker.seen = time.monotonic()
        epoch = getattr(message, "epoch", self.epoch)
        if epoch != self.epoch:  # queued for an engine host that has since been replaced
            self._send(identity, wire.Failed(message.id, "unavailable", "the engine host restarted"))
            return
        if isinstance(message, wire.Ping):
            self._send(identity, self._pong())
        elif isinstance(message, wire.Acquire):
            worker.waiting[message.id] = self._spawn(self._acquire(identity, worker, message.id))
        elif isinstance(message, wire.Release):
            if (waiting := worker.waiting.pop(message.id, None)) is not None:
                waiting.cancel()
            if (slot := worker.slots.pop(message.id, None)) is not None:
                slot.release()
        elif isinstance(message, wire.Generate):
            worker.streams[message.id] = self._spawn(self._generate(identity, worker, message))
        elif isinstance(message, wire.Cancel):
            if (task := worker.streams.pop(message.id, None)) is not None:
                task.cancel()
        elif isinstance(message, wire.Encode):
            self._spawn(self._encode(identity, worker, message))
        elif isinstance(message, wire.Forget):
            worker.voices.discard(message.key)
            self._spawn(self._forget(message.key))
        elif isinstance(message, wire.Seek):
            self._spawn(self._seek(identity, message))
        elif isinstance(message, wire.Sought):  # a worker's answer to _seek
            if (asked := self._sought.get(message.id)) is not None and not asked.done():
                asked.set_result(message.found)
        elif isinstance(message, (wire.Claim, wire.Done)):
            self.leads.handle(identity, message)

    def _pong(self) -> wire.Pong:
        ready = self.engine.ready
        return wire.Pong(self.epoch, ready, self.engine.capacity, self.engine.info if ready else None,
                         self.admission.generating, self.admission.queued)  # fmt: skip

    def _drop(self, identity: bytes) -> None:
        """A worker is gone: everything it held is freed now."""
        worker = self.workers.pop(identity, None)
        self.outbox.pop(identity, None)
        self.leads.drop(identity)
        if worker is None:
            return
        for task in [*worker.waiting.values(), *worker.streams.values()]:
            task.cancel()
        for slot in worker.slots.values():
            slot.release()
        for key in worker.voices:
            self._spawn(self._forget(key))
        log.info("worker %s gone: %d streams cancelled, %d slots freed", identity.decode(),
                 len(worker.streams), len(worker.slots))  # fmt: skip

    async def _seek(self, origin: bytes, message: wire.Seek) -> None:
        """Ask every other worker to cancel `request_id` (or the job); tell the asker whether one did."""
        asked: dict[int, asyncio.Future[bool]] = {}
        for identity in [w for w in self.workers if w != origin]:
            token = next(self._seeks)
            asked[token] = self._sought[token] = asyncio.get_running_loop().create_future()
            self._send(identity, wire.Seek(token, message.request_id, message.viewer, message.job))
        done = (await asyncio.wait(asked.values(), timeout=2.0))[0] if asked else set()
        for token in asked:
            self._sought.pop(token, None)
        self._send(origin, wire.Sought(message.id, any(f.result() for f in done)))

    async def _acquire(self, identity: bytes, worker: _Worker, id_: int) -> None:
        try:
            slot = await self.admission.acquire()
        except VoxportError as exc:
            worker.waiting.pop(id_, None)
            self._send(identity, wire.Refused(id_, exc.message))
            return
        if worker.waiting.pop(id_, None) is None or self.workers.get(identity) is not worker:
            slot.release()  # abandoned while it waited
            return
        worker.slots[id_] = slot
        self._send(identity, wire.Granted(id_))

    async def _prompt(self, key: str, wav_path: str, transcript: str | None) -> VoicePrompt:
        """One encoding per key, shared by every worker that asks (at once or later)."""
        future = self.prompts.get(key)
        if future is None:
            future = self.prompts[key] = asyncio.ensure_future(
                self.engine.encode_voice(wav_path, transcript, key)
            )
        try:
            return await asyncio.shield(future)
        except Exception:
            if self.prompts.get(key) is future:
                del self.prompts[key]
            raise

    async def _encode(self, identity: bytes, worker: _Worker, message: wire.Encode) -> None:
        try:
            prompt = await self._prompt(message.key, message.wav_path, message.transcript)
        except Exception as exc:  # noqa: BLE001 - reported to the worker
            self._send(identity, wire.failure(message.id, exc))
            return
        if self.workers.get(identity) is worker:
            worker.voices.add(message.key)
        self._send(identity, wire.Encoded(message.id, prompt.mode, prompt.positions))

    async def _forget(self, key: str) -> None:
        if any(key in worker.voices for worker in self.workers.values()):
            return
        future = self.prompts.pop(key, None)
        if future is not None and future.done() and not future.exception():
            await self.engine.release_voice(future.result())

    async def _generate(self, identity: bytes, worker: _Worker, message: wire.Generate) -> None:
        stream = _Stream(message.id, GenerationStats())
        try:
            voice = None
            if message.voice is not None:
                prompt = self.prompts.get(message.voice)
                if prompt is None or not prompt.done() or prompt.exception():
                    raise EngineUnavailable("the voice is not encoded on this engine host")
                voice = prompt.result()
            request = SynthesisRequest(message.text, voice, message.cfg_value, message.inference_timesteps,
                                       message.max_length, message.seed, message.normalize)  # fmt: skip
            async for chunk in self.engine.generate(request, stream.stats):
                self._queue(identity, stream, chunk)
            stream.end = True
        except asyncio.CancelledError:
            return  # cancelled by its worker, or the worker is gone: nobody waits for the rest
        except Exception as exc:  # noqa: BLE001 - reported to the worker
            stream.end, stream.error = True, wire.failure(message.id, exc)
        finally:
            if worker.streams.get(message.id) is asyncio.current_task():
                del worker.streams[message.id]
        self._queue(identity, stream, None)

    # -- one message per step per worker -----------------------------------------------------------

    def _queue(self, identity: bytes, stream: _Stream, chunk: np.ndarray | None) -> None:
        if chunk is not None:
            stream.chunks.append(chunk)
        self.outbox.setdefault(identity, {})[stream.id] = stream
        if not self._flushing:
            # After every task that this engine step woke has queued its chunk.
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flushing = False
        outbox, self.outbox = self.outbox, {}
        for identity, streams in outbox.items():
            outs, chunks = [], []
            for stream in streams.values():
                samples = sum(len(c) for c in stream.chunks)
                outs.append(wire.Out(stream.id, samples, stream.stats.input_tokens, stream.stats.steps,
                                     stream.end, stream.error))  # fmt: skip
                chunks.extend(stream.chunks)
                stream.chunks = []
            self._send(identity, wire.Step(outs), wire.samples_frame(chunks))
