"""Voice aliases: any name pointing at any voice, set in voices.json or through the admin routes, resolved
wherever a voice is named, and cached by the voice they point at."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import soundfile as sf

from tests.test_voices import audio_file, running, tone

pytestmark = pytest.mark.timeout(600)


def _speech(voice: str, text: str = "Hello there.") -> dict:
    return {"model": "tts-1", "voice": voice, "input": text, "response_format": "wav", "stream": False}


async def _clone(http: httpx.AsyncClient, name: str) -> str:
    created = await http.post("/v1/audio/voices", data={"name": name, "consent": "true"},
                              files={"audio_sample": ("me.wav", audio_file("wav", 3.0))})  # fmt: skip
    assert created.status_code == 201, created.text
    return created.json()["id"]


async def test_an_alias_speaks_with_its_voice_everywhere_and_caches_by_it(
    tiny_model: Path, tmp_path: Path
) -> None:
    async with running(tiny_model, tmp_path / "data") as (_, http):
        clone_id = await _clone(http, "My Clone")
        unknown = await http.put("/v1/audio/voice_aliases/alloy", json={"voice": "nobody"})
        assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "voice"
        # By the library voice's name: the alias follows the voice.
        put = await http.put("/v1/audio/voice_aliases/alloy", json={"voice": "My Clone"})
        assert put.status_code == 200, put.text
        assert put.json() == {"name": "alloy", "object": "audio.voice_alias", "voice": "My Clone",
                                   "voice_id": clone_id, "source": "api"}  # fmt: skip
        listed = (await http.get("/v1/audio/voice_aliases")).json()
        assert [a["name"] for a in listed["data"]] == ["alloy"] and listed["object"] == "list"
        # One entry per name a client can use: alloy stays listed once, the clone under its id too.
        voices = (await http.get("/v1/audio/voices")).json()["voices"]
        ids = [v["id"] for v in voices]
        assert ids.count("alloy") == 1 and clone_id in ids
        # Spoken through the alias, then by the clone's id: the same cache entry (keyed by the voice).
        first = await http.post("/v1/audio/speech", json=_speech("alloy"))
        assert first.status_code == 200 and first.headers["x-cache"] == "MISS"
        by_id = await http.post("/v1/audio/speech", json=_speech(clone_id))
        assert by_id.headers["x-cache"] == "HIT" and by_id.content == first.content
        # A dialogue names it too.
        turns = [{"voice": "alloy", "input": "Hi."}, {"voice": "nova", "input": "Hello."}]
        dialogue = {"model": "tts-1", "response_format": "wav", "stream": False, "dialogue": turns}
        assert (await http.post("/v1/audio/speech", json=dialogue)).status_code == 200
        # SSE, and a speech job (its voice is checked when it is created: an unknown one is a 400).
        sse = await http.post("/v1/audio/speech", json={**_speech("alloy"), "stream_format": "sse"})
        assert sse.status_code == 200 and "speech.audio.done" in sse.text
        job = {"model": "tts-1", "input": "Hello there.", "response_format": "wav"}
        assert (await http.post("/v1/audio/speech/jobs", json={**job, "voice": "alloy"})).status_code == 202
        unknown_job = await http.post("/v1/audio/speech/jobs", json={**job, "voice": "nobody"})
        assert unknown_job.status_code == 400
    # Kept across a restart (data dir), and removable: alloy is the built-in voice again.
    async with running(tiny_model, tmp_path / "data") as (_, http):
        again = await http.post("/v1/audio/speech", json=_speech("alloy"))
        assert again.headers["x-cache"] == "HIT"
        deleted = await http.delete("/v1/audio/voice_aliases/alloy")
        assert deleted.json() == {"name": "alloy", "object": "audio.voice_alias.deleted", "deleted": True}
        assert (await http.delete("/v1/audio/voice_aliases/alloy")).status_code == 404
        designed = await http.post("/v1/audio/speech", json=_speech("alloy"))
        assert designed.headers["x-cache"] == "MISS" and designed.content != again.content


async def test_aliases_need_the_admin_key_or_loopback(tiny_model: Path, tmp_path: Path) -> None:
    async with running(tiny_model, tmp_path / "a", client=("10.1.2.3", 5000)) as (_, http):
        for method, body in (("GET", None), ("PUT", {"voice": "nova"}), ("DELETE", None)):
            path = "/v1/audio/voice_aliases" if method == "GET" else "/v1/audio/voice_aliases/x"
            refused = await http.request(method, path, json=body)
            assert refused.status_code == 403, (method, refused.text)
    async with running(tiny_model, tmp_path / "b", client=("10.1.2.3", 5000), admin_api_key="adm") as (
        _,
        http,
    ):
        put = await http.put("/v1/audio/voice_aliases/x", json={"voice": "nova"},
                             headers={"Authorization": "Bearer adm"})  # fmt: skip
        assert put.status_code == 200 and put.json()["voice_id"] == "nova"
        wrong = await http.get("/v1/audio/voice_aliases", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code in (401, 403)


async def test_aliases_from_voices_json(tiny_model: Path, tmp_path: Path) -> None:
    root = tmp_path / "voices"
    root.mkdir()
    sf.write(root / "ann.wav", tone(2.0, 16000), 16000)
    path = tmp_path / "voices.json"
    path.write_text(json.dumps({
        "voices": [{"id": "alloy", "description": "calm", "seed": 1}, {"id": "ann", "wav": "ann.wav"}],
        "aliases": {"narrator": "ann"},
    }))  # fmt: skip
    async with running(tiny_model, tmp_path / "data", voices_file=path, voices_dir=root) as (_, http):
        by_alias = await http.post("/v1/audio/speech", json=_speech("narrator"))
        assert by_alias.status_code == 200 and by_alias.headers["x-cache"] == "MISS"
        assert (await http.post("/v1/audio/speech", json=_speech("ann"))).headers["x-cache"] == "HIT"
        listed = (await http.get("/v1/audio/voice_aliases")).json()["data"]
        expected = {"name": "narrator", "object": "audio.voice_alias", "voice": "ann", "voice_id": "ann"}
        assert listed == [{**expected, "source": "file"}]
        refused = await http.delete("/v1/audio/voice_aliases/narrator")
        assert refused.status_code == 403
