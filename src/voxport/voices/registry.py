"""The voice registry: the catalogue's voices and the user library's, each voice's encoded prompt
(computed once, off the event loop, kept in memory by the hash of its audio and transcript), designed
voices' reference clips, uploads (validated, normalised, encoded) and the consents they are made with.
Nothing a client sends becomes a file name, and every file operation runs in a worker thread."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from pathlib import Path

from voxport.audio import encode
from voxport.dictionaries import DictionaryStore
from voxport.engine.base import Engine, VoicePrompt
from voxport.errors import VoxportError, invalid
from voxport.files import Watched
from voxport.lexicon import Lexicon, LexiconError
from voxport.protocol import VoiceUpload
from voxport.skipped import SkippedFiles
from voxport.tenants import visible
from voxport.voices import library, uploads
from voxport.voices.aliases import AliasStore, file_aliases
from voxport.voices.catalog import Voice, VoicesFileError, catalog_diff, load_voices_file
from voxport.voices.consents import Consent, ConsentStore
from voxport.voices.designed import design_clip
from voxport.voices.mirror import LibraryMirror, SharedLibrary
from voxport.voices.uploads import ENCODER_RATE, Upload, allowed_path, read_upload

log = logging.getLogger("voxport.voices")

_TRUTHY = {"1", "true", "yes", "on", "y", "t"}  # `consent` from clients older than consent ids


class VoiceRegistry:
    def __init__(self, engine: Engine, voices_file: Path, voices_dir: Path, data_dir: Path,
                 default_voice: str, max_user_voices: int = 100, max_user_bytes: int = 500 * 2**20,
                 design_clip_seconds: float = 6.0, lexicon: Lexicon | None = None,
                 shared_library: SharedLibrary | None = None):  # fmt: skip
        self.engine = engine
        self.lexicon = lexicon or Lexicon()  # re-read with voices.json: one reload for both
        self.voices_file, self.voices_dir, self.default_voice = voices_file, voices_dir, default_voice
        self.quota = library.Quota(max_user_voices, max_user_bytes)
        self.design_clip_seconds = design_clip_seconds
        self._library = data_dir / "voices" / "library"
        # Several replicas (--redis-url): the library is shared, this replica's is its mirror.
        self.mirror = LibraryMirror(shared_library, self._library) if shared_library is not None else None
        self.skipped = SkippedFiles()  # library voices and consents start-up could not read (/health)
        self.consents = ConsentStore(data_dir / "voices" / "consents", self.mirror, self.skipped)
        self.dictionaries = DictionaryStore(data_dir / "pronunciation_dictionaries")  # with the lexicon
        self._designed, self._scratch = data_dir / "voices" / "designed", data_dir / "tmp"
        self.fingerprint = ""
        self.builtin: dict[str, Voice] = {}
        self.user: dict[str, Voice] = {}
        self._prompts: dict[str, VoicePrompt] = {}
        self._encoding: dict[str, asyncio.Future[VoicePrompt]] = {}
        self.aliases = AliasStore(data_dir / "voices" / "aliases.json", self._find)
        self.loaded = False
        self._fresh = Watched(self._library, library.reread)  # what other workers on the data dir change

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
        self.aliases.file = await asyncio.to_thread(file_aliases, self.voices_file)
        await self.aliases.refresh()
        self.user = await asyncio.to_thread(library.read, self._library, self.skipped)
        self.quota.sizes = await asyncio.to_thread(library.sizes, list(self.user.values()))
        await self.consents.load()
        await self.refresh()
        await asyncio.to_thread(library.clear_scratch, self._scratch)
        for voice in [*self.builtin.values(), *self.user.values()]:
            if voice.kind == "designed":
                continue
            try:
                await self.prompt(voice)
            except Exception as exc:  # a library recording the engine cannot read: skipped, not fatal
                if voice.source != "user":
                    raise
                self.user.pop(voice.id, None)
                self.skipped.add("voice", voice.id, exc)
        # The default voice is the one most requests get: its clip is made (or read) before the server
        # is ready, so that no request waits for it. Other designed voices are made on first use.
        default = self.get(None)
        if default is not None:
            await self.prompt(default)
        self.loaded = True

    async def reload(self) -> dict[str, list[str] | int]:
        """Re-read voices.json and the lexicon file. If either is invalid, both stay as they were (an
        `invalid` error)."""
        try:
            fresh = await asyncio.to_thread(self.validate_file)
            entries = await asyncio.to_thread(self.lexicon.read)
            aliases = await asyncio.to_thread(file_aliases, self.voices_file)
        except (VoicesFileError, LexiconError) as exc:
            code = "invalid_voices_file" if isinstance(exc, VoicesFileError) else "invalid_lexicon_file"
            message = f"voices.json and the lexicon were not reloaded, the previous voices stay: {exc}"
            raise invalid(message, None, code) from None
        for voice in fresh.values():
            if voice.kind != "designed":
                await self.prompt(voice)
        diff: dict[str, list[str] | int] = {**catalog_diff(self.builtin, fresh), "lexicon": len(entries)}
        self.builtin, self.aliases.file = fresh, aliases
        self.lexicon.use(entries)
        await self.release_unused()
        return diff

    async def refresh(self) -> None:
        """Take in what other replicas (a shared library) or other workers on this data dir changed."""
        if self.mirror is not None:
            await self.mirror.refresh(self)
        elif (fresh := await self._fresh.fresh()) is not None:  # one stat, when nothing changed
            self.user, self.quota.sizes = fresh
            await self.release_unused()
        await self.aliases.refresh()

    async def release_unused(self) -> None:
        live = {v.key for v in self.all()}
        for key in [k for k in self._prompts if k not in live]:
            await self.engine.release_voice(self._prompts.pop(key))

    # -- lookup -----------------------------------------------------------------------------------

    def get(self, voice_id: str | None, viewer: str = "") -> Voice | None:
        """A voice by alias, id or library name (voices/aliases.py) that `viewer` may use (tenants)."""
        name, target = voice_id or self.default_voice, self.aliases.target(voice_id or self.default_voice)
        return (self._find(target, viewer) if target is not None else None) or self._find(name, viewer)

    def _find(self, name: str, viewer: str = "") -> Voice | None:
        user = self.user.get(name)
        if user is not None and visible(user.owner, viewer):
            return user
        found = self.builtin.get(name) or self.find_user(name, viewer)
        return found or (self.find_user(name) if viewer else None)

    def all(self, viewer: str = "") -> list[Voice]:
        return [*self.builtin.values(), *(v for v in self.user.values() if visible(v.owner, viewer))]

    def find_user(self, name: str, owner: str = "") -> Voice | None:
        """`owner`'s library voice of that name (names are per tenant)."""
        return next((v for v in self.user.values() if v.name == name and v.owner == owner), None)

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
        designed = [v.id for v in self.builtin.values() if v.kind == "designed"]
        return await design_clip(self.engine, voice, self._designed, self.design_clip_seconds, designed)

    # -- uploads ----------------------------------------------------------------------------------

    async def read_upload(self, data: bytes, transcript: str | None, param: str) -> Upload:
        """Validate an uploaded recording: decodable, 1-30 s; mixed to mono and resampled to 16 kHz."""
        return await read_upload(data, transcript, param, self._scratch)

    async def adhoc_prompt(self, upload: Upload, transcript: str | None) -> VoicePrompt:
        """Encode an upload for one request; nothing is kept on disk."""
        return await uploads.adhoc_prompt(self.engine, upload, transcript, self._scratch)

    async def add(self, name: str, upload: VoiceUpload, consent: str | None, owner: str = "") -> Voice:
        """Validate a recording and keep it as `owner`'s user voice, made with `consent`: one of its consent
        ids, or (from older clients) a truthy string."""
        consent_id = self._consent(consent, owner)
        self._check_name(name, False, "name", owner)
        recording = await self.read_upload(upload.data, upload.transcript, upload.param)
        return await self.create(name, recording, upload.transcript, consent=consent_id, owner=owner)

    def _consent(self, value: str | None, owner: str) -> str | None:
        value = (value or "").strip()
        if value.startswith("cons_"):
            return self.consents.get(value, "consent", owner).id
        if value.lower() not in _TRUTHY:
            raise invalid("'consent' must be a voice consent id (cons_...) or true: confirm you have the "
                          "speaker's permission.", "consent", "consent_required")  # fmt: skip
        return None

    def _check_name(self, name: str, replace: bool, param: str, owner: str) -> Voice | None:
        """`owner`'s user voice a new one named `name` replaces, or None; a name it has taken (or is taking
        by a creation in progress) without `replace`: `voice_exists`."""
        existing = self.find_user(name, owner)
        if self.quota.pending(f"{owner}/{name}") or (existing is not None and not replace):
            hint = '; pass "replace": true' if param == "voice_name" else ""
            raise VoxportError("conflict", f"A voice named '{name}' exists{hint}.", param=param,
                               code="voice_exists")  # fmt: skip
        return existing

    async def add_from_path(self, name: str, relative: str, transcript: str | None, replace: bool,
                            allowed_dir: Path | None, owner: str = "") -> Voice:  # fmt: skip
        """A user voice from a recording on the server, inside `allowed_dir` (unset: refused)."""
        param = "prompt_wav_path"
        path = await asyncio.to_thread(allowed_path, allowed_dir, relative, param)
        self._check_name(name, replace, "voice_name", owner)
        data = await asyncio.to_thread(path.read_bytes)
        recording = await self.read_upload(data, transcript, param)
        return await self.create(name, recording, transcript, replace=replace, name_param="voice_name",
                                 owner=owner)  # fmt: skip

    async def create(self, name: str, upload: Upload, transcript: str | None, *, consent: str | None = None,
                     replace: bool = False, name_param: str = "name", owner: str = "") -> Voice:  # fmt: skip
        """Store an uploaded recording as a user voice (opaque id), encode it, and keep it across restarts.

        The name and the library's room are reserved before anything awaits, and given back if the
        voice is not kept: concurrent creations never pass the caps or share a name."""
        await self.refresh()  # the caps count what other workers added
        existing = self._check_name(name, replace, name_param, owner)
        replacing = existing.id if existing else None
        hold = self.quota.reserve(f"{owner}/{name}", upload.wav_bytes, replacing)
        try:
            voice = await self._keep(name, upload, transcript, consent, replacing, owner)
        except BaseException:
            self.quota.release(hold)
            raise
        self.quota.release(hold, kept_as=voice.id)
        return voice

    async def _keep(self, name: str, upload: Upload, transcript: str | None, consent: str | None,
                    replace_id: str | None, owner: str) -> Voice:  # fmt: skip
        voice_id = replace_id or f"voice_{secrets.token_hex(8)}"
        folder = self._library / voice_id
        voice = Voice(voice_id, "uploaded", "user", upload.key, name=name, transcript=transcript,
                      audio=folder / "audio.wav", duration=upload.duration, consent=consent,
                      owner=owner)  # fmt: skip
        meta = {"id": voice_id, "name": name, "key": upload.key, "transcript": transcript,
                "duration": upload.duration, "created": voice.created, "consent": consent,
                "owner": owner}  # fmt: skip
        staging = await asyncio.to_thread(library.stage, self._library, upload.samples, ENCODER_RATE, meta)
        try:
            # Encoded before it is kept: a recording the engine cannot use never enters the library.
            prompt = await self.engine.encode_voice(str(staging / "audio.wav"), transcript, upload.key)
            async with self.mirror.lock if self.mirror else contextlib.nullcontext():
                if self.mirror is not None:  # shared first: a voice no other replica can see is not kept
                    await self.mirror.publish(meta, staging)
                await asyncio.to_thread(library.commit, staging, folder)
                self.user[voice_id] = voice
        except BaseException:
            await asyncio.to_thread(library.remove, staging)
            raise
        self._prompts[voice.key] = prompt
        return voice

    async def add_consent(self, name: str, language: str, upload: VoiceUpload, owner: str = "") -> Consent:
        """Keep `owner`'s consent recording (checked like any upload, stored normalised)."""
        recording = await self.read_upload(upload.data, None, upload.param)
        wav = await asyncio.to_thread(encode, recording.samples, ENCODER_RATE, "wav", ENCODER_RATE)
        return await self.consents.create(name, language, wav, owner)

    async def delete(self, voice_id: str) -> None:
        await self.refresh()  # a voice another worker added
        if voice_id in self.builtin:
            message = f"'{voice_id}' is a built-in voice and cannot be deleted."
            raise VoxportError("forbidden", message, code="forbidden")
        if voice_id not in self.user:
            raise VoxportError("not_found", f"No voice '{voice_id}'.", code="voice_not_found")
        async with self.mirror.lock if self.mirror else contextlib.nullcontext():
            if self.mirror is not None:
                await self.mirror.withdraw(voice_id)
            self.user.pop(voice_id, None)
        self.quota.sizes.pop(voice_id, None)
        await asyncio.to_thread(library.remove, self._library / voice_id)
        await self.release_unused()
