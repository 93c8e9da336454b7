"""A Pipecat TTS service on voxport's speech WebSocket (`pip install "voxport[pipecat]"`, docs/agents.md).

One voxport context per Pipecat turn: the turn's text goes to the context as Pipecat hands it over, the
end of the turn closes the context (voxport speaks the rest, then `done`), and an interruption cancels it
(the generation stops within one engine step). Audio comes back as raw pcm at the pipeline's output
rate; each `segment` event becomes the segment's text timestamp, which Pipecat turns into TTSTextFrames
timed with playback. Importing this module needs the `pipecat-ai` package; nothing else in voxport does.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

try:  # the `pipecat` extra, not a base dependency: only this module imports it
    from pipecat.frames.frames import ErrorFrame, Frame, TTSAudioRawFrame, TTSStoppedFrame
    from pipecat.processors.frame_processor import FrameProcessorSetup
    from pipecat.services.settings import TTSSettings
    from pipecat.services.tts_service import WebsocketTTSService
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        'voxport.integrations.pipecat needs pipecat-ai: pip install "voxport[pipecat]"'
    ) from exc
from websockets.protocol import State


@dataclass
class VoxportTTSSettings(TTSSettings):
    """Pipecat's runtime-updatable TTS settings (model, voice, language); a change opens a new context."""


class VoxportTTSService(WebsocketTTSService):
    """Speech from a voxport server's `/v1/audio/speech/ws`, one context per turn.

    `url` is the socket's address (`ws://host:8000/v1/audio/speech/ws`); `api_key` goes in the
    `Authorization` header. `options` are extra context options (`seed`, `instructions`, `speed`, ...).
    """

    Settings = VoxportTTSSettings
    _settings: VoxportTTSSettings

    def __init__(self, *, url: str, api_key: str | None = None, voice: str = "alloy", model: str = "voxcpm2",
                 language: str | None = None, options: dict[str, Any] | None = None,
                 max_buffer_delay_ms: int | None = None, **kwargs: Any):  # fmt: skip
        settings = self.Settings(model=model, voice=voice, language=language)
        super().__init__(push_stop_frames=False, push_start_frame=True, push_text_frames=False,
                         settings=settings, **kwargs)  # fmt: skip
        self._url = url
        self._api_key = api_key
        self._options = dict(options or {})
        self._delay_ms = max_buffer_delay_ms
        self._opened: set[str] = set()
        self._receive_task = None

    def can_generate_metrics(self) -> bool:
        return True

    # -- connection ------------------------------------------------------------------------------

    async def setup(self, setup: FrameProcessorSetup) -> None:
        await super().setup(setup)
        await self._connect()

    async def stop(self, frame) -> None:
        await super().stop(frame)
        await self._disconnect()

    async def cancel(self, frame) -> None:
        await super().cancel(frame)
        await self._disconnect()

    async def _connect(self) -> None:
        await super()._connect()
        await self._connect_websocket()
        if self._websocket is not None and self._receive_task is None:
            self._receive_task = self.create_task(self._receive_task_handler(self._report_error))

    async def _disconnect(self) -> None:
        await super()._disconnect()
        if self._receive_task is not None:
            await self.cancel_task(self._receive_task)
            self._receive_task = None
        await self._disconnect_websocket()

    async def _connect_websocket(self) -> None:
        if self._websocket is not None and self._websocket.state is State.OPEN:
            return
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        try:
            self._websocket = await self._websocket_connect(self._url, additional_headers=headers)
            await self._call_event_handler("on_connected")
        except Exception as exc:
            self._websocket = None
            await self.push_error(error_msg=f"Cannot connect to voxport: {exc}", exception=exc)
            await self._call_event_handler("on_connection_error", f"{exc}")

    async def _disconnect_websocket(self) -> None:
        try:
            await self.stop_all_metrics()
            if self._websocket is not None:
                await self._websocket.close()
        finally:
            self._websocket = None
            self._opened.clear()
            await self._call_event_handler("on_disconnected")

    async def _send(self, message: dict[str, Any]) -> None:
        if self._websocket is None:
            raise ConnectionError("not connected to voxport")
        await self._websocket.send(json.dumps(message))

    # -- turns -----------------------------------------------------------------------------------

    def _first_message(self, context_id: str, text: str) -> dict[str, Any]:
        message: dict[str, Any] = {"context_id": context_id, "text": text, "response_format": "pcm",
                                   "sample_rate": self.sample_rate, "voice": self._settings.voice,
                                   "model": self._settings.model, **self._options}  # fmt: skip
        if self._settings.language:
            message["language"] = self._settings.language
        if self._delay_ms is not None:
            message["max_buffer_delay_ms"] = self._delay_ms
        return message

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        """Send the turn's next text to its context (opened with the options on its first text)."""
        try:
            if self._websocket is None or self._websocket.state is State.CLOSED:
                await self._connect()
            if context_id in self._opened:
                await self._send({"context_id": context_id, "text": text})
            else:
                await self._send(self._first_message(context_id, text))
                self._opened.add(context_id)
            await self.start_tts_usage_metrics(text)
        except Exception as exc:
            yield ErrorFrame(error=f"voxport: {exc}")
            yield TTSStoppedFrame(context_id=context_id)
            return
        yield None  # the audio arrives through the receive loop

    async def flush_audio(self, context_id: str | None = None) -> None:
        """The turn is complete: voxport speaks what is buffered, then ends the context with `done`."""
        context_id = context_id or self.get_active_audio_context_id()
        if context_id in self._opened and self._websocket is not None:
            await self._send({"context_id": context_id, "close": True})

    async def on_audio_context_interrupted(self, context_id: str) -> None:
        """A barge-in: the context is cancelled; its generation stops within one engine step."""
        await self.stop_all_metrics()
        if context_id in self._opened and self._websocket is not None:
            self._opened.discard(context_id)
            await self._send({"context_id": context_id, "cancel": True})
        await super().on_audio_context_interrupted(context_id)

    async def _receive_messages(self) -> None:
        async for raw in self._websocket:
            event = json.loads(raw)
            context_id, kind = event.get("context_id"), event.get("type")
            live = context_id is not None and self.audio_context_available(context_id)
            if kind == "audio" and live:
                frame = TTSAudioRawFrame(audio=base64.b64decode(event["audio"]), sample_rate=self.sample_rate,
                                         num_channels=1, context_id=context_id)  # fmt: skip
                await self.stop_ttfb_metrics()
                await self.append_to_audio_context(context_id, frame)
            elif kind == "segment" and live:
                # The caller's own text (what the LLM wrote), not the engine's respelled reading of it.
                await self.add_word_timestamps([(event.get("input_text", event["text"]), event["start"])],
                                               context_id)  # fmt: skip
            elif kind in ("done", "cancelled"):
                self._opened.discard(context_id)
                if live:
                    await self.append_to_audio_context(context_id, TTSStoppedFrame(context_id=context_id))
                    await self.remove_audio_context(context_id)
            elif kind == "error":
                self._opened.discard(context_id)
                await self.push_error(error_msg=f"voxport: {event['error']['message']}")
                if live:
                    await self.append_to_audio_context(context_id, TTSStoppedFrame(context_id=context_id))
                    await self.remove_audio_context(context_id)
