"""The speech WebSocket end to end: a real `voxport serve` on the tiny checkpoint, driven by the
`websockets` client library, as a voice agent drives it."""

from __future__ import annotations

import asyncio
import base64
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import TEST_MAX_LENGTH, TEST_WORKERS, ServerProcess
from tests.test_telephony import assert_same_speech, decode_g711

KEY = "socket-test-key"
IDLE_S = 4
TEXT = "Hello there, my friend. How are you today? I hope well."
SENTENCES = ["Hello there, my friend.", "How are you today?", "I hope well."]
WAIT = 180  # seconds: a bound for slow shared machines, never a timing assertion


@pytest.fixture(scope="module")
def live_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("live-data")
    proc = ServerProcess(
        ["--model", str(tiny_model), "--data-dir", str(data), "--max-length", str(TEST_MAX_LENGTH),
         "--design-clip-seconds", "1", "--api-keys", KEY, "--ws-max-contexts", "2",
         "--ws-idle-timeout-s", str(IDLE_S), "--workers", TEST_WORKERS]
    )  # fmt: skip
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


def _url(server: ServerProcess) -> str:
    return f"ws://127.0.0.1:{server.port}/v1/audio/speech/ws"


def connect(server: ServerProcess, **kwargs):
    headers = {"Authorization": f"Bearer {KEY}"}
    return websockets.connect(_url(server), additional_headers=headers, max_size=None, **kwargs)


@dataclass
class Context:
    audio: bytes = b""
    events: list[dict] = field(default_factory=list)

    @property
    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]


async def send(ws, **message) -> None:
    await ws.send(json.dumps(message))


async def read(ws, contexts: dict[str, Context], until: set[str]) -> list[dict]:
    """Read events into `contexts` until every context in `until` has ended (done, cancelled, error)."""
    order: list[dict] = []
    ended: set[str] = set()
    while not until <= ended:
        event = json.loads(await recv(ws))
        order.append(event)
        context = contexts.setdefault(event["context_id"], Context())
        context.events.append(event)
        if event["type"] == "audio":
            context.audio += base64.b64decode(event["audio"])
        if event["type"] in ("done", "cancelled", "error"):
            ended.add(event["context_id"])
    return order


async def recv(ws) -> str:
    return await asyncio.wait_for(ws.recv(), WAIT)


OPTIONS = {"voice": "alloy", "response_format": "pcm", "seed": 11, "max_buffer_delay_ms": 60000}


async def test_dribbled_text_gives_the_same_audio_as_one_message(live_server: ServerProcess) -> None:
    contexts: dict[str, Context] = {}
    async with connect(live_server) as ws:
        await send(ws, context_id="whole", text=TEXT, **OPTIONS)
        await send(ws, context_id="whole", close=True)
        await read(ws, contexts, {"whole"})
        # The same text in pieces of 3 characters (split mid-word), a flush, then close.
        await send(ws, context_id="dribble", text=TEXT[:3], **OPTIONS)
        for start in range(3, len(TEXT), 3):
            await send(ws, context_id="dribble", text=TEXT[start : start + 3])
        await send(ws, context_id="dribble", flush=True, flush_id="f1")
        await send(ws, context_id="dribble", close=True)
        await read(ws, contexts, {"dribble"})
    whole, dribble = contexts["whole"], contexts["dribble"]
    assert whole.types[-1] == "done" and dribble.types[-1] == "done"
    assert [s["text"] for s in whole.of("segment")] == SENTENCES
    assert [s["text"] for s in dribble.of("segment")] == SENTENCES
    assert dribble.of("flushed") == [{"type": "flushed", "context_id": "dribble", "flush_id": "f1"}]
    assert dribble.types.index("flushed") > max(i for i, t in enumerate(dribble.types) if t == "segment")
    assert len(whole.audio) > 0 and dribble.audio == whole.audio
    # Segments after the first carry on from the previous one; times follow each other on the context clock.
    assert [s["continued"] for s in whole.of("segment")] == [False, True, True]
    segments = whole.of("segment")
    assert segments[0]["start"] == 0
    assert all(segments[i]["end"] == segments[i + 1]["start"] for i in range(len(segments) - 1))
    assert abs(len(whole.audio) / 2 / 24000 - segments[-1]["end"]) < 0.05
    assert whole.of("audio")[0]["sample_rate"] == 24000
    assert whole.of("done")[0]["usage"]["output_tokens"] == 3 * TEST_MAX_LENGTH


