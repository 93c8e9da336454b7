"""The voice layer: built-in voices, recordings, the user library, adhoc cloning, uploads, reload."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import time
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf

from tests.audio_check import decode
from tests.conftest import STEP_SECONDS, TEST_MAX_LENGTH, make_settings
from voxport.app import create_app
from voxport.audio import encode
from voxport.config import DEFAULT_VOICES_FILE
from voxport.engine.base import EngineInputError
from voxport.files import Watched
from voxport.voices import library

OPENAI_VOICES = [
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "fable",
    "nova",
    "onyx",
    "sage",
    "shimmer",
    "verse",
    "marin",
    "cedar",
]
ENGINE_SECONDS = TEST_MAX_LENGTH * STEP_SECONDS


def tone(seconds: float, rate: int = 44100, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    mono = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    return np.stack([mono] * channels, axis=1) if channels > 1 else mono


def audio_file(fmt: str, seconds: float = 2.0, channels: int = 1) -> bytes:
    samples = tone(seconds, channels=channels)
    if fmt == "mp3":
        return encode(samples if channels == 1 else samples.mean(axis=1), 44100, "mp3", 44100)
    buffer = io.BytesIO()
    sf.write(buffer, samples, 44100, format=fmt.upper())
    return buffer.getvalue()


@pytest.fixture
def voices_dir(tmp_path: Path) -> Path:
    root = tmp_path / "assets-voices"
    (root / "standard").mkdir(parents=True)
    (root / "elite").mkdir()
    sf.write(root / "standard" / "ann.wav", tone(2.0, 16000), 16000)
    sf.write(root / "elite" / "bob.flac", tone(3.0, 24000, channels=2), 24000)
    return root


def voices_file(tmp_path: Path, entries: list[dict]) -> Path:
    path = tmp_path / "voices.json"
    path.write_text(json.dumps({"voices": entries}))
    return path


@asynccontextmanager
async def running(tiny_model: Path, data_dir: Path, client=("127.0.0.1", 40000), **overrides):
    app = create_app(make_settings(tiny_model, data_dir, **overrides))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://voxport.test", timeout=60) as http:
            yield app, http


def sdk(http: httpx.AsyncClient) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key="unused", base_url="http://voxport.test/v1", http_client=http, max_retries=0
    )


# -- built-in voices ------------------------------------------------------------------------------------


@pytest.mark.parametrize("voice", OPENAI_VOICES)
async def test_every_builtin_voice_synthesises(aclient: openai.AsyncOpenAI, voice: str) -> None:
    response = await aclient.audio.speech.create(
        model="tts-1", voice=voice, input="Hello there.", response_format="wav"
    )
    audio = decode(response.content, "wav")
    assert audio.duration == pytest.approx(ENGINE_SECONDS, abs=1e-3) and audio.rms > 1e-4


async def test_voice_lists(http: httpx.AsyncClient) -> None:
    listed = (await http.get("/v1/audio/voices")).json()["voices"]
    assert [v["id"] for v in listed] == OPENAI_VOICES
    assert all(v["name"] for v in listed)
    rich = (await http.get("/v1/voices")).json()
    alloy = next(v for v in rich["data"] if v["id"] == "alloy")
    assert isinstance(alloy.pop("created_at"), int) and alloy.pop("prompt")
    assert alloy == {"id": "alloy", "object": "audio.voice", "name": "alloy", "type": "prompt",
                     "consent": None, "kind": "designed", "source": "built-in",
                     "has_transcript": False, "duration": None, "default": True}  # fmt: skip
    assert "/" not in json.dumps(rich)  # server paths are never shown


async def test_designed_clip_is_made_once_and_reused_after_restart(
    tiny_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="voxport.voices"):
        async with running(tiny_model, tmp_path):
            pass
    # Making clips takes seconds per voice with real weights: each one is announced as it starts.
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("designing")] == [
        f"designing voice alloy (1/{len(OPENAI_VOICES)})…"
    ]
    async with running(tiny_model, tmp_path) as (app, http):
        # The default voice's clip is made before the server is ready; the others on first use.
        assert [p.name.split("-")[0] for p in (tmp_path / "voices" / "designed").glob("*.wav")] == ["alloy"]
        first = await http.post(
            "/v1/audio/speech", json={"model": "tts-1", "voice": "nova", "input": "One.", "cache": False}
        )
    (clip,) = (tmp_path / "voices" / "designed").glob("nova-*.wav")
    made = clip.stat().st_mtime_ns
    async with running(tiny_model, tmp_path) as (app, http):
        steps = app.state.speech.engine.steps_generated
        again = await http.post(
            "/v1/audio/speech", json={"model": "tts-1", "voice": "nova", "input": "One.", "cache": False}
        )
        assert app.state.speech.engine.steps_generated - steps == TEST_MAX_LENGTH  # no new clip
    assert clip.stat().st_mtime_ns == made
    assert again.content == first.content  # same voice, same seed: the same audio across restarts


async def test_recordings_from_voices_json(tiny_model: Path, tmp_path: Path, voices_dir: Path) -> None:
    path = voices_file(
        tmp_path,
        [
            {"id": "ann", "wav": "standard/ann.wav", "text": "A steady tone for two seconds."},
            {"id": "bob", "wav": "elite/bob.flac"},
            {"id": "alloy", "description": "calm", "seed": 3},
        ],
    )
    async with running(tiny_model, tmp_path / "data", voices_file=path, voices_dir=voices_dir) as (_, http):
        rich = {v["id"]: v for v in (await http.get("/v1/voices")).json()["data"]}
        assert (rich["ann"]["kind"], rich["ann"]["has_transcript"]) == ("recording", True)
        assert (rich["bob"]["kind"], rich["bob"]["has_transcript"]) == ("recording", False)
        for voice in ("ann", "bob"):
            response = await sdk(http).audio.speech.create(
                model="tts-1", voice=voice, input="Cloned.", response_format="wav"
            )
            assert decode(response.content, "wav").duration == pytest.approx(ENGINE_SECONDS, abs=1e-3)


@pytest.mark.parametrize("wav", ["../outside.wav", "/etc/hostname", "standard/../../outside.wav"])
def test_recording_paths_must_stay_inside_the_voices_dir(
    tiny_model: Path, tmp_path: Path, voices_dir: Path, wav: str
) -> None:
    (voices_dir.parent / "outside.wav").write_bytes(audio_file("wav"))
    path = voices_file(tmp_path, [{"id": "alloy", "wav": wav}])
    from voxport.voices import VoicesFileError

    with pytest.raises(VoicesFileError, match="must stay inside"):
        create_app(make_settings(tiny_model, tmp_path / "data", voices_file=path, voices_dir=voices_dir))


# -- adhoc cloning ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "transcript"), [("wav", None), ("flac", "A steady tone."), ("mp3", None), ("mp3", "Tone.")]
)
async def test_adhoc_cloning_from_an_upload(
    tiny_model: Path, tmp_path: Path, fmt: str, transcript: str | None
) -> None:
    async with running(tiny_model, tmp_path) as (_, http):
        data = {"model": "tts-1", "input": "Say it in my voice.", "response_format": "wav"}
        if transcript:
            data["prompt_text"] = transcript
        files = {"custom_voice_file": (f"me.{fmt}", audio_file(fmt, channels=2 if fmt == "flac" else 1))}
        response = await http.post("/v1/audio/speech", data=data, files=files)
        assert response.status_code == 200, response.text
        assert (response.headers["x-cache"], response.headers["x-route"]) == ("ADHOC", "ADHOC")
        assert decode(response.content, "wav").duration == pytest.approx(ENGINE_SECONDS, abs=1e-3)
        streamed = await http.post(
            "/v1/audio/speech/stream", data=data, files={"speaker_wav": files["custom_voice_file"]}
        )
        assert streamed.status_code == 200 and streamed.headers["x-cache"] == "ADHOC"
    # Used for that request only: nothing about it is on disk.
    assert not (tmp_path / "voices" / "library").exists()
    assert list((tmp_path / "tmp").iterdir()) == []
    assert not (tmp_path / "cache").exists() or not [
        p for p in (tmp_path / "cache").rglob("*") if p.is_file()
    ]


async def test_custom_voice_file_wins_over_speaker_wav(http: httpx.AsyncClient) -> None:
    files = {"custom_voice_file": ("a.wav", audio_file("wav")), "speaker_wav": ("b.txt", b"not audio")}
    response = await http.post("/v1/audio/speech", data={"model": "tts-1", "input": "Hi."}, files=files)
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("upload", "status", "code"),
    [
        (b"definitely not audio", 400, "invalid_audio"),
        ("short", 400, "invalid_audio_duration"),
        ("long", 400, "invalid_audio_duration"),
        ("huge", 413, "file_too_large"),
    ],
)
async def test_bad_uploads(tiny_model: Path, tmp_path: Path, upload, status: int, code: str) -> None:
    content = {"short": lambda: audio_file("wav", 0.5), "long": lambda: audio_file("flac", 31.0),
               "huge": lambda: audio_file("wav", 20.0)}.get(upload, lambda: upload)()  # fmt: skip
    async with running(tiny_model, tmp_path, max_upload_mb=1) as (_, http):
        for route, form in [
            ("/v1/audio/speech", {"model": "tts-1", "input": "Hi."}),
            ("/v1/audio/voices", {"name": "me", "consent": "true"}),
        ]:
            field = "custom_voice_file" if route.endswith("speech") else "audio_sample"
            response = await http.post(route, data=form, files={field: ("x.wav", content)})
            assert response.status_code == status, response.text
            error = response.json()["error"]
            assert (error["code"], error["param"]) == (code, field)
        ok = await http.post("/v1/audio/speech", json={"model": "tts-1", "input": "Still serving."})
        assert ok.status_code == 200
    assert list((tmp_path / "tmp").iterdir()) == []  # no upload left behind


async def test_multipart_fields_are_validated_like_json(http: httpx.AsyncClient) -> None:
    bad = await http.post("/v1/audio/speech", data={"model": "tts-1", "input": "Hi.", "speed": "fast"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "speed"
    orphan = await http.post(
        "/v1/audio/speech", data={"model": "tts-1", "input": "Hi.", "prompt_text": "words"}
    )
    assert orphan.status_code == 400 and orphan.json()["error"]["param"] == "prompt_text"
    form = {"model": "tts-1", "input": "Hi.", "speed": "2", "cache": "off", "response_format": "pcm"}
    good = await http.post("/v1/audio/speech", data=form)
    assert good.status_code == 200 and good.headers["x-cache"] == "BYPASS"


# -- the voice library -------------------------------------------------------------------------------------


async def test_upload_list_synthesise_restart_delete(tiny_model: Path, tmp_path: Path) -> None:
    async with running(tiny_model, tmp_path) as (_, http):
        created = await http.post(
            "/v1/audio/voices",
            data={"name": "My voice", "consent": "yes", "prompt_text": "A steady tone."},
            files={"audio_sample": ("../../evil name.wav", audio_file("wav", 3.0))},
        )
        assert created.status_code == 201, created.text
        voice = created.json()
        assert voice["id"].startswith("voice_") and voice["name"] == "My voice"
        assert (voice["kind"], voice["source"], voice["has_transcript"]) == ("uploaded", "user", True)
        assert voice["duration"] == pytest.approx(3.0, abs=0.01)
        assert voice["id"] in [v["id"] for v in (await http.get("/v1/audio/voices")).json()["voices"]]
        first = await sdk(http).audio.speech.create(
            model="tts-1", voice=voice["id"], input="Mine.", response_format="pcm", extra_body={"seed": 5}
        )
    assert not list(tmp_path.rglob("*evil*"))  # the client's file name never reaches the disk
    async with running(tiny_model, tmp_path) as (_, http):
        again = await sdk(http).audio.speech.create(
            model="tts-1",
            voice={"id": voice["id"]},
            input="Mine.",
            response_format="pcm",
            extra_body={"cache": False, "seed": 5},
        )
        assert again.content == first.content
        deleted = await http.delete(f"/v1/audio/voices/{voice['id']}")
        assert deleted.json() == {"id": voice["id"], "object": "audio.voice.deleted", "deleted": True}
        gone = await http.post(
            "/v1/audio/speech", json={"model": "tts-1", "voice": voice["id"], "input": "Mine."}
        )
        assert gone.status_code == 400 and gone.json()["error"]["code"] == "voice_not_found"
        unknown = await http.delete(f"/v1/audio/voices/{voice['id']}")
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "voice_not_found"
        assert (await http.delete("/v1/audio/voices/alloy")).status_code == 403
    async with running(tiny_model, tmp_path) as (_, http):
        assert voice["id"] not in [v["id"] for v in (await http.get("/v1/audio/voices")).json()["voices"]]


@pytest.mark.parametrize(
    ("form", "files", "param"),
    [
        ({"name": "x"}, {"audio_sample": ("a.wav", "WAV")}, "consent"),
        ({"name": "x", "consent": "false"}, {"audio_sample": ("a.wav", "WAV")}, "consent"),
        ({"consent": "true"}, {"audio_sample": ("a.wav", "WAV")}, "name"),
        ({"name": "x", "consent": "true"}, {}, "audio_sample"),
    ],
)
async def test_library_creation_needs_name_consent_and_audio(
    http: httpx.AsyncClient, form, files, param
) -> None:
    files = {k: (n, audio_file("wav")) for k, (n, _) in files.items()}
    response = await http.post("/v1/audio/voices", data=form, files=files or None)
    assert response.status_code == 400 and response.json()["error"]["param"] == param


async def test_library_caps(tiny_model: Path, tmp_path: Path) -> None:
    async with running(tiny_model, tmp_path, max_user_voices=1) as (_, http):
        form, files = {"name": "one", "consent": "true"}, {"audio_sample": ("a.wav", audio_file("wav"))}
        assert (await http.post("/v1/audio/voices", data=form, files=files)).status_code == 201
        full = await http.post("/v1/audio/voices", data={**form, "name": "two"}, files=files)
        assert full.status_code == 409 and full.json()["error"]["code"] == "library_full"


async def test_json_voice_from_an_allowed_directory(tiny_model: Path, tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "me.wav").write_bytes(audio_file("wav"))
    (tmp_path / "secret.wav").write_bytes(audio_file("wav"))
    body = {"voice_name": "me", "prompt_wav_path": "me.wav", "prompt_text": "A tone."}
    async with running(tiny_model, tmp_path / "a") as (_, http):
        assert (await http.post("/v1/voices", json=body)).status_code == 403  # off by default
    async with running(tiny_model, tmp_path / "b", allowed_prompt_dir=allowed) as (_, http):
        created = await http.post("/v1/voices", json=body)
        assert created.status_code == 201
        assert (await http.post("/v1/voices", json=body)).status_code == 409
        replaced = await http.post("/v1/voices", json={**body, "replace": True})
        assert replaced.status_code == 201 and replaced.json()["id"] == created.json()["id"]
        for escape in ("../secret.wav", str(tmp_path / "secret.wav"), "sub/../../secret.wav"):
            refused = await http.post("/v1/voices", json={**body, "prompt_wav_path": escape})
            assert refused.status_code == 403 and refused.json()["error"]["param"] == "prompt_wav_path"
        missing = await http.post("/v1/voices", json={**body, "prompt_wav_path": "nope.wav"})
        assert missing.status_code == 400


# -- reload ----------------------------------------------------------------------------------------------


async def test_reload_voices(tiny_model: Path, tmp_path: Path, voices_dir: Path) -> None:
    path = voices_file(
        tmp_path,
        [{"id": "alloy", "description": "calm", "seed": 1}, {"id": "ann", "wav": "standard/ann.wav"}],
    )
    async with running(tiny_model, tmp_path / "data", voices_file=path, voices_dir=voices_dir) as (_, http):
        path.write_text("{ broken")
        refused = await http.post("/admin/reload-voices")
        assert refused.status_code == 400 and "previous voices stay" in refused.json()["error"]["message"]
        assert (
            await http.post("/v1/audio/speech", json={"model": "tts-1", "voice": "ann", "input": "Hi."})
        ).status_code == 200
        path.write_text(json.dumps({"voices": [
            {"id": "alloy", "description": "calm", "seed": 2},
            {"id": "bob", "wav": "elite/bob.flac", "text": "A tone."},
        ]}))  # fmt: skip
        diff = (await http.post("/admin/reload-voices")).json()
        assert diff == {"added": ["bob"], "changed": ["alloy"], "removed": ["ann"], "lexicon": 0}
        gone = await http.post("/v1/audio/speech", json={"model": "tts-1", "voice": "ann", "input": "Hi."})
        assert gone.status_code == 400
        assert (
            await http.post("/v1/audio/speech", json={"model": "tts-1", "voice": "bob", "input": "Hi."})
        ).status_code == 200


def test_shipped_registry_is_all_designed_voices() -> None:
    data = json.loads(DEFAULT_VOICES_FILE.read_text())
    assert [v["id"] for v in data["voices"]] == OPENAI_VOICES


# -- OpenAI's voice API through the SDK's own methods ------------------------------------------------------


async def test_voice_consents_and_voices_through_the_sdk(tiny_model: Path, tmp_path: Path) -> None:
    async with running(tiny_model, tmp_path) as (_, http):
        client = sdk(http)
        consent = await client.audio.voice_consents.create(
            recording=("consent.wav", audio_file("wav")), language="en-US", name="Ann agrees"
        )
        assert consent.id.startswith("cons_") and consent.object == "audio.voice_consent"
        assert (consent.name, consent.language) == ("Ann agrees", "en-US")
        assert abs(consent.created_at - time.time()) < 60
        assert await client.audio.voice_consents.retrieve(consent.id) == consent
        renamed = await client.audio.voice_consents.update(consent.id, name="Ann, 2026")
        assert (renamed.id, renamed.name, renamed.language) == (consent.id, "Ann, 2026", "en-US")

        voice = await client.audio.voices.create(
            audio_sample=("ann.wav", audio_file("wav", 3.0)), consent=consent.id, name="Ann"
        )
        assert voice.id.startswith("voice_") and voice.name == "Ann"
        assert (voice.object, voice.type, voice.prompt) == ("audio.voice", "audio_sample", None)
        assert abs(voice.created_at - time.time()) < 60
        assert voice.model_extra["consent"] == consent.id  # voxport's own field, beside OpenAI's
        spoken = await client.audio.speech.create(
            model="tts-1", voice=voice.id, input="Hi.", response_format="wav"
        )
        assert decode(spoken.content, "wav").duration == pytest.approx(ENGINE_SECONDS, abs=1e-3)

        with pytest.raises(openai.BadRequestError) as unknown:
            await client.audio.voices.create(
                audio_sample=("ann.wav", audio_file("wav")), consent="cons_0000", name="Other"
            )
        assert (unknown.value.body["param"], unknown.value.body["code"]) == ("consent", "consent_not_found")
    async with running(tiny_model, tmp_path) as (_, http):  # both are kept across restarts
        client = sdk(http)
        assert (await client.audio.voice_consents.retrieve(consent.id)).name == "Ann, 2026"
        kept = next(v for v in (await http.get("/v1/voices")).json()["data"] if v["id"] == voice.id)
        assert (kept["consent"], kept["created_at"]) == (consent.id, voice.created_at)
        deleted = await client.audio.voices.delete(voice.id)
        assert (deleted.id, deleted.deleted, deleted.object) == (voice.id, True, "audio.voice.deleted")
        with pytest.raises(openai.NotFoundError):
            await client.audio.voices.delete(voice.id)
        gone = await client.audio.voice_consents.delete(consent.id)
        assert (gone.id, gone.deleted, gone.object) == (consent.id, True, "audio.voice_consent")
        with pytest.raises(openai.NotFoundError) as missing:
            await client.audio.voice_consents.retrieve(consent.id)
        assert missing.value.body["code"] == "consent_not_found"
    assert not list((tmp_path / "voices" / "consents").iterdir())


async def test_voice_consents_list_in_pages(tiny_model: Path, tmp_path: Path) -> None:
    async with running(tiny_model, tmp_path) as (_, http):
        client = sdk(http)
        made = [
            await client.audio.voice_consents.create(
                recording=(f"{n}.wav", audio_file("wav")), language="fr-FR", name=f"consent {n}"
            )
            for n in range(5)
        ]
        first = await client.audio.voice_consents.list(limit=2)
        assert [c.id for c in first.data] == [made[4].id, made[3].id] and first.has_more
        every = [c.id async for c in client.audio.voice_consents.list(limit=2)]  # the SDK follows `after`
        assert every == [c.id for c in reversed(made)]
        for bad, param in [
            ({"limit": 0}, "limit"),
            ({"limit": 101}, "limit"),
            ({"after": "cons_x"}, "after"),
        ]:
            refused = await http.get("/v1/audio/voice_consents", params=bad)
            assert refused.status_code == 400 and refused.json()["error"]["param"] == param


@pytest.mark.parametrize(
    ("form", "files", "param", "code"),
    [
        ({"name": "x", "language": "en"}, {}, "recording", "missing_required_parameter"),
        (
            {"name": "x", "language": "english please"},
            {"recording": ("a.wav", "WAV")},
            "language",
            "invalid_value",
        ),
        ({"language": "en"}, {"recording": ("a.wav", "WAV")}, "name", "missing_required_parameter"),
        ({"name": "x", "language": "en"}, {"recording": ("a.wav", "TEXT")}, "recording", "invalid_audio"),
    ],
)
async def test_voice_consent_needs_a_name_a_language_and_a_recording(
    http: httpx.AsyncClient, form, files, param: str, code: str
) -> None:
    files = {k: (n, audio_file("wav") if c == "WAV" else b"not audio") for k, (n, c) in files.items()}
    response = await http.post("/v1/audio/voice_consents", data=form, files=files or None)
    assert response.status_code == 400, response.text
    assert (response.json()["error"]["param"], response.json()["error"]["code"]) == (param, code)


# -- the library under concurrent uploads, and one set of checks on every route -----------------------------


@pytest.mark.parametrize("cap", [{"max_user_voices": 2}, {"max_user_voices_mb": 0.15}])  # 2 s: 62.5 KiB
async def test_concurrent_uploads_never_pass_the_caps(tiny_model: Path, tmp_path: Path, cap: dict) -> None:
    async with running(tiny_model, tmp_path, **cap) as (_, http):

        async def upload(n: int) -> httpx.Response:
            form = {"name": f"voice {n}", "consent": "true"}
            return await http.post("/v1/audio/voices", data=form, files={"audio_sample": ("a.wav", sample)})

        sample = audio_file("wav", 2.0)
        answers = await asyncio.gather(*(upload(n) for n in range(8)))
        assert sorted(r.status_code for r in answers) == [201] * 2 + [409] * 6
        assert {r.json()["error"]["code"] for r in answers if r.status_code == 409} == {"library_full"}
        assert len(list((tmp_path / "voices" / "library").iterdir())) == 2
        kept = next(r.json()["id"] for r in answers if r.status_code == 201)
        assert (await http.delete(f"/v1/audio/voices/{kept}")).status_code == 200
        assert (await upload(8)).status_code == 201  # a deleted voice gives its room back


async def test_a_failed_upload_gives_its_room_back(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(tiny_model, tmp_path, max_user_voices=1) as (app, http):
        engine = app.state.speech.voices.engine

        async def failing_encode(*_args) -> None:  # a fault: the engine refuses the recording
            raise EngineInputError("The engine cannot use this recording.", "audio_sample")

        form, files = {"name": "me", "consent": "true"}, {"audio_sample": ("a.wav", audio_file("wav"))}
        with monkeypatch.context() as patch:
            patch.setattr(engine, "encode_voice", failing_encode)
            for _ in range(3):
                assert (await http.post("/v1/audio/voices", data=form, files=files)).status_code == 400
        assert (await http.post("/v1/audio/voices", data=form, files=files)).status_code == 201


async def test_concurrent_uploads_of_one_name_keep_one(tiny_model: Path, tmp_path: Path) -> None:
    async with running(tiny_model, tmp_path) as (_, http):
        form, files = {"name": "twin", "consent": "true"}, {"audio_sample": ("a.wav", audio_file("wav"))}
        answers = await asyncio.gather(
            *(http.post("/v1/audio/voices", data=form, files=files) for _ in range(4))
        )
        assert sorted(r.status_code for r in answers) == [201, 409, 409, 409]
        assert {r.json()["error"]["code"] for r in answers if r.status_code == 409} == {"voice_exists"}


async def test_every_route_checks_the_transcript_and_the_name_alike(tiny_model: Path, tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "me.wav").write_bytes(audio_file("wav"))
    long_text = "word " * 201  # 1005 characters: over the 1000 every route allows
    sample = {"audio_sample": ("a.wav", audio_file("wav"))}
    async with running(tiny_model, tmp_path / "data", allowed_prompt_dir=allowed) as (_, http):
        text = {"prompt_text": long_text}
        too_long = [
            await http.post("/v1/audio/voices", data={"name": "a", "consent": "true", **text}, files=sample),
            await http.post("/v1/voices", json={"voice_name": "a", "prompt_wav_path": "me.wav", **text}),
            await http.post("/v1/audio/speech", data={"model": "tts-1", "input": "Hi.", **text},
                            files={"custom_voice_file": sample["audio_sample"]}),
        ]  # fmt: skip
        for response in too_long:
            assert response.status_code == 400 and response.json()["error"]["param"] == "prompt_text"
        made = await http.post("/v1/voices", json={"voice_name": "taken", "prompt_wav_path": "me.wav"})
        assert made.status_code == 201
        again = await http.post("/v1/audio/voices", data={"name": " taken ", "consent": "true"}, files=sample)
        assert again.status_code == 409
        assert (again.json()["error"]["code"], again.json()["error"]["param"]) == ("voice_exists", "name")
        json_again = await http.post("/v1/voices", json={"voice_name": "taken", "prompt_wav_path": "me.wav"})
        assert json_again.status_code == 409 and json_again.json()["error"]["param"] == "voice_name"
        unknown = await http.post("/v1/audio/voices", data={"name": "b", "consent": "true", "colour": "red"},
                                  files=sample)  # fmt: skip
        assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "unknown_parameter"


# -- what other processes on the data dir change (--workers) ------------------------------------------------


def _keep_voice(folder: Path, voice_id: str) -> None:
    """A voice kept as another worker keeps it: staged, then renamed into the library."""
    meta = {"id": voice_id, "name": voice_id, "key": voice_id, "duration": 0.5, "created": 0}
    library.commit(library.stage(folder, np.zeros(8000, np.float32), 16000, meta), folder / voice_id)


async def test_the_library_is_read_again_when_another_process_changes_it(tmp_path: Path) -> None:
    folder = tmp_path / "library"
    fresh = Watched(folder, library.reread)
    assert await fresh.fresh() == ({}, {})  # the first check reads
    assert await fresh.fresh() is None  # no library, nothing changed
    _keep_voice(folder, "voice_a")
    long_ago = time.time_ns() - 60 * 10**9
    os.utime(folder, ns=(long_ago, long_ago))
    assert set((await fresh.fresh() or ({}, {}))[0]) == {"voice_a"}
    assert await fresh.fresh() is None  # unchanged: the check is one stat
    _keep_voice(folder, "voice_b")
    assert set((await fresh.fresh() or ({}, {}))[0]) == {"voice_a", "voice_b"}
    # A change in the same mtime tick as that read (the folder's mtime is coarse): the read saw a fresh
    # mtime, so the next check reads again rather than trust it.
    tick = folder.stat().st_mtime_ns
    _keep_voice(folder, "voice_c")
    os.utime(folder, ns=(tick, tick))
    assert set((await fresh.fresh() or ({}, {}))[0]) == {"voice_a", "voice_b", "voice_c"}
