"""Pronunciation dictionaries through a real `voxport serve` on the tiny checkpoint: managed by the admin
routes (JSON entries or a W3C PLS document), scoped by voice and language, named by a request: a
dictionary changes what the engine reads (its `usage.input_tokens`) and the cache key only where its
scope applies."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from tests.conftest import ServerProcess

PATH = "/v1/audio/pronunciation_dictionaries"
PLS = """<?xml version="1.0" encoding="UTF-8"?>
<lexicon version="1.0" xmlns="http://www.w3.org/2005/01/pronunciation-lexicon" alphabet="ipa" xml:lang="en">
  <lexeme><grapheme>nginx</grapheme><grapheme>NGINX</grapheme><alias>engine x</alias></lexeme>
  <lexeme><grapheme>SQL</grapheme><phoneme alphabet="x-respell">sequel</phoneme></lexeme>
  <lexeme><grapheme>tomato</grapheme><phoneme>təˈmɑːtoʊ</phoneme></lexeme>
</lexicon>"""


@pytest.fixture(scope="module")
def api(server: ServerProcess):
    with httpx.Client(base_url=server.base_url, timeout=300) as client:
        yield client


def _sse(api: httpx.Client, body: dict) -> tuple[dict, str, list[dict]]:
    body = {"model": "tts-1", "response_format": "wav", "seed": 1, "stream_format": "sse", **body}
    with api.stream("POST", "/v1/audio/speech", json=body) as response:
        assert response.status_code == 200, response.read()
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
        cache = response.headers["x-cache"]
    assert events[-1]["type"] == "speech.audio.done", events[-1]
    return events[-1]["usage"], cache, events


def test_voice_scoped_entries_change_tokens_and_the_cache_only_where_they_apply(api: httpx.Client) -> None:
    word = f"zq{uuid.uuid4().hex[:6]}"  # a word no earlier request of this server spoke
    alloy = {"scope": "voice", "voice": "alloy", "entries": {word: "engine ex, the web server everyone runs"}}
    echo = {"scope": "voice", "voice": "echo", "entries": {word: "N G I N X"}}
    german = {"scope": "language", "language": "de", "entries": {word: "ein ganz anderes Wort hier"}}
    for name, body in (("alloy-terms", alloy), ("echo-terms", echo), ("de-terms", german)):
        assert api.put(f"{PATH}/{name}", json=body).status_code == 200
    text = f"Please restart {word} now."
    named = ["alloy-terms", "echo-terms", "de-terms"]
    tokens = {}
    for voice in ("alloy", "echo", "nova"):
        base, cache, _ = _sse(api, {"voice": voice, "input": text})
        assert cache == "MISS"
        used, cache, _ = _sse(api, {"voice": voice, "input": text, "pronunciation_dictionaries": named})
        tokens[voice] = (base["input_tokens"], used["input_tokens"], cache)
    assert tokens["alloy"][1] != tokens["alloy"][0] and tokens["alloy"][2] == "MISS"
    assert tokens["echo"][1] != tokens["echo"][0] and tokens["echo"][2] == "MISS"
    assert tokens["alloy"][1] != tokens["echo"][1]
    # nova: no dictionary applies (the German one neither: the request is not in German).
    assert tokens["nova"][1] == tokens["nova"][0] and tokens["nova"][2] == "HIT"
    # A dialogue: each turn gets its own voice's entries.
    turns = [{"voice": "alloy", "input": text}, {"voice": "nova", "input": text}]
    _, _, events = _sse(api, {"dialogue": turns, "timestamps": True, "pronunciation_dictionaries": named})
    said = [e["text"] for e in events if e["type"] == "speech.audio.segment"]
    assert said == [text.replace(word, alloy["entries"][word]), text]
    # Replacing a dictionary changes its content hash, so the key: a miss again.
    alloy["entries"][word] = "engine x"
    assert api.put(f"{PATH}/alloy-terms", json=alloy).status_code == 200
    again, cache, _ = _sse(api, {"voice": "alloy", "input": text, "pronunciation_dictionaries": named})
    assert cache == "MISS" and again["input_tokens"] != tokens["alloy"][1]


def test_a_pls_document_becomes_a_dictionary_and_is_managed(api: httpx.Client) -> None:
    response = api.put(f"{PATH}/web-terms", json={"pls": PLS})
    assert response.status_code == 200, response.text
    made = response.json()
    assert made["entries"] == {"nginx": "engine x", "NGINX": "engine x", "SQL": "sequel"}
    assert made["skipped"] == ["tomato"] and made["scope"] == "global" and len(made["content_hash"]) == 32
    assert api.get(f"{PATH}/web-terms").json() == made
    assert "web-terms" in [d["name"] for d in api.get(PATH).json()["data"]]
    _, _, events = _sse(api, {"voice": "alloy", "input": "Our SQL runs on nginx.", "timestamps": True,
                              "pronunciation_dictionaries": ["web-terms"]})  # fmt: skip
    assert [e["text"] for e in events if e["type"] == "speech.audio.segment"] == [
        "Our sequel runs on engine x."
    ]
    assert api.delete(f"{PATH}/web-terms").json() == {
        "object": "pronunciation_dictionary.deleted", "name": "web-terms", "deleted": True,
    }  # fmt: skip
    assert api.get(f"{PATH}/web-terms").status_code == 404
    missing = api.post("/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": "Hi.",
                                                 "pronunciation_dictionaries": ["web-terms"]})  # fmt: skip
    assert missing.status_code == 400
    assert missing.json()["error"]["param"] == "pronunciation_dictionaries[0]"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"pls": '<!DOCTYPE l [<!ENTITY a "b">]><lexicon>&a;</lexicon>'}, "pls"),
        ({"pls": "<lexicon><lexeme></lexicon>"}, "pls"),
        ({"entries": {"a": "b"}, "pls": "<lexicon/>"}, "entries"),
        ({"scope": "voice", "entries": {"a": "b"}}, "voice"),
        ({"scope": "language", "language": "english", "entries": {"a": "b"}}, "language"),
        ({"entries": {" a": "b"}}, "entries"),
    ],
)
def test_bad_dictionaries_name_the_field(api: httpx.Client, body: dict, param: str) -> None:
    response = api.put(f"{PATH}/bad", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_a_request_names_at_most_three(api: httpx.Client) -> None:
    body = {
        "model": "tts-1",
        "voice": "alloy",
        "input": "Hi.",
        "pronunciation_dictionaries": ["a", "b", "c", "d"],
    }
    response = api.post("/v1/audio/speech", json=body)
    assert response.status_code == 400 and response.json()["error"]["param"] == "pronunciation_dictionaries"
    assert api.put(f"{PATH}/bad name", json={"entries": {"a": "b"}}).status_code == 400
