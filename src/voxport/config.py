"""The one Settings object. Every field is a `voxport serve --flag` and a `VOXPORT_FLAG` variable.

It is longer than 300 lines because it is one flat list of every setting, each with its range and the
one-line description that `voxport serve --help` prints: split by feature, a reader would have to know
which feature owns a flag before finding it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# The built-in voices ship inside the package (package data), so a wheel install finds them.
DEFAULT_VOICES_FILE = Path(__file__).resolve().parent / "voices.json"
# Recordings are not package data: the repository's assets/voices (a checkout, an editable install, the
# Docker image). The shipped voices.json names none, so a wheel install needs --voices-dir only for
# recordings it adds itself.
DEFAULT_VOICES_DIR = Path(__file__).resolve().parents[2] / "assets" / "voices"


# Admission defaults (Settings.admission): at least this many generate at once, whatever the engine,
# and the queue holds this many times what generates.
MIN_CONCURRENT = 8
QUEUE_BATCHES = 4


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "voxport"


# What a valid request's text can hold besides `input` (protocol/fields.py, protocol/timings.py,
# lexicon.py; tests/test_strict_input.py sends the largest valid bodies): `instructions` (4096
# characters), 100 `pronunciations` of a 100-character word and a 200-character respelling, a model id
# and a voice id; a dialogue has up to 100 turns, each a voice id and its own 4096 characters of
# instructions (its text counts against max_input_chars). A character is at most 12 bytes in JSON: a
# surrogate pair of \\uXXXX escapes (what json.dumps writes by default for characters beyond U+FFFF).
_ESCAPED = 12
_MAX_INSTRUCTIONS, _MAX_VOICE_ID, _MAX_TURNS = 4096, 100, 100
_SHARED_TEXT = _MAX_INSTRUCTIONS + 100 * (100 + 200) + 2 * _MAX_VOICE_ID


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VOXPORT_", extra="ignore")

    model: str = Field(
        "openbmb/VoxCPM2",
        description="Hugging Face model id, or a local checkpoint directory (used as is).",
    )
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on.")
    engine: Literal["auto", "reference", "nanovllm", "sim"] = Field(
        "auto",
        description="Inference engine: 'nanovllm' (continuous batching, CUDA), 'reference' (voxcpm "
        "package, one generation at a time), 'auto' (nanovllm when usable, else reference), or 'sim' "
        "(a simulated batching engine at GPU rates: no model, no checkpoint; benchmarks and load tests).",
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto", description="Torch device for the reference engine ('auto': cuda, then mps, then cpu)."
    )
    max_num_seqs: int = Field(
        256, ge=1, description="nanovllm and sim: most sequences generated in one batch."
    )
    max_model_len: int = Field(
        4096, ge=64, description="nanovllm and sim: LM positions per sequence (prompt + text + audio steps)."
    )
    sim_step_ms: float = Field(
        10.0, ge=0, description="sim: fixed cost of one batch step, in milliseconds (step = A + B x batch)."
    )
    sim_step_ms_per_seq: float = Field(
        0.06, ge=0, description="sim: cost of one batch step per running sequence, in milliseconds."
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="nanovllm: share of GPU memory for weights, activations and KV cache."
    )
    enforce_eager: bool = Field(False, description="nanovllm: no CUDA graphs (slower; for debugging).")
    inference_timesteps: int = Field(
        10, ge=1, le=100, description="nanovllm: diffusion timesteps for every request (set server-wide)."
    )
    attention: Literal["auto", "flash-attn", "triton", "sdpa"] = Field(
        "auto",
        description="nanovllm: attention kernels: flash-attn; triton (voxport's drop-in: a Triton paged "
        "decode kernel, prefill on torch SDPA); sdpa (the drop-in with decode on SDPA over gathered pages, "
        "for comparison); or auto (flash-attn when importable, else triton).",
    )
    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Where voxport keeps its state (voices, audio cache).",
    )
    served_model_id: str = Field("voxcpm2", description="Model id reported by /v1/models.")
    model_aliases: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [
            "tts-1",
            "tts-1-hd",
            "gpt-4o-mini-tts",
            "gpt-4o-mini-tts-2025-03-20",
            "gpt-4o-mini-tts-2025-12-15",
        ],  # fmt: skip
        description="Comma-separated extra model ids accepted in requests.",
    )
    max_input_chars: int = Field(4096, ge=1, description="Longest accepted `input`, in characters.")
    max_length: int = Field(
        2048,
        ge=1,
        le=2048,
        description="Default and upper bound of a request's `max_length` (steps of 0.16 s of audio).",
    )
    voices_file: Path = Field(
        DEFAULT_VOICES_FILE,
        description="The voice registry file (default: the voices.json shipped in the package).",
    )
    segment_max_chars: int = Field(
        300,
        ge=20,
        le=4096,
        description="Longest text segment synthesised in one generation when long input is split.",
    )
    voices_dir: Path = Field(
        DEFAULT_VOICES_DIR,
        description="Root of the recordings voices.json names (default: the repository's assets/voices).",
    )
    lexicon_file: Path | None = Field(
        None,
        description="Pronunciation lexicon: a JSON object of word -> respelling, applied to every request's "
        "text (docs/api.md); re-read by POST /admin/reload-voices. Unset: none.",
    )
    loudness: float | None = Field(
        None,
        ge=-50,
        le=-5,
        description="Target loudness in LUFS (ITU-R BS.1770), e.g. -16, for requests that do not set "
        "`loudness`; unset: output as generated.",
    )
    default_voice: str = Field("alloy", description="Voice used when a request names none.")
    default_sample_rate: Annotated[dict[str, int], NoDecode] = Field(
        default_factory=dict,
        description="Comma-separated FORMAT=RATE pairs (e.g. wav=24000,flac=24000): the output rate of "
        "requests that do not set `sample_rate`; formats not named keep theirs (48000; pcm 24000).",
    )
    default_language: str | None = Field(
        None, description="`language` of requests that do not set one (ISO 639-1, e.g. en); unset: none."
    )
    default_seed: int | None = Field(
        None, ge=0, le=2**32 - 1, description="`seed` of requests that do not set one; unset: random."
    )
    default_normalize: bool = Field(
        False, description="`normalize` (the engine's text normalisation) of requests that do not set it."
    )
    design_clip_seconds: float = Field(
        6.0, ge=1.0, le=30.0, description="Length of the reference clip made once for each designed voice."
    )
    warm_voices: bool = Field(
        True,
        description="Make every designed voice's reference clip and prompt right after start, before /ready "
        "says yes (a progress line per voice); --no-warm-voices: each on its first use.",
    )
    allowed_prompt_dir: Path | None = Field(
        None, description="Directory POST /v1/voices may read recordings from; unset: that route answers 403."
    )
    max_upload_mb: float = Field(10, gt=0, description="Largest accepted audio upload, in MiB (beyond: 413).")
    body_read_timeout_s: float = Field(
        30,
        gt=0,
        description="Longest wait for the next part of a request body; past it: 408 and the "
        "connection is closed.",
    )
    max_header_kb: int = Field(
        32, ge=4, le=1024, description="Largest request head (request line and headers), in KiB; beyond: 431."
    )
    keep_alive_s: float = Field(5, gt=0, description="How long an idle keep-alive connection stays open.")
    connection_idle_s: float = Field(
        10, gt=0, description="How long a new connection may stay silent before its first byte; then closed."
    )
    request_head_timeout_s: float = Field(
        10, gt=0, description="Deadline of a request's head (request line and headers) from its first byte; "
        "past it: 408 and the connection is closed.",
    )  # fmt: skip
    request_body_timeout_s: float = Field(
        120, gt=0, description="Deadline of a request's whole body from the end of its head; past it the "
        "connection is closed.",
    )  # fmt: skip
    max_user_voices: int = Field(100, ge=0, description="Most voices the user library holds.")
    max_user_voices_mb: float = Field(500, gt=0, description="Most MiB of recordings the user library holds.")
    cache_ttl_minutes: float = Field(
        1440, description="How long a cached response is served; 0 or less disables the audio cache."
    )
    cache_max_mb: float = Field(1024, gt=0, description="Size cap of the audio cache, in MiB (LRU eviction).")
    cache_sweep_s: float = Field(60, gt=0, description="Seconds between cache sweeps (TTL and size cap).")
    cache_memory_mb: float = Field(
        64, ge=0, description="MiB of hot cache entries (each up to 1 MiB) also kept in memory; 0: none."
    )
    cache_shared_across_keys: bool = Field(
        False,
        description="With several API keys, share cached audio between them (one tenant holding "
        "several keys); off: each key has its own cache entries (docs/configuration.md, Tenants).",
    )
    max_concurrent: int | None = Field(
        None,
        ge=1,
        description="Requests generating at once; more wait in the queue (default: the engine's batch "
        f"width, at least {MIN_CONCURRENT}).",
    )
    max_queue: int | None = Field(
        None,
        ge=0,
        description=f"Requests waiting for a generation slot; beyond: 429 (default: {QUEUE_BATCHES} x "
        "max_concurrent).",
    )
    stream_speech: bool = Field(
        True,
        description="POST /v1/audio/speech sends audio as it is generated (as OpenAI's does) unless a "
        "request says stream: false; --no-stream-speech: the whole file at once unless it says true.",
    )
    dialogue_gap_s: float = Field(
        0.4,
        ge=0,
        le=5,
        description="Silence between a dialogue's turns, in seconds (a request's "
        "`dialogue_gap` overrides it).",
    )
    request_timeout_s: float = Field(
        300, gt=0, description="Deadline of a request (to its first audio, when streaming); past it: 504."
    )
    engine_stall_s: float = Field(
        60,
        gt=0,
        description="Seconds without any engine progress while work waits before the engine "
        "counts as stalled: requests then fail with 503 and /ready turns false, until the engine "
        "produces again or a probe generation succeeds.",
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated API keys; when set, `Authorization: Bearer KEY` is required.",
    )
    api_keys_file: Path | None = Field(
        None, description="File with one API key per line (added to api_keys)."
    )
    admin_api_key: str | None = Field(
        None,
        description="Key for /admin/* and voice deletion; unset: those are reachable from loopback only.",
    )
    metrics_require_key: bool = Field(False, description="Require an API key for /metrics too.")
    cors_allow_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated origins allowed by CORS ('*' for any); empty: off."
    )
    shutdown_grace_s: float = Field(
        30, ge=0, description="On SIGTERM, how long in-flight requests may run before they are cut."
    )
    drain_s: float = Field(
        0,
        ge=0,
        description="On SIGTERM, how long the server keeps serving with /ready answering 503 before it stops "
        "accepting connections: time for a load balancer's health checks to take it out of rotation.",
    )
    workers: int | None = Field(
        None,
        ge=1,
        le=64,
        description="HTTP worker processes sharing the port, over one engine host process (2 or more); 1 "
        "serves in one process. Default: 1 on CPU engines, the CPUs less two (at most 8) with nanovllm.",
    )
    cpu_threads: int | None = Field(
        None,
        ge=1,
        description="Torch CPU threads for the reference engine (default: the CPUs available, less one).",
    )
    playground: bool = Field(
        True, description="Serve the browser playground at / and /playground; off: those answer 404."
    )
    max_job_chars: int = Field(
        200_000, ge=1, description="Longest `input` of POST /v1/audio/speech/jobs, in characters."
    )
    max_batch_requests: int = Field(
        1000, ge=1, description="Most requests in one POST /v1/audio/speech/batches."
    )
    job_result_ttl_hours: float = Field(
        168, gt=0, description="How long a finished job's audio is kept; then it is deleted (the job stays)."
    )
    max_queued_jobs: int = Field(
        10_000, ge=1, description="Most unfinished (queued or running) jobs on the server; beyond: 429."
    )
    max_queued_jobs_per_key: int = Field(
        1000, ge=1, description="Most unfinished jobs per API key (or in all, without keys); beyond: 429."
    )
    webhook_secret: str | None = Field(
        None,
        description="Standard Webhooks signing secret (`whsec_<base64>`); unset: one is made once and kept "
        "in <data-dir>/jobs/webhook_secret.",
    )
    webhook_allow_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated host names and networks (CIDR) webhooks may reach although they are "
        "not public (loopback, private, link-local); empty: public addresses only.",
    )
    webhook_timeout_s: float = Field(10, gt=0, description="Deadline of one webhook delivery attempt.")
    webhook_parallel: int = Field(
        64, ge=1, description="Webhook delivery attempts at once, over every receiver (2 at most to any one)."
    )
    webhook_retry_s: float = Field(
        86_400,
        ge=0,
        description="How long a failing webhook is retried (exponential backoff from 1 s, at most 10 min "
        "apart) before it is given up.",
    )
    redis_url: str | None = Field(
        None,
        description="Redis shared by every replica (redis://, rediss:// or unix://): the audio cache, the "
        "voice library and speech jobs live there; unset: all of it is local to this process (the default).",
    )
    redis_prefix: str = Field(
        "voxport",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Prefix of every Redis key (one Redis can serve several voxport deployments).",
    )
    job_visibility_timeout_s: float = Field(
        30,
        ge=1,
        le=3600,
        description="With --redis-url: how long a job segment claimed by a replica that stopped renewing its "
        "claim (it died) waits before another replica takes it over.",
    )
    # The speech WebSocket (GET /v1/audio/speech/ws, docs/api.md#speech-websocket).
    ws_max_contexts: int = Field(
        16, ge=1, le=1024, description="Speech socket: most open contexts per socket."
    )
    ws_max_sockets_per_key: int = Field(
        256, ge=1, description="Speech socket: most open sockets per API key (per HTTP worker process)."
    )
    ws_max_message_bytes: int = Field(
        65536, ge=1024, description="Speech socket: largest client message, in bytes."
    )
    ws_max_context_chars: int = Field(
        100_000, ge=1, description="Speech socket: most text one context may be sent, in characters."
    )
    ws_idle_timeout_s: float = Field(
        60,
        gt=0,
        description="Speech socket: closed (code 4408) after this long with no client message and "
        "no context speaking.",
    )
    ws_buffer_delay_ms: int = Field(
        1000,
        ge=0,
        le=60000,
        description="Speech socket: default max_buffer_delay_ms, the wait after the "
        "last text before an unfinished sentence is spoken.",
    )
    ws_clause_chars: int = Field(
        150,
        ge=20,
        le=4096,
        description="Speech socket: a sentence longer than this is spoken clause by "
        "clause (cut at its last comma, else space, within this many characters).",
    )
    wyoming_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="TCP port of the built-in Wyoming server (Home Assistant's TTS protocol); unset: off. "
        "Wyoming has no authentication: bind it to a trusted network only.",
    )
    wyoming_host: str | None = Field(
        None, description="Address the Wyoming server listens on (default: --host)."
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="Log level."
    )
    log_request_text: bool = Field(
        False, description="Log request text (off by default: inputs are never logged otherwise)."
    )

    @field_validator("model_aliases", "api_keys", "cors_allow_origins", "webhook_allow_hosts", mode="before")
    @classmethod
    def _split_aliases(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("default_sample_rate", mode="before")
    @classmethod
    def _split_rates(cls, value: object) -> object:
        if isinstance(value, str):
            pairs = [part.strip().partition("=") for part in value.split(",") if part.strip()]
            if any(not sep for _, sep, _ in pairs):
                raise ValueError("expected FORMAT=RATE pairs, e.g. wav=24000,flac=24000")
            return {fmt.strip(): rate.strip() for fmt, _, rate in pairs}
        return value

    @field_validator("default_sample_rate")
    @classmethod
    def _known_rates(cls, value: dict[str, int]) -> dict[str, int]:
        if not value:  # settings validate their defaults too: nothing to check, nothing imported
            return value
        from voxport.audio import FORMATS  # imported only when the setting is used

        for fmt, rate in value.items():
            spec = FORMATS.get(fmt)
            if spec is None:
                raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
            allowed = spec.rates or range(8000, 48001)
            if rate not in allowed:
                raise ValueError(f"{fmt} cannot be encoded at {rate} Hz")
        return value

    @field_validator("default_language")
    @classmethod
    def _spoken(cls, value: str | None) -> str | None:
        if value is None:
            return value
        from voxport.engine.base import LANGUAGES  # imported only when the setting is used

        if value not in LANGUAGES:
            raise ValueError(f"VoxCPM2 does not speak {value!r}; one of {', '.join(sorted(LANGUAGES))}")
        return value

    def all_api_keys(self) -> list[str]:
        """api_keys plus the keys in api_keys_file (blank lines and # comments skipped)."""
        keys = list(self.api_keys)
        if self.api_keys_file is not None:
            for line in self.api_keys_file.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    keys.append(line)
        return keys

    def admission(self, engine_capacity: int) -> tuple[int, int]:
        """(max_concurrent, max_queue): the settings where given, else sized from what the engine runs
        at once.

        A batching engine admits its whole batch, so that every slot can be used, and no more: more
        would only wait inside the engine, out of sight of the 429 check. A one-at-a-time engine still
        admits a few, because it takes work FIFO per text segment: the sentences of admitted streams
        then interleave, and one long stream does not hold back every other request's first audio.
        The queue holds a few rounds of that, so that a burst waits instead of being refused, while a
        queued request's wait stays bounded.
        """
        concurrent = (
            self.max_concurrent if self.max_concurrent is not None else max(engine_capacity, MIN_CONCURRENT)
        )
        queue = self.max_queue if self.max_queue is not None else QUEUE_BATCHES * concurrent
        return concurrent, queue

    @property
    def max_json_body_bytes(self) -> int:
        """The largest JSON body a valid speech request can be (docs/configuration.md, Limits): its text
        (`input`, or a dialogue's turns with their voices and instructions), its `instructions` and its
        `pronunciations`, every character a JSON escape, plus 64 KiB for the other fields and framing."""
        dialogue = _MAX_TURNS * (_MAX_INSTRUCTIONS + _MAX_VOICE_ID)
        return _ESCAPED * (self.max_input_chars + dialogue + _SHARED_TEXT) + 2**16

    @property
    def max_job_body_bytes(self) -> int:
        """A job's JSON body: a speech request for `max_job_chars` of input (a job has no dialogue)."""
        return _ESCAPED * (self.max_job_chars + _SHARED_TEXT) + 2**16

    @property
    def max_batch_item_bytes(self) -> int:
        """One request of a batch, as JSON: `input` at four bytes a character (UTF-8's longest), plus
        16 KiB for every other field."""
        return 4 * self.max_input_chars + 2**14

    @property
    def max_batch_body_bytes(self) -> int:
        """A batch's JSON body, refused past this before it is parsed: `max_batch_requests` requests of
        `max_batch_item_bytes`, plus 64 KiB for the batch's own fields (32 MiB by default)."""
        return self.max_batch_requests * self.max_batch_item_bytes + 2**16

    @property
    def max_upload_body_bytes(self) -> int:
        """A multipart body: the upload cap plus 1 MiB for the form's other fields and its framing."""
        return int(self.max_upload_mb * 2**20) + 2**20

    @property
    def model_ids(self) -> list[str]:
        """Every model id a request may name: the served id first, then the aliases."""
        ids = [self.served_model_id]
        ids += [alias for alias in self.model_aliases if alias != self.served_model_id]
        return ids
