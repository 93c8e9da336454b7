"""The Wyoming TCP listener: started and stopped by the app's lifespan, in the process that holds the
`SpeechService`. It uses the library's `AsyncTcpServer.start` (not `run`, which would take over SIGTERM
from uvicorn)."""

from __future__ import annotations

import asyncio
import logging
from functools import partial

from wyoming.server import AsyncTcpServer

from voxport.speech import SpeechService
from voxport.wyoming_server.handler import SpeechHandler

log = logging.getLogger("voxport.wyoming")


class WyomingServer:
    def __init__(self, speech: SpeechService, host: str, port: int):
        self.speech = speech
        self.host = host
        self.port = port
        self._server: AsyncTcpServer | None = None

    async def start(self) -> None:
        self._server = AsyncTcpServer(self.host, self.port)
        await self._server.start(partial(SpeechHandler, self.speech))
        log.info("Wyoming server on tcp://%s:%d (no authentication: keep it on a trusted network)",
                 self.host, self.port)  # fmt: skip

    async def stop(self) -> None:
        """Stop listening and end every connection (their handlers close their streams)."""
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop()
            await asyncio.sleep(0)
