"""GET /v1/audio/speech/ws: the speech WebSocket for voice agents (docs/api.md#speech-websocket)."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from voxport.api.socket import serve_speech_socket

router = APIRouter(tags=["speech"])


@router.websocket("/v1/audio/speech/ws")
async def speech_socket(websocket: WebSocket) -> None:
    """Speak text while it is still being written: contexts, buffering, flush, cancel."""
    await serve_speech_socket(websocket)