async def test_cancel_mid_segment_stops_the_context_and_frees_the_engine(live_server: ServerProcess) -> None:
    contexts: dict[str, Context] = {}
    async with connect(live_server) as ws:
        await send(ws, context_id="long", text=TEXT, **OPTIONS)
        await send(ws, context_id="long", close=True)
        while json.loads(await recv(ws))["type"] != "audio":  # the first audio of the first segment
            pass
        await send(ws, context_id="long", cancel=True)
        await read(ws, contexts, {"long"})
        long = contexts["long"]
        assert long.types[-1] == "cancelled" and "done" not in long.types
        assert not long.of("segment")  # it was stopped inside its first segment
        # The socket goes on: a new context is spoken in full.
        await send(ws, context_id="next", text="Still here.", close=True, **OPTIONS)
        await read(ws, contexts, {"next"})
        assert contexts["next"].types[-1] == "done"
    health = httpx.get(f"{live_server.base_url}/health", timeout=10).json()
    assert health["requests_in_flight"] == 0


async def test_two_interleaved_contexts_on_one_socket(live_server: ServerProcess) -> None:
    contexts: dict[str, Context] = {}
    words = {"a": "One two. Three four. Five six.", "b": "Alpha beta. Gamma delta."}
    async with connect(live_server) as ws:
        pieces = {cid: text.split(" ") for cid, text in words.items()}
        for i in range(max(len(p) for p in pieces.values())):
            for cid, parts in pieces.items():
                if i < len(parts):
                    options = OPTIONS if i == 0 else {}
                    await send(ws, context_id=cid, text=parts[i] + " ", **options)
        await send(ws, context_id="a", close=True)
        await send(ws, context_id="b", close=True)
        order = await read(ws, contexts, {"a", "b"})
    a, b = contexts["a"], contexts["b"]
    assert a.types[-1] == "done" and b.types[-1] == "done"
    assert [s["text"] for s in a.of("segment")] == ["One two.", "Three four.", "Five six."]
    assert [s["text"] for s in b.of("segment")] == ["Alpha beta.", "Gamma delta."]
    # The newer context did not wait for the older one to finish.
    first_b_audio = next(i for i, e in enumerate(order) if e["context_id"] == "b" and e["type"] == "audio")
    a_done = next(i for i, e in enumerate(order) if e["context_id"] == "a" and e["type"] == "done")
    assert first_b_audio < a_done
    for context in (a, b):
        assert abs(len(context.audio) / 2 / 24000 - context.of("segment")[-1]["end"]) < 0.05


async def test_inactive_socket_is_closed_with_4408(live_server: ServerProcess) -> None:
    async with connect(live_server) as ws:
        await send(ws, keep_alive=True)
        with pytest.raises(ConnectionClosed) as closed:
            await recv(ws)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4408
    assert "keep_alive" in closed.value.rcvd.reason


@pytest.mark.parametrize(
    "options,param",
    [({"speed": 9}, "speed"), ({"voice": "nobody"}, "voice"), ({"colour": "red"}, "colour"),
     ({"response_format": "mulaw", "sample_rate": 44100}, "sample_rate"), ({"stream": True}, "stream"),
     ({"pronunciation_dictionaries": ["nowhere"]}, "pronunciation_dictionaries[0]"),
     ({"input_format": "xml"}, "input_format")],
)  # fmt: skip
async def test_bad_options_give_a_context_error_and_the_socket_stays_up(
    live_server: ServerProcess, options: dict, param: str
) -> None:
    contexts: dict[str, Context] = {}
    async with connect(live_server) as ws:
        await send(ws, context_id="bad", text="Hello.", **options)
        await read(ws, contexts, {"bad"})
        error = contexts["bad"].of("error")[0]["error"]
        assert error["param"] == param and error["type"] == "invalid_request_error"
        assert set(error) == {"message", "type", "param", "code"}
        await send(ws, context_id="good", text="Fine.", close=True, **OPTIONS)
        await read(ws, contexts, {"good"})
        assert contexts["good"].types[-1] == "done"


