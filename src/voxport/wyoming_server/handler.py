"""One Wyoming connection: `describe`, `synthesize` (one text, one audio stream), and streaming synthesis
(`synthesize-start`, `synthesize-chunk`..., `synthesize-stop`: each sentence spoken as soon as it ends).
With `text_format: "ssml"` the text is an SSML document, read through voxport.speech.ssml as HTTP's
`input_format: "ssml"`; a streamed one is held until `synthesize-stop` (a fragment is not well-formed).

Every request is a `SpeechService.create` call, with the HTTP API's limits, voices, cache and admission.
Audio is 16-bit mono PCM at the `pcm` format's rate, sent chunk by chunk as the engine produces it. A
failed request answers an `error` event and the connection stays open."""

from __future__ import annotations

import asyncio
import logging

from wyoming.event import Event
from wyoming.info import Describe
from wyoming.server import AsyncEventHandler
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
    SynthesizeTextFormat,
    SynthesizeVoice,
)

from voxport.speech import SpeechService
from voxport.wyoming_server.info import describe
from voxport.wyoming_server.sentences import SentenceBuffer
from voxport.wyoming_server.speak import Speaker

log = logging.getLogger("voxport.wyoming")


class SpeechHandler(AsyncEventHandler):
    def __init__(self, speech: SpeechService, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        super().__init__(reader, writer)
        self.speech = speech
        self.speaker = Speaker(speech, self.write_event)
        self.session: _Session | None = None

    async def handle_event(self, event: Event) -> bool:
        try:
            return await self._handle(event)
        except (ConnectionError, asyncio.IncompleteReadError):
            return False  # the client went away; its stream was closed on the way out

    async def _handle(self, event: Event) -> bool:
        if Describe.is_type(event.type):
            await self.speech.voices.refresh()  # what was uploaded through another worker (--workers N)
            await self.write_event(describe(self.speech.voices).event())
        elif Synthesize.is_type(event.type):
            if self.session is None:  # within a streaming session it repeats the chunks' text: ignored
                request = Synthesize.from_event(event)
                await self.speaker.speak(request.text, request.voice, _ssml(request.text_format))
        elif SynthesizeStart.is_type(event.type):
            await self._close_session()
            start = SynthesizeStart.from_event(event)
            self.session = _Session(self.speaker, start.voice, self.speech.settings.max_input_chars,
                                    _ssml(start.text_format))  # fmt: skip
            await self.session.check()
        elif SynthesizeChunk.is_type(event.type):
            if self.session is not None:
                self.session.add(SynthesizeChunk.from_event(event).text)
        elif SynthesizeStop.is_type(event.type) and self.session is not None:
            session, self.session = self.session, None
            await session.finish()
            await self.write_event(SynthesizeStopped().event())
        return True  # other events (and unknown ones) are not ours: ignored, as the protocol says

    async def _close_session(self) -> None:
        if self.session is not None:
            session, self.session = self.session, None
            await session.cancel()

    async def disconnect(self) -> None:
        await self._close_session()


def _ssml(text_format: object) -> bool:
    return text_format == SynthesizeTextFormat.SSML  # None or "text": plain text


class _Session:
    """One streaming synthesis: sentences queue up as they complete and are spoken in order by one task,
    while the connection keeps reading chunks. An SSML session keeps its chunks (up to one character past
    the length limit, which the request then refuses) and speaks the document on stop."""

    def __init__(self, speaker: Speaker, voice: SynthesizeVoice | None, max_chars: int, ssml: bool = False):
        self.speaker = speaker
        self.voice = voice
        self.ssml = ssml
        self.document = ""
        self.max_chars = max_chars
        self.failed = False
        self.sentences = SentenceBuffer(speaker.language(voice), max_chars)
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def check(self) -> None:
        """An unknown voice is answered at once, and the session's text is then not spoken."""
        self.failed = not await self.speaker.check_voice(self.voice)

    def add(self, text: str) -> None:
        if self.failed:
            return
        if self.ssml:
            self.document = (self.document + text)[: self.max_chars + 1]
            return
        for sentence in self.sentences.add(text):
            self._put(sentence)

    def _put(self, item: str | None) -> None:
        if self.task is None:
            self.task = asyncio.create_task(self._run(), name="wyoming streaming synthesis")
        self.queue.put_nowait(item)

    async def _run(self) -> None:
        while (sentence := await self.queue.get()) is not None:
            await self.speaker.speak(sentence, self.voice, self.ssml)

    async def finish(self) -> None:
        if not self.failed and self.ssml:
            if self.document.strip():
                self._put(self.document)
        elif not self.failed:
            for sentence in self.sentences.flush():
                self._put(sentence)
        if self.task is not None:
            self._put(None)
            await self.task

    async def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, ConnectionError):
                pass
            except Exception:  # already reported to the client, or the client is gone
                log.debug("streaming synthesis ended with an error", exc_info=True)
