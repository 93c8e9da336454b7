"""What a sweep measures: a server over HTTP (streamed requests) or the raw engine in this process."""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from voxport.bench.plan import RequestSpec
from voxport.metrics import gpu_memory_bytes, process_rss_bytes

WAV_HEADER_BYTES = 44
HEALTH_TIMEOUT_S = 10.0
RESPONSE_SNIPPET_CHARS = 2000


@dataclass
class RequestResult:
    index: int
    prompt_index: int
    seed: int
    repeat: bool
    sent_at_s: float = 0.0  # since the level started: shows who waited behind whom
    status: int | None = None  # HTTP status, 200 for a successful engine generation, None: no answer
    error: str | None = None  # a failure besides the status: no answer, cut-off body, timeout, engine error
    first_audio_s: float | None = None
    total_s: float = 0.0
    bytes: int = 0
    audio_s: float | None = None
    cache: str | None = None  # the X-Cache header
    detail: dict[str, Any] | None = field(default=None, repr=False)  # a failed response, for error_samples

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None


class Target(Protocol):
    name: str

    async def before_level(self) -> dict[str, Any]: ...

    def describe(self, spec: RequestSpec) -> dict[str, Any]:
        """The exact request, for error reports."""
        ...

    async def send(self, spec: RequestSpec, result: RequestResult) -> None:
        """Make the request, filling `result` as it goes: a timeout keeps whatever had arrived."""
        ...

    async def after_level(self, before: dict[str, Any]) -> dict[str, Any]: ...

    async def gpu_memory(self) -> int | None:
        """GPU memory the measured side holds now (its process and children), None when unknown."""
        ...


def _audio_seconds(fmt: str, nbytes: int, rate: int) -> float | None:
    """Seconds of s16le mono audio in a raw body; compressed formats cannot be counted from bytes."""
    if fmt == "pcm":
        return nbytes / 2 / rate
    if fmt == "wav":
        return max(0, nbytes - WAV_HEADER_BYTES) / 2 / rate
    return None


class ServerTarget:
    name = "server"

    def __init__(self, client: httpx.AsyncClient, args: argparse.Namespace, run_id: str):
        self.client = client
        self.args = args
        self.run_id = run_id
        self.path = "/v1/audio/speech/stream" if args.stream_route else "/v1/audio/speech"

    def body(self, spec: RequestSpec) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.args.model,
            "voice": self.args.voice,
            "input": spec.text,
            "response_format": self.args.format,
            "sample_rate": self.args.sample_rate,
            "max_length": self.args.max_length,
            "seed": spec.seed,
        }
        if not self.args.stream_route:
            body["stream"] = True
        return body

    async def health(self) -> dict[str, Any] | None:
        try:
            response = await self.client.get("/health", timeout=HEALTH_TIMEOUT_S)
            data = response.json()
        except (httpx.HTTPError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    async def before_level(self) -> dict[str, Any]:
        health = await self.health()
        return {"rss_bytes": health.get("rss_bytes") if health else None}

    async def after_level(self, before: dict[str, Any]) -> dict[str, Any]:
        health = await self.health()
        return {
            "rss_before_bytes": before.get("rss_bytes"),
            "rss_after_bytes": health.get("rss_bytes") if health else None,
            "peak_gpu_bytes": None,  # sampled during the level from /health instead
        }

    async def gpu_memory(self) -> int | None:
        health = await self.health()
        value = health.get("gpu_memory_bytes") if health else None
        return value if isinstance(value, int) else None

    def request_id(self, spec: RequestSpec) -> str:
        return f"bench-{self.run_id}-{spec.index}"

    def describe(self, spec: RequestSpec) -> dict[str, Any]:
        return {
            "method": "POST",
            "url": f"{self.args.url}{self.path}",
            "headers": {"X-Request-Id": self.request_id(spec)},
            "body": self.body(spec),
        }

    async def send(self, spec: RequestSpec, result: RequestResult) -> None:
        headers = {"X-Request-Id": self.request_id(spec)}
        started = time.perf_counter()
        snippet = b""
        rate = self.args.sample_rate
        try:
            async with self.client.stream(
                "POST", self.path, json=self.body(spec), headers=headers
            ) as response:
                result.status = response.status_code
                result.cache = response.headers.get("x-cache")
                if response.status_code != 200:
                    result.detail = {"response_headers": dict(response.headers), "response_body": ""}
                # Decoded bytes: a proxy that compresses the body must not change the audio count.
                async for chunk in response.aiter_bytes():
                    if not chunk:
                        continue
                    if result.first_audio_s is None:
                        result.first_audio_s = time.perf_counter() - started
                    result.bytes += len(chunk)
                    if result.detail is not None and len(snippet) < RESPONSE_SNIPPET_CHARS:
                        snippet += chunk
                        result.detail["response_body"] = snippet[:RESPONSE_SNIPPET_CHARS].decode(
                            errors="replace"
                        )
                rate = int(response.headers.get("x-sample-rate") or self.args.sample_rate)
        except httpx.HTTPError as exc:
            result.error = f"{type(exc).__name__}: {exc}"
        if result.ok:
            result.audio_s = _audio_seconds(self.args.format, result.bytes, rate)


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # no torch, or a broken one: no GPU figures
        return False


class EngineTarget:
    name = "engine"

    def __init__(self, engine: Any, max_length: int, voice: Any = None):
        self.engine = engine
        self.max_length = max_length
        self.voice = voice  # the same encoded voice prompt the server would use
        self.cuda = cuda_available()

    async def before_level(self) -> dict[str, Any]:
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        # The engine lives in this process, so this process's RSS is the engine's footprint.
        return {"rss_bytes": process_rss_bytes()}

    async def after_level(self, before: dict[str, Any]) -> dict[str, Any]:
        peak = None
        if self.cuda:
            import torch

            peak = int(torch.cuda.max_memory_allocated())
        return {
            "rss_before_bytes": before.get("rss_bytes"),
            "rss_after_bytes": process_rss_bytes(),
            "peak_gpu_bytes": peak,
        }

    async def gpu_memory(self) -> int | None:
        # This process and its children: nano-vllm's model worker is one.
        return await asyncio.to_thread(gpu_memory_bytes) if self.cuda else None

    def describe(self, spec: RequestSpec) -> dict[str, Any]:
        return {"engine_generate": {"text": spec.text, "max_length": self.max_length, "seed": spec.seed}}

    async def send(self, spec: RequestSpec, result: RequestResult) -> None:
        from voxport.engine.base import SynthesisRequest

        request = SynthesisRequest(
            text=spec.text, voice=self.voice, max_length=self.max_length, seed=spec.seed
        )
        started = time.perf_counter()
        samples = 0
        chunks = self.engine.generate(request)
        try:
            async for chunk in chunks:
                if result.first_audio_s is None:
                    result.first_audio_s = time.perf_counter() - started
                samples += len(chunk)
                result.bytes = samples * 4  # float32
            result.status = 200
        except Exception as exc:  # every engine failure is one failed request, never a dead sweep
            result.error = f"{type(exc).__name__}: {exc}"
        finally:
            # Closing the iterator is what stops the engine's worker when we leave early (timeout).
            await chunks.aclose()
        if result.ok:
            result.audio_s = samples / self.engine.info.sample_rate