async def test_auth_is_refused_without_a_key(live_server: ServerProcess) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(_url(live_server), additional_headers=headers):
                pass
        assert refused.value.response.status_code == 401
        assert json.loads(refused.value.response.body)["error"]["code"] == "invalid_api_key"
    # A browser offers the key as a subprotocol (never in the URL); only voxport.v1 is echoed.
    async with websockets.connect(_url(live_server), subprotocols=["voxport.v1", f"bearer.{KEY}"]) as ws:
        assert ws.subprotocol == "voxport.v1"
        contexts: dict[str, Context] = {}
        await send(ws, context_id="c", text="Hi.", close=True, **OPTIONS)
        await read(ws, contexts, {"c"})
        assert contexts["c"].types[-1] == "done"


async def test_the_context_cap_is_enforced_and_a_cancel_frees_a_place(live_server: ServerProcess) -> None:
    contexts: dict[str, Context] = {}
    async with connect(live_server) as ws:
        for cid in ("c1", "c2"):  # open, with text still buffered (no sentence end, a long delay)
            await send(ws, context_id=cid, text="waiting for the rest", **OPTIONS)
        await send(ws, context_id="c3", text="one too many", **OPTIONS)
        await read(ws, contexts, {"c3"})
        error = contexts["c3"].of("error")[0]["error"]
        assert (error["param"], error["code"]) == ("context_id", "too_many_contexts")
        await send(ws, context_id="c1", cancel=True)
        await read(ws, contexts, {"c1"})
        assert contexts["c1"].types == ["cancelled"]
        await send(ws, context_id="c3", text="Now there is room.", close=True, **OPTIONS)
        await send(ws, context_id="c2", cancel=True)
        await read(ws, contexts, {"c3", "c2"})
        assert contexts["c3"].types[-1] == "done"


async def test_g711_on_the_socket_decodes_at_its_stated_rate(live_server: ServerProcess) -> None:
    contexts: dict[str, Context] = {}
    options = {**OPTIONS, "sample_rate": 8000}
    async with connect(live_server) as ws:
        await send(
            ws, context_id="law", text="Press one.", close=True, **{**options, "response_format": "mulaw"}
        )
        await send(ws, context_id="pcm", text="Press one.", close=True, **options)
        await read(ws, contexts, {"law", "pcm"})
    law, pcm = contexts["law"], contexts["pcm"]
    assert law.of("audio")[0]["sample_rate"] == 8000
    reference = np.frombuffer(pcm.audio, dtype="<i2").astype(np.float32) / 32768.0
    assert_same_speech(decode_g711(law.audio, "mulaw", 8000), reference)


async def test_segments_carry_the_callers_text_and_offsets_next_to_what_was_read(
    live_server: ServerProcess,
) -> None:
    entries = {"scope": "voice", "voice": "alloy", "entries": {"nginx": "engine ex"}}
    put = httpx.put(f"{live_server.base_url}/v1/audio/pronunciation_dictionaries/socket-terms", json=entries,
                    headers={"Authorization": f"Bearer {KEY}"}, timeout=60)  # fmt: skip
    assert put.status_code == 200, put.text
    text = "  Restart nginx now, please.\n The k8s pods are fine!  Done "
    pieces = [text[i : i + 4] for i in range(0, len(text), 4)]  # cut mid-word
    respelled = {
        **OPTIONS,
        "pronunciation_dictionaries": ["socket-terms"],
        "pronunciations": {"k8s": "kates"},
    }
    contexts: dict[str, Context] = {}
    async with connect(live_server) as ws:
        for cid, options in (("plain", OPTIONS), ("respelled", respelled)):
            await send(ws, context_id=cid, text=pieces[0], **options)
            for piece in pieces[1:]:
                await send(ws, context_id=cid, text=piece)
            await send(ws, context_id=cid, close=True)
            await read(ws, contexts, {cid})
    plain, spoken = contexts["plain"].of("segment"), contexts["respelled"].of("segment")
    for segments in (plain, spoken):
        assert [s["input_text"] for s in segments] == ["Restart nginx now, please.", "The k8s pods are fine!",
                                                       "Done"]  # fmt: skip
        assert all(text[s["input_start"] : s["input_end"]] == s["input_text"] for s in segments)
    assert [s["text"] for s in plain] == [s["input_text"] for s in plain]
    assert [s["text"] for s in spoken] == [
        "Restart engine ex now, please.",
        "The kates pods are fine!",
        "Done",
    ]
    # The engine read the respelled text: more tokens.
    usage = [contexts[cid].of("done")[0]["usage"]["input_tokens"] for cid in ("plain", "respelled")]
    assert usage[1] > usage[0]


