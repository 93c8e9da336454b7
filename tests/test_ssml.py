"""SSML input (`input_format: "ssml"`) through a real `voxport serve` on the tiny checkpoint: breaks are
silence the decoder finds and move the segment times, `<prosody rate>` shortens its segment, `<voice>`
speaks as a dialogue turn does, hostile documents are refused quickly, unknown elements are stripped and
reported, and the segment offsets slice the document's text content."""

from __future__ import annotations

import base64
import json
import time
import xml.etree.ElementTree as ET

import httpx
import pytest

from tests.audio_check import decode
from tests.conftest import STEP_SECONDS, TEST_MAX_LENGTH, ServerProcess
from tests.test_timings import _silences

TOLERANCE = 0.02  # seconds
SEGMENT = TEST_MAX_LENGTH * STEP_SECONDS  # every tiny-model segment runs to the length cap


def _post(server: ServerProcess, body: dict, **kwargs) -> httpx.Response:
    body = {"model": "tts-1", "voice": "alloy", "response_format": "wav", "seed": 5, **body}
    return httpx.post(f"{server.base_url}/v1/audio/speech", json=body, timeout=300, **kwargs)


def _timed(server: ServerProcess, ssml: str, **extra) -> tuple[dict, httpx.Response]:
    response = _post(server, {"input": ssml, "input_format": "ssml", "timestamps": True, **extra})
    assert response.status_code == 200, response.text
    return response.json(), response


def test_a_break_is_silence_in_the_audio_and_moves_the_next_segment(server: ServerProcess) -> None:
    plain, _ = _timed(server, "<speak><s>Good morning.</s><s>How are you?</s></speak>")
    paused, _ = _timed(server, '<speak><s>Good morning.</s><break time="500ms"/><s>How are you?</s></speak>')
    audio = decode(base64.b64decode(paused["audio"]), "wav")
    first, second = paused["segments"]
    assert [s["text"] for s in paused["segments"]] == ["Good morning.", "How are you?"]
    assert second["start"] - first["end"] == pytest.approx(0.5, abs=TOLERANCE)
    # The second segment moved by the break, and the whole audio grew by it.
    assert second["start"] - plain["segments"][1]["start"] == pytest.approx(0.5, abs=TOLERANCE)
    assert paused["duration"] - plain["duration"] == pytest.approx(0.5, abs=TOLERANCE)
    silences = _silences(audio.samples, audio.sample_rate, shortest=0.25)
    assert len(silences) == 1, silences
    start, end = silences[0]
    assert end - start == pytest.approx(0.5, abs=TOLERANCE)
    assert (start, end) == pytest.approx((first["end"], second["start"]), abs=TOLERANCE)
    # Without timestamps (one buffered file), the break is there too.
    response = _post(server, {"input": '<speak>One.<break time="1s"/>Two.</speak>', "input_format": "ssml"})
    assert response.status_code == 200, response.text
    whole = decode(response.content, "wav")
    assert whole.duration == pytest.approx(2 * SEGMENT + 1.0, abs=TOLERANCE)
    assert [round(e - s, 2) for s, e in _silences(whole.samples, whole.sample_rate, 0.25)] == [1.0]


def test_prosody_rate_speeds_up_its_segment(server: ServerProcess) -> None:
    ssml = '<speak><s>Normal pace.</s><s><prosody rate="150%">Faster pace.</prosody></s></speak>'
    body, _ = _timed(server, ssml)
    normal, fast = body["segments"]
    audio = decode(base64.b64decode(body["audio"]), "wav")
    assert normal["end"] - normal["start"] == pytest.approx(SEGMENT, abs=0.03)
    assert fast["end"] - fast["start"] == pytest.approx(SEGMENT / 1.5, abs=0.03)
    assert audio.duration == pytest.approx(SEGMENT + SEGMENT / 1.5, abs=0.03)
    # On top of the request's own speed: 150% of 0.5.
    body, _ = _timed(server, ssml, speed=0.5)
    normal, fast = body["segments"]
    assert fast["end"] - fast["start"] == pytest.approx(SEGMENT / 0.75, abs=0.03)


def test_voice_switches_turns_as_a_dialogue_does(server: ServerProcess) -> None:
    ssml = '<speak><voice name="alloy">Hello there.</voice><voice name="echo">Hi.</voice></speak>'
    body, _ = _timed(server, ssml)
    assert [(s["voice"], s["text"]) for s in body["segments"]] == [("alloy", "Hello there."), ("echo", "Hi.")]
    mixed, _ = _timed(server, '<speak>Hello there.<voice name="echo">Hi.</voice></speak>', voice="alloy")
    assert mixed["audio"] == body["audio"] and mixed["segments"] == body["segments"]
    turns = [{"voice": "alloy", "input": "Hello there."}, {"voice": "echo", "input": "Hi."}]
    dialogue = _post(server, {"dialogue": turns, "dialogue_gap": 0, "timestamps": True}).json()
    assert body["audio"] == dialogue["audio"]  # the same segments, voices and seed: the same audio
    one_voice, _ = _timed(server, "<speak><s>Hello there.</s><s>Hi.</s></speak>")
    assert one_voice["audio"] != body["audio"]
    unknown = _post(server, {"input": '<voice name="nobody">Hi.</voice>', "input_format": "ssml"})
    assert unknown.status_code == 400
    assert unknown.json()["error"]["param"] == "input" and "nobody" in unknown.json()["error"]["message"]


