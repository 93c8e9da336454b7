"""The speech socket's service side, free of any transport: `LiveService` (one per HTTP worker process:
sockets per key, metrics) and `LiveSession` (one per socket: its contexts and its outgoing events).

A session routes each client message to its context, opening one on its first message (the options
checked as POST /v1/audio/speech checks them) and capping how many are open; a closed or cancelled
context gives its place back at once. Events from every context go out through one bounded outbox, in
the order they were made: a slow reader slows the contexts down instead of growing memory. A context
that fails reports one error event and ends; the socket and its other contexts go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Callable

from prometheus_client import Counter, Gauge
from pydantic import BaseModel

from voxport.agents.context import ContextSetup, LiveContext
from voxport.agents.encoder import check_format
from voxport.config import Settings
from voxport.errors import VoxportError, invalid
from voxport.protocol import SpeechCreateParams
from voxport.protocol.live import ContextCancelledEvent, SpeechContextMessage
from voxport.speech import SpeechService
from voxport.voices import design_prefix

log = logging.getLogger("voxport.agents")
_OUTBOX = 256  # events waiting for the socket before contexts wait for it

# Turns a failure into the context's error event (the API layer knows how errors are rendered).
Report = Callable[[str | None, BaseException], BaseModel]


class LiveService:
    def __init__(self, settings: Settings, speech: SpeechService):
        self.settings = settings
        self.speech = speech
        self._sockets: dict[str, int] = {}  # per API key (a hash of it), in this process
        registry = speech.metrics.registry
        # With workers: summed over the live ones.
        self.sockets = Gauge("voxport_ws_sockets", "Speech sockets open.", registry=registry,
                             multiprocess_mode="livesum")  # fmt: skip
        self.contexts = Gauge("voxport_ws_contexts", "Speech socket contexts open.", registry=registry,
                              multiprocess_mode="livesum")  # fmt: skip
        self.ended = Counter("voxport_ws_contexts_ended", "Speech socket contexts by how they ended.",
                             ["outcome"], registry=registry)  # fmt: skip

    @contextlib.contextmanager
    def socket(self, key: str | None):
        """Hold one of the key's socket places for the socket's life; refused (busy) when all are held."""
        scope = hashlib.sha256((key or "").encode()).hexdigest()[:16]
        if self._sockets.get(scope, 0) >= self.settings.ws_max_sockets_per_key:
            raise VoxportError("busy", f"This API key has {self.settings.ws_max_sockets_per_key} speech "
                               "sockets open already.", code="too_many_sockets", retry_after=1)  # fmt: skip
        self._sockets[scope] = self._sockets.get(scope, 0) + 1
        self.sockets.inc()
        try:
            yield
        finally:
            self._sockets[scope] -= 1
            if not self._sockets[scope]:
                del self._sockets[scope]
            self.sockets.dec()


class LiveSession:
    def __init__(self, service: LiveService, socket_id: str, report: Report):
        self.service = service
        self.speech = service.speech
        self.settings = service.settings
        self.socket_id = socket_id
        self.report = report
        self.contexts: dict[str, LiveContext] = {}
        self.outbox: asyncio.Queue[BaseModel] = asyncio.Queue(_OUTBOX)
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def busy(self) -> bool:
        return any(context.busy for context in self.contexts.values())

    def is_open(self, context_id: str) -> bool:
        return context_id in self.contexts

    async def events(self) -> AsyncIterator[BaseModel]:
        while True:
            yield await self.outbox.get()

    async def emit(self, event: BaseModel) -> None:
        await self.outbox.put(event)

    async def fail(self, context_id: str | None, exc: BaseException) -> None:
        await self.emit(self.report(context_id, exc))

    # -- messages ---------------------------------------------------------------------------------

    async def handle(self, message: SpeechContextMessage, params: SpeechCreateParams | None) -> None:
        """One validated message; `params` are a new context's options (None for an open context)."""
        if message.keep_alive and message.context_id is None:
            return
        context_id = message.context_id
        assert context_id is not None
        context = self.contexts.get(context_id)
        if message.cancel:
            if context is not None:
                self._spawn(self._cancel(context))
            else:  # nothing to stop (never opened, or already ended): said so, and nothing else happens
                await self.emit(ContextCancelledEvent(context_id=context_id))
            return
        if context is None:
            if message.text is None and not (message.flush or message.close):
                return
            context = await self._open(context_id, message, params)
        elif context.closing:
            raise invalid(f"Context '{context_id}' is closing: it takes no more messages but 'cancel'.",
                          "context_id", "context_closed")  # fmt: skip
        if message.text:
            context.add(message.text, message.max_buffer_delay_ms)
        if message.flush:
            context.flush(message.flush_id)
        if message.close:
            self.service.contexts.dec()  # its place is free; it finishes speaking what it has
            context.close()

    async def _open(self, context_id: str, message: SpeechContextMessage,
                    params: SpeechCreateParams | None) -> LiveContext:  # fmt: skip
        cap = self.settings.ws_max_contexts
        if sum(not c.closing for c in self.contexts.values()) >= cap:
            raise invalid(f"This socket has {cap} contexts open; close or cancel one first.", "context_id",
                          "too_many_contexts")  # fmt: skip
        assert params is not None
        check_format(params.response_format)
        preparer = self.speech.preparer
        ssml = params.input_format == "ssml"  # the context's text, not the placeholder `input`, is SSML
        plan = await preparer.plan(params.model_copy(update={"input_format": "text"}), stream=True)
        prompt = (await preparer.complete(plan)).segments[0].voice  # the voice's prompt, resolved once
        delay_ms = message.max_buffer_delay_ms
        delay_s = (delay_ms if delay_ms is not None else self.settings.ws_buffer_delay_ms) / 1000
        named = await self.speech.voices.dictionaries.resolve(plan.params.pronunciation_dictionaries)
        setup = ContextSetup(plan, prompt, design_prefix(None, params.instructions), delay_s, named, ssml)
        if context_id in self.contexts:  # opened meanwhile by a message that did not wait for a voice
            raise invalid(f"Context '{context_id}' is open already.", "context_id", "context_exists")
        context = LiveContext(context_id, f"{self.socket_id}:{context_id}", setup, self.speech, self.emit,
                              self.settings.ws_clause_chars, self.settings.ws_max_context_chars)  # fmt: skip
        self.contexts[context_id] = context
        self.speech.tickets.open(context.job)
        self.service.contexts.inc()
        context.task.add_done_callback(lambda task: self._ended(context, task))
        return context

    def _ended(self, context: LiveContext, task: asyncio.Task[None]) -> None:
        """A context's task ended: done, cancelled or failed. Its place is given back."""
        ours = self.contexts.get(context.id) is context  # not cancelled by the client or a disconnect
        if ours:
            del self.contexts[context.id]
            if not context.closing:
                self.service.contexts.dec()
        self.speech.tickets.close(context.job)
        exc = None if task.cancelled() else task.exception()  # retrieved either way: no "never retrieved"
        if task.cancelled() or context.job.cancel.is_set():
            self.service.ended.labels("cancelled").inc()
            if ours:  # cancelled by request id (POST /v1/audio/speech/cancel): the client is told too
                self._spawn(self.emit(ContextCancelledEvent(context_id=context.id)))
            return
        self.service.ended.labels("error" if exc is not None else "done").inc()
        if exc is not None:
            if not isinstance(exc, VoxportError) or not exc.client_fault:
                log.warning("speech socket %s context failed: %r", self.socket_id, exc)
            self._spawn(self.fail(context.id, exc))

    async def _cancel(self, context: LiveContext) -> None:
        if self.contexts.get(context.id) is context:  # its place is free at once
            del self.contexts[context.id]
            if not context.closing:
                self.service.contexts.dec()
        await context.cancel()
        await self.emit(ContextCancelledEvent(context_id=context.id))

    def _spawn(self, work) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """The socket is gone: every context is cancelled (their engine work stops within one step)."""
        contexts = list(self.contexts.values())
        for context in contexts:
            if not context.closing:
                self.service.contexts.dec()
        self.contexts.clear()
        await asyncio.gather(*(context.cancel() for context in contexts), return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