async def test_an_ssml_context_speaks_each_complete_document_through_the_ssml_mapping(
    live_server: ServerProcess,
) -> None:
    document = (
        '<speak><s>Call <say-as interpret-as="characters">AB</say-as> now.</s><break time="500ms"/>'
        '<prosody rate="200%">Then wait here.</prosody><voice name="echo">Bye now.</voice>'
        "<blink>All done.</blink></speak>"
    )
    content = "".join(ET.fromstring(document).itertext())  # what the offsets index
    contexts: dict[str, Context] = {}
    async with connect(live_server) as ws:
        options = {**OPTIONS, "input_format": "ssml"}
        await send(ws, context_id="doc", text=document[:7], **options)
        for start in range(7, len(document), 7):  # pieces that are not well-formed on their own
            await send(ws, context_id="doc", text=document[start : start + 7])
        # A complete <speak> element is spoken without a flush (the buffer delay is a minute).
        doc = contexts.setdefault("doc", Context())
        while len(doc.of("segment")) < 4:
            event = json.loads(await recv(ws))
            doc.events.append(event)
            doc.audio += base64.b64decode(event["audio"]) if event["type"] == "audio" else b""
            assert event["type"] in ("warnings", "audio", "segment"), event
        await send(ws, context_id="doc", close=True)
        await read(ws, contexts, {"doc"})
        # Malformed SSML: an error naming `text`; the context goes on and closes normally.
        await send(ws, context_id="bad", text="<speak>Hi <s>there</speak>", **options)
        await read(ws, contexts, {"bad"})
        await send(ws, context_id="bad", text='<speak><voice name="nobody">Hi.</voice><blink/></speak>')
        await read(ws, contexts, {"bad"})
        await send(ws, context_id="bad", close=True)
        await read(ws, contexts, {"bad"})
    assert doc.types[0] == "warnings" and "blink" in " ".join(doc.events[0]["warnings"])
    assert doc.types[-1] == "done"
    segments = doc.of("segment")
    assert all(content[s["input_start"] : s["input_end"]] == s["input_text"] for s in segments)
    assert [s["input_text"] for s in segments] == ["Call AB now.", "Then wait here.", "Bye now.", "All done."]
    assert segments[0]["text"] == "Call A B now."  # say-as characters
    assert abs(segments[1]["start"] - segments[0]["end"] - 0.5) < 0.02  # the <break>
    first, fast = (s["end"] - s["start"] for s in segments[:2])
    assert abs(fast - first / 2) < 0.05  # <prosody rate="200%">: the tiny model's segments are equal
    assert [s["continued"] for s in segments] == [False, True, False, False]  # a <voice> turn starts cold
    assert abs(len(doc.audio) / 2 / 24000 - segments[-1]["end"]) < 0.05
    bad = contexts["bad"]
    error = bad.of("error")[0]["error"]
    assert (error["param"], error["code"]) == ("text", "invalid_ssml") and "line 1" in error["message"]
    unknown = bad.of("error")[1]["error"]
    assert (unknown["param"], unknown["code"]) == ("text", "voice_not_found")
    assert bad.types[-1] == "done" and not bad.of("segment") and not bad.of("warnings")