BOMB = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + "".join(
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10)
    )
    + "]><speak>&lol9;</speak>"
)
EXTERNAL = '<?xml version="1.0"?><!DOCTYPE s [<!ENTITY e SYSTEM "file:///etc/passwd">]><speak>&e;</speak>'


@pytest.mark.parametrize("document", [BOMB, EXTERNAL], ids=["entity-bomb", "external-entity"])
def test_hostile_documents_are_refused_quickly(server: ServerProcess, document: str) -> None:
    started = time.monotonic()
    response = _post(server, {"input": document, "input_format": "ssml"})
    assert time.monotonic() - started < 10  # generous: refused at the DOCTYPE, nothing expanded
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "input" and "root" not in error["message"] and "lol" not in error["message"]


def test_malformed_ssml_names_the_line_and_column(server: ServerProcess) -> None:
    response = _post(server, {"input": "<speak>\n  Hello <s>there.</p>\n</speak>", "input_format": "ssml"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "input" and "line 2, column 20" in error["message"], error
    deep = _post(server, {"input": "<s>" * 500 + "deep" + "</s>" * 500, "input_format": "ssml"})
    assert deep.status_code == 400 and "nested" in deep.json()["error"]["message"]
    for bad in ({"rate": "900%"}, {"break": "30s"}):
        text = (
            f'<prosody rate="{bad["rate"]}">a</prosody>'
            if "rate" in bad
            else f'a<break time="{bad["break"]}"/>'
        )
        response = _post(server, {"input": text, "input_format": "ssml"})
        assert response.status_code == 400 and response.json()["error"]["param"] == "input"


def test_unknown_elements_are_stripped_and_reported(server: ServerProcess) -> None:
    ssml = '<speak>Hello <foo>big</foo> <bar:x xmlns:bar="urn:b">world</bar:x>.</speak>'
    body, response = _timed(server, ssml)
    assert [s["text"] for s in body["segments"]] == ["Hello big world."]
    warnings = response.headers["x-ssml-warnings"]
    assert "<foo>" in warnings and "<x>" in warnings
    # Streamed as SSE: the first event carries the same warnings.
    with httpx.stream("POST", f"{server.base_url}/v1/audio/speech", timeout=300, json={
        "model": "tts-1", "voice": "alloy", "input": ssml, "input_format": "ssml", "stream_format": "sse",
    }) as stream:  # fmt: skip
        events = [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: ")]
    assert events[0]["type"] == "speech.warnings" and any("<foo>" in w for w in events[0]["warnings"])
    assert events[-1]["type"] == "speech.audio.done"
    # Plain SSML gets no warnings header.
    _, clean = _timed(server, "<speak>Hello.</speak>")
    assert "x-ssml-warnings" not in clean.headers


def test_say_as_sub_and_phoneme_are_read_as_text(server: ServerProcess) -> None:
    ssml = ('<speak><s>Room <say-as interpret-as="cardinal">42</say-as>, code '
            '<say-as interpret-as="characters">AB</say-as>.</s><s><sub alias="World Wide Web">WWW</sub> and '
            '<phoneme alphabet="x-respell" ph="engine x">nginx</phoneme>.</s></speak>')  # fmt: skip
    body, _ = _timed(server, ssml)
    assert [s["text"] for s in body["segments"]] == [
        "Room forty-two, code A B.",
        "World Wide Web and engine x.",
    ]
    kinds = ('<s><say-as interpret-as="ordinal">21st</say-as></s>'
             '<s><say-as interpret-as="digits">907</say-as></s>'
             '<s><say-as interpret-as="date" format="dmy">05/03/2024</say-as></s>'
             '<s><say-as interpret-as="time">14:00</say-as></s>'
             '<s><say-as interpret-as="telephone">555-0100</say-as></s>')  # fmt: skip
    body, _ = _timed(server, f"<speak>{kinds}</speak>", language="en")
    assert [s["text"] for s in body["segments"]] == [
        "twenty-first", "nine zero seven", "March fifth twenty twenty-four", "fourteen o'clock",
        "five five five, zero one zero zero",
    ]  # fmt: skip
    # Chinese: wetext's numerals; the caller's digits stay the segment's input_text.
    body, _ = _timed(server, '<speak>共<say-as interpret-as="cardinal">123</say-as>个</speak>', language="zh")
    assert [(s["text"], s["input_text"]) for s in body["segments"]] == [("共一百二十三个", "共123个")]


def test_offsets_slice_the_documents_text_content(server: ServerProcess) -> None:
    ssml = ('<speak><p>The price is <say-as interpret-as="cardinal">100</say-as> dollars.</p>\n'
            '<p>Second <emphasis>paragraph</emphasis> here.<break time="200ms"/>Third one.</p>'
            "</speak>")  # fmt: skip
    content = "".join(ET.fromstring(ssml).itertext())
    body, _ = _timed(server, ssml)
    segments = body["segments"]
    assert [s["input_text"] for s in segments] == ["The price is 100 dollars.", "Second paragraph here.",
                                                   "Third one."]  # fmt: skip
    for s in segments:
        assert content[s["input_start"] : s["input_end"]] == s["input_text"]
    assert segments[0]["text"] == "The price is one hundred dollars."
    with httpx.stream("POST", f"{server.base_url}/v1/audio/speech", timeout=300, json={
        "model": "tts-1", "voice": "alloy", "input": ssml, "input_format": "ssml", "stream_format": "sse",
        "timestamps": True,
    }) as stream:  # fmt: skip
        events = [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: ")]
    timed = [e for e in events if e["type"] == "speech.audio.segment"]
    assert [(e["input_start"], e["input_end"]) for e in timed] == [
        (s["input_start"], s["input_end"]) for s in segments
    ]


def test_offsets_slice_a_plain_input_even_where_it_was_respelled(server: ServerProcess) -> None:
    text = "  Our API runs on nginx.\n\nIt costs $100!  Really?  "
    extra = {"input": text, "pronunciations": {"nginx": "engine x"}, "timestamps": True}
    body = _post(server, extra).json()
    segments = body["segments"]
    assert [s["text"] for s in segments] == ["Our API runs on engine x.", "It costs $100!", "Really?"]
    assert [s["input_text"] for s in segments] == ["Our API runs on nginx.", "It costs $100!", "Really?"]
    for s in segments:
        assert text[s["input_start"] : s["input_end"]] == s["input_text"]
    with httpx.stream("POST", f"{server.base_url}/v1/audio/speech", timeout=300, json={
        "model": "tts-1", "voice": "alloy", "stream_format": "sse", **extra,
    }) as stream:  # fmt: skip
        events = [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: ")]
    timed = [e for e in events if e["type"] == "speech.audio.segment"]
    assert [text[e["input_start"] : e["input_end"]] for e in timed] == [s["input_text"] for s in segments]


def test_a_job_speaks_ssml_block_by_block_as_a_live_request_does(server: ServerProcess) -> None:
    ssml = '<speak>One.<break time="1s"/><voice name="echo"><prosody rate="2">Two.</prosody></voice></speak>'
    body = {"model": "tts-1", "voice": "alloy", "response_format": "wav", "seed": 5, "input": ssml,
            "input_format": "ssml"}  # fmt: skip
    with httpx.Client(base_url=server.base_url, timeout=60) as api:
        job = api.post("/v1/audio/speech/jobs", json=body).json()
        assert job.get("status") in ("queued", "running", "succeeded"), job
        deadline = time.monotonic() + 300
        while job["status"] in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.5)
            job = api.get(f"/v1/audio/speech/jobs/{job['id']}").json()
        assert job["status"] == "succeeded", job
        content = api.get(f"/v1/audio/speech/jobs/{job['id']}/content")
    audio = decode(content.content, "wav")
    assert audio.duration == pytest.approx(SEGMENT + 1.0 + SEGMENT / 2, abs=TOLERANCE)
    live = decode(_post(server, {"input": ssml, "input_format": "ssml", "stream": False}).content, "wav")
    assert len(live.samples) == len(audio.samples)
    assert float(abs(live.samples - audio.samples).max()) < 1e-3


def test_a_job_with_an_unknown_voice_in_a_later_block_is_refused_at_submission(server: ServerProcess) -> None:
    ssml = '<speak>One.<voice name="echo">Two.</voice><voice name="nobody">Three.</voice></speak>'
    body = {"model": "tts-1", "voice": "alloy", "input": ssml, "input_format": "ssml"}
    response = httpx.post(f"{server.base_url}/v1/audio/speech/jobs", json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "input" and "nobody" in response.json()["error"]["message"]
    broken = httpx.post(f"{server.base_url}/v1/audio/speech/jobs", timeout=60,
                        json={**body, "input": "<speak>One.<s>Two.</speak>"})  # fmt: skip
    assert broken.status_code == 400 and "line 1" in broken.json()["error"]["message"]
