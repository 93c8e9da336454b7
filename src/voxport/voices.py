"""Voices: the voices.json registry, the user's voice library, uploads, and encoded prompts.

Three kinds of voice:
- recording + transcript: continuation cloning (`{"id", "wav", "text"}`);
- recording alone: reference cloning (`{"id", "wav"}`);
- designed (`{"id", "description", "seed"}`): the first time it is used, a short clip is synthesised from
  the description with the fixed seed and stored in the data dir; from then on the voice is cloned from
  that clip, so it sounds the same across requests and restarts.
User voices (uploaded through the API) are recordings kept in the data dir.

Every voice's encoded prompt is computed once, off the event loop, and kept in memory by the hash of its
audio and transcript. Nothing a client sends becomes a file name.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from voxport.audio import AudioDecodeError, decode_file, encode, write_wav
from voxport.engine.base import Engine, SynthesisRequest, VoicePrompt
from voxport.files import TEMP_PREFIX, atomic_write

log = logging.getLogger("voxport.voices")

ENCODER_RATE = 16000  # VoxCPM2's audio encoder reads 16 kHz mono
MIN_SECONDS, MAX_SECONDS = 1.0, 30.0
# What a designed voice says in its reference clip.
DESIGN_CLIP_TEXT = "Hello there. This is how I sound when I read a few ordinary sentences aloud."

_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class VoicesFileError(ValueError):
    """voices.json is missing or invalid; the message names the entry and field."""


class VoiceError(ValueError):
    """A voice request that cannot be honoured; `status` and `param` say how to answer it."""

    def __init__(
        self, message: str, status: int = 400, param: str | None = None, code: str = "invalid_value"
    ):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=64, pattern=_ID_PATTERN)


class DesignedEntry(_Entry):
    description: str = Field(min_length=1, max_length=1000)
    seed: int = Field(ge=0, le=2**32 - 1)

    @field_validator("description")
    @classmethod
    def _no_brackets(cls, value: str) -> str:
        if "(" in value or ")" in value:
            raise ValueError("must not contain parentheses (it becomes a parenthesised prefix)")
        return value.strip()


class RecordingEntry(_Entry):
    wav: str = Field(min_length=1, description="Path relative to the voices directory.")
    text: str | None = Field(None, min_length=1, max_length=1000)


class VoicesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    voices: list[DesignedEntry | RecordingEntry] = Field(min_length=1)


@dataclass
class Voice:
    id: str
    kind: Literal["designed", "recording", "uploaded"]
    source: Literal["built-in", "user"]
    key: str  # content hash: audio + transcript (or description + seed + weights for a designed voice)
    name: str = ""
    transcript: str | None = None
    audio: Path | None = None  # server-side only, never shown
    description: str | None = None
    seed: int | None = None
    duration: float | None = None
    created: float = field(default_factory=time.time)

    def public(self, default: str) -> dict:
        return {
            "id": self.id,
            "name": self.name or self.id,
            "kind": self.kind,
            "source": self.source,
            "has_transcript": bool(self.transcript),
            "duration": None if self.duration is None else round(self.duration, 2),
            "default": self.id == default,
        }


def _content_key(audio_bytes: bytes, transcript: str | None) -> str:
    return hashlib.md5(audio_bytes + b"\0" + (transcript or "").encode()).hexdigest()


def _inside(root: Path, candidate: Path) -> bool:
    try:
        candidate.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _describe_error(path: Path, data: object, exc: ValidationError) -> str:
    first = exc.errors()[0]
    loc = list(first["loc"])
    where = "voices file"
    if len(loc) >= 2 and loc[0] == "voices" and isinstance(loc[1], int):
        entries = data.get("voices", []) if isinstance(data, dict) else []
        entry = entries[loc[1]] if loc[1] < len(entries) else None
        name = entry.get("id") if isinstance(entry, dict) else None
        where = f"voice #{loc[1] + 1}" + (f" ({name!r})" if name else "")
        loc = loc[2:]
        if loc and loc[0] in ("DesignedEntry", "RecordingEntry"):  # union member names
            loc = loc[1:]
    field_name = ".".join(map(str, loc)) or "entry"
    return f"{path}: {where}, field '{field_name}': {first['msg']}"


def load_voices_file(path: Path, voices_dir: Path, fingerprint: str = "") -> dict[str, Voice]:
    """Read and validate voices.json; raise VoicesFileError naming the entry and field at fault."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VoicesFileError(f"voices file {path} does not exist (set --voices-file)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VoicesFileError(f"voices file {path} cannot be read: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("voices"), list):
        # A recording entry with a description is a mistake worth naming, not a silent pick of a kind.
        for i, entry in enumerate(data["voices"]):
            if isinstance(entry, dict) and "wav" in entry and "description" in entry:
                raise VoicesFileError(f"{path}: voice #{i + 1}: give either 'wav' or 'description', not both")
    try:
        parsed = VoicesFile.model_validate(data)
    except ValidationError as exc:
        raise VoicesFileError(_describe_error(path, data, exc)) from None
    voices: dict[str, Voice] = {}
    for number, entry in enumerate(parsed.voices, 1):
        if entry.id in voices:
            raise VoicesFileError(f"{path}: voice {entry.id!r} is listed twice")
        if isinstance(entry, DesignedEntry):
            key = hashlib.md5(f"{entry.description}\0{entry.seed}\0{fingerprint}".encode()).hexdigest()
            voices[entry.id] = Voice(
                entry.id, "designed", "built-in", key, description=entry.description, seed=entry.seed
            )
            continue
        wav = voices_dir / entry.wav
        if Path(entry.wav).is_absolute() or not _inside(voices_dir, wav):
            raise VoicesFileError(
                f"{path}: voice #{number} ({entry.id!r}), field 'wav': must stay inside {voices_dir}"
            )
        if not wav.is_file():
            raise VoicesFileError(
                f"{path}: voice #{number} ({entry.id!r}), field 'wav': {entry.wav} does not exist"
            )
        voices[entry.id] = Voice(
            entry.id, "recording", "built-in", _content_key(wav.read_bytes(), entry.text),
            transcript=entry.text, audio=wav.resolve(),
        )  # fmt: skip
    return voices


def design_prefix(description: str | None, instructions: str | None) -> str:
    """The parenthesised voice-design prefix for a request, or '' when there is nothing to say.

    Brackets inside the parts become square ones so that they cannot close the prefix early.
    """
    parts = [p.strip() for p in (description, instructions) if p and p.strip()]
    if not parts:
        return ""
    text = "; ".join(parts).replace("(", "[").replace(")", "]")
    return f"({text})"


@dataclass
class Upload:
    """A validated, normalised recording: mono float32 at 16 kHz, 1 to 30 s."""

    samples: np.ndarray
    key: str

    @property
    def duration(self) -> float:
        return len(self.samples) / ENCODER_RATE


class VoiceRegistry:
    def __init__(
        self,
        engine: Engine,
        voices_file: Path,
        voices_dir: Path,
        data_dir: Path,
        default_voice: str,
        max_user_voices: int = 100,
        max_user_bytes: int = 500 * 2**20,
        design_clip_seconds: float = 6.0,
    ):
        self.engine = engine
        self.voices_file = voices_file
        self.voices_dir = voices_dir
        self.data_dir = data_dir
        self.default_voice = default_voice
        self.max_user_voices = max_user_voices
        self.max_user_bytes = max_user_bytes
        self.design_clip_seconds = design_clip_seconds
        self.fingerprint = ""
        self.builtin: dict[str, Voice] = {}
        self.user: dict[str, Voice] = {}
        self._prompts: dict[str, VoicePrompt] = {}
        self._encoding: dict[str, asyncio.Future[VoicePrompt]] = {}
        self.loaded = False

    # -- directories ------------------------------------------------------------------------------

    @property
    def _library(self) -> Path:
        return self.data_dir / "voices" / "library"

    @property
    def _designed(self) -> Path:
        return self.data_dir / "voices" / "designed"

    @property
    def _scratch(self) -> Path:
        return self.data_dir / "tmp"

    # -- loading ----------------------------------------------------------------------------------

    def validate_file(self) -> dict[str, Voice]:
        voices = load_voices_file(self.voices_file, self.voices_dir, self.fingerprint)
        if self.default_voice not in voices:
            raise VoicesFileError(f"default voice {self.default_voice!r} is not in {self.voices_file}")
        return voices

    async def load(self, fingerprint: str) -> None:
        """Read voices.json and the library, encode every recording and the default voice (other designed
        voices: on first use)."""
        self.fingerprint = fingerprint
        self.builtin = await asyncio.to_thread(self.validate_file)
        self.user = await asyncio.to_thread(self._read_library)
        self._scratch.mkdir(parents=True, exist_ok=True)
        for leftover in self._scratch.iterdir():  # scratch files of a process that was killed
            with contextlib.suppress(OSError):
                leftover.unlink()
        for voice in [*self.builtin.values(), *self.user.values()]:
            if voice.kind != "designed":
                await self.prompt(voice)
        # The default voice is the one most requests get: its clip is made (or read) before the server
        # is ready, so that no request waits for it. Other designed voices are made on first use.
        default = self.get(None)
        if default is not None:
            await self.prompt(default)
        self.loaded = True

    def _read_library(self) -> dict[str, Voice]:
        voices: dict[str, Voice] = {}
        if not self._library.is_dir():
            return voices
        for folder in sorted(self._library.iterdir()):
            if folder.name.startswith(TEMP_PREFIX):  # a creation interrupted by a crash
                shutil.rmtree(folder, ignore_errors=True)
                continue
            try:
                meta = json.loads((folder / "voice.json").read_text(encoding="utf-8"))
                audio = folder / "audio.wav"
                voices[meta["id"]] = Voice(
                    meta["id"], "uploaded", "user", meta["key"], name=meta["name"],
                    transcript=meta.get("transcript"), audio=audio, duration=meta["duration"],
                    created=meta["created"],
                )  # fmt: skip
            except (OSError, ValueError, KeyError) as exc:
                log.warning("skipping unreadable library voice %s: %s", folder.name, exc)
        return voices

    async def reload(self) -> dict[str, list[str]]:
        """Re-read voices.json. An invalid file leaves the registry as it was (VoicesFileError)."""
        fresh = await asyncio.to_thread(self.validate_file)
        for voice in fresh.values():
            if voice.kind != "designed":
                await self.prompt(voice)
        old = self.builtin
        diff = {
            "added": sorted(set(fresh) - set(old)),
            "changed": sorted(i for i in set(fresh) & set(old) if fresh[i].key != old[i].key),
            "removed": sorted(set(old) - set(fresh)),
        }
        self.builtin = fresh
        await self._release_unused()
        return diff

    async def _release_unused(self) -> None:
        live = {v.key for v in self.all()}
        for key in [k for k in self._prompts if k not in live]:
            await self.engine.release_voice(self._prompts.pop(key))

    # -- lookup -----------------------------------------------------------------------------------

    def get(self, voice_id: str | None) -> Voice | None:
        voice_id = voice_id or self.default_voice
        return self.user.get(voice_id) or self.builtin.get(voice_id)

    def all(self) -> list[Voice]:
        return [*self.builtin.values(), *self.user.values()]

    async def prompt(self, voice: Voice) -> VoicePrompt:
        """The voice's encoded prompt: computed once per content hash, shared by concurrent callers."""
        found = self._prompts.get(voice.key)
        if found is not None:
            return found
        pending = self._encoding.get(voice.key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[VoicePrompt] = asyncio.get_running_loop().create_future()
        self._encoding[voice.key] = future
        try:
            if voice.kind == "designed":
                path = await self._design_clip(voice)
                prompt = await self.engine.encode_voice(str(path), None, voice.key)
            else:
                assert voice.audio is not None
                prompt = await self.engine.encode_voice(str(voice.audio), voice.transcript, voice.key)
        except BaseException as exc:
            future.set_exception(exc if isinstance(exc, Exception) else RuntimeError("cancelled"))
            future.exception()
            raise
        finally:
            self._encoding.pop(voice.key, None)
        future.set_result(prompt)
        self._prompts[voice.key] = prompt
        return prompt

    async def _design_clip(self, voice: Voice) -> Path:
        """The designed voice's reference clip: made once from its description and seed, then kept."""
        steps = max(1, round(self.design_clip_seconds / 0.16))
        path = self._designed / f"{voice.id}-{voice.key}-{steps}.wav"
        if path.is_file():
            return path
        request = SynthesisRequest(
            text=design_prefix(voice.description, None) + DESIGN_CLIP_TEXT,
            max_length=steps,
            seed=voice.seed,
        )
        chunks = [chunk async for chunk in self.engine.generate(request)]
        audio = np.concatenate(chunks)
        rate = self.engine.info.sample_rate
        await asyncio.to_thread(atomic_write, path, encode(audio, rate, "wav", rate))
        log.info(
            "designed voice %s: reference clip of %.1fs stored",
            voice.id,
            len(audio) / self.engine.info.sample_rate,
        )
        return path

    # -- uploads ----------------------------------------------------------------------------------

    async def read_upload(self, data: bytes, transcript: str | None, param: str) -> Upload:
        """Validate an uploaded recording: decodable, 1-30 s; mixed to mono and resampled to 16 kHz."""
        self._scratch.mkdir(parents=True, exist_ok=True)
        fd, raw = tempfile.mkstemp(prefix="upload-", dir=self._scratch)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            samples = await asyncio.to_thread(decode_file, raw, ENCODER_RATE, MAX_SECONDS)
        except AudioDecodeError:
            raise VoiceError(
                f"'{param}' is not audio that can be decoded.", param=param, code="invalid_audio"
            ) from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(raw)
        seconds = len(samples) / ENCODER_RATE
        if seconds < MIN_SECONDS or seconds > MAX_SECONDS:
            raise VoiceError(
                f"'{param}' is {seconds:.2f}s long; "
                f"recordings must last {MIN_SECONDS:.0f} to {MAX_SECONDS:.0f}s.",
                param=param,
                code="invalid_audio_duration",
            )
        return Upload(samples, _content_key(samples.tobytes(), transcript))

    async def adhoc_prompt(self, upload: Upload, transcript: str | None) -> VoicePrompt:
        """Encode an upload for one request; nothing is kept on disk."""
        fd, path = tempfile.mkstemp(prefix="adhoc-", suffix=".wav", dir=self._scratch)
        os.close(fd)
        try:
            await asyncio.to_thread(write_wav, path, upload.samples, ENCODER_RATE)
            return await self.engine.encode_voice(path, transcript, upload.key)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def _user_bytes(self) -> int:
        return sum(v.audio.stat().st_size for v in self.user.values() if v.audio and v.audio.exists())

    async def create(
        self, name: str, upload: Upload, transcript: str | None, replace_id: str | None = None
    ) -> Voice:
        """Store an uploaded recording as a user voice (opaque id), encode it, and keep it across restarts."""
        if replace_id is None and len(self.user) >= self.max_user_voices:
            raise VoiceError(
                f"The voice library is full ({self.max_user_voices} voices).", 409, code="library_full"
            )
        size = len(upload.samples) * 2 + 44
        if self._user_bytes() + size > self.max_user_bytes:
            raise VoiceError("The voice library has no room for this recording.", 409, code="library_full")
        voice_id = replace_id or f"voice_{secrets.token_hex(8)}"
        folder = self._library / voice_id
        staging = self._library / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
        staging.mkdir(parents=True)
        try:
            write_wav(str(staging / "audio.wav"), upload.samples, ENCODER_RATE)
            voice = Voice(voice_id, "uploaded", "user", upload.key, name=name, transcript=transcript,
                          audio=folder / "audio.wav", duration=upload.duration)  # fmt: skip
            meta = {"id": voice_id, "name": name, "key": upload.key, "transcript": transcript,
                    "duration": upload.duration, "created": voice.created}  # fmt: skip
            (staging / "voice.json").write_text(json.dumps(meta), encoding="utf-8")
            # Encoded before it is kept: a recording the engine cannot use never enters the library.
            prompt = await self.engine.encode_voice(str(staging / "audio.wav"), transcript, upload.key)
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(staging, folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self.user[voice_id] = voice
        self._prompts[voice.key] = prompt
        return voice

    def find_user(self, name: str) -> Voice | None:
        return next((v for v in self.user.values() if v.name == name), None)

    async def delete(self, voice_id: str) -> None:
        if voice_id in self.builtin:
            raise VoiceError(
                f"'{voice_id}' is a built-in voice and cannot be deleted.", 403, code="forbidden"
            )
        voice = self.user.pop(voice_id, None)
        if voice is None:
            raise VoiceError(f"No voice '{voice_id}'.", 404, code="voice_not_found")
        await asyncio.to_thread(shutil.rmtree, self._library / voice_id, True)
        await self._release_unused()
