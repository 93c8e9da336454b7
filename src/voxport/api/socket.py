"""The speech WebSocket's transport (GET /v1/audio/speech/ws; the service is voxport/agents).

The handshake is authenticated like any request: `Authorization: Bearer <key>`, or, for browsers (which
cannot set headers on a WebSocket), the key offered as a subprotocol `bearer.<key>` next to `voxport.v1`,
so that it never appears in a URL that proxies and access logs keep. Only `voxport.v1` is echoed back.
A refused handshake is answered with an HTTP status and OpenAI's envelope (401, or 429 past the sockets
per key). Then two loops: one reads and validates client frames and hands them to the session, with an
inactivity timeout; one writes the session's events. Every bad message gets an error event; only
inactivity (4408) or the client ends the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect

from voxport.agents.session import LiveService, LiveSession
from voxport.api.errors import as_error, envelope, error_response, validation_error
from voxport.errors import RequestCancelled, VoxportError, invalid
from voxport.protocol import SpeechCreateParams
from voxport.protocol.live import (
    NOT_ON_SOCKET,
    ContextAudioEvent,
    ContextError,
    ContextErrorEvent,
    SpeechContextMessage,
)

log = logging.getLogger("voxport.access")
SUBPROTOCOL = "voxport.v1"
KEY_PROTOCOL = "bearer."
CLOSE_INACTIVE = 4408  # as HTTP's 408: nothing arrived for the inactivity timeout


def _credentials(websocket: WebSocket) -> tuple[str | None, str | None]:
    """(the API key, from the header or a `bearer.` subprotocol; the subprotocol to echo)."""
    offered = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    key = next((p[len(KEY_PROTOCOL) :] for p in offered if p.startswith(KEY_PROTOCOL)), None)
    header = websocket.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        key = token.strip()
    return key, SUBPROTOCOL if SUBPROTOCOL in offered else None


def report(context_id: str | None, exc: BaseException) -> ContextErrorEvent:
    error = as_error(exc)
    if error is None:
        log.error("speech socket context %s failed", context_id, exc_info=exc)
        error = VoxportError("internal", "Internal error in this context.", code="internal_error")
    return ContextErrorEvent(context_id=context_id, error=ContextError(**envelope(error)["error"]))


async def serve_speech_socket(websocket: WebSocket) -> None:
    state = websocket.app.state
    live: LiveService = state.live
    key, subprotocol = _credentials(websocket)
    with contextlib.ExitStack() as stack:
        try:
            state.policy.check_token(key)
            stack.enter_context(live.socket(key))
        except VoxportError as error:
            await websocket.send_denial_response(error_response(error))
            return
        await websocket.accept(subprotocol=subprotocol)
        await _serve(websocket, LiveSession(live, "ws_" + os.urandom(8).hex(), report))


async def _serve(websocket: WebSocket, session: LiveSession) -> None:
    started = time.perf_counter()
    sender = asyncio.create_task(_send(websocket, session))
    code = 1000
    try:
        code = await _receive(websocket, session)
    finally:
        await session.close()
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender
        log.info("socket_id=%s route=/v1/audio/speech/ws close=%s ms=%.1f", session.socket_id, code,
                 (time.perf_counter() - started) * 1000)  # fmt: skip


async def _send(websocket: WebSocket, session: LiveSession) -> None:
    async for event in session.events():
        # A context's first audio event names its sample rate; the others leave the field out.
        await websocket.send_text(event.model_dump_json(exclude_none=isinstance(event, ContextAudioEvent)))


async def _receive(websocket: WebSocket, session: LiveSession) -> int:
    """Read frames until the client leaves (its close code) or stays silent too long (4408)."""
    timeout = session.settings.ws_idle_timeout_s
    while True:
        try:
            frame = await asyncio.wait_for(websocket.receive(), timeout)
        except asyncio.TimeoutError:
            if session.busy:  # speaking: the client is listening, not idle
                continue
            reason = f'no message for {timeout:g}s; send {{"keep_alive": true}} to keep the socket open'
            await websocket.close(code=CLOSE_INACTIVE, reason=reason)
            return CLOSE_INACTIVE
        except WebSocketDisconnect as gone:
            return gone.code
        if frame["type"] == "websocket.disconnect":
            return int(frame.get("code", 1000))
        await _frame(session, frame)


async def _frame(session: LiveSession, frame: dict[str, Any]) -> None:
    context_id: str | None = None
    try:
        data = _decode(frame, session.settings.ws_max_message_bytes)
        if isinstance(data.get("context_id"), str):
            context_id = data["context_id"]
        message = _validate(SpeechContextMessage, data)
        await session.handle(message, _options(session, message))
    except ValidationError as exc:
        await session.fail(context_id, validation_error(exc))
    except RequestCancelled:
        pass
    except Exception as exc:  # engine errors (as_error maps them), and bugs: scoped to the context
        await session.fail(context_id, exc)


def _decode(frame: dict[str, Any], max_bytes: int) -> dict[str, Any]:
    text = frame.get("text")
    if text is None:
        raise invalid("Send JSON text frames; binary frames are not accepted.", None, "invalid_message")
    if len(text.encode()) > max_bytes:
        raise invalid(f"A message may be at most {max_bytes} bytes.", None, "message_too_large")
    try:
        data = json.loads(text)
    except ValueError:
        raise invalid("The message is not valid JSON.", None, "invalid_json") from None
    if not isinstance(data, dict):
        raise invalid("A message is a JSON object.", None, "invalid_message")
    return data


def _validate(model: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


def _options(session: LiveSession, message: SpeechContextMessage) -> SpeechCreateParams | None:
    """A new context's options, validated as POST /v1/audio/speech validates them; none on later messages."""
    options = message.options
    if message.context_id is None or session.is_open(message.context_id):
        if options:
            name = next(iter(options))
            raise invalid(f"'{name}' can be set only on a context's first message.", name, "context_open")
        return None
    for name in options:
        if name in NOT_ON_SOCKET:
            raise invalid(f"'{name}' cannot be used on the speech socket.", name, "unknown_parameter")
    data = {"model": session.settings.served_model_id, **options, "input": "-"}
    return _validate(SpeechCreateParams, data)
