"""What each request field and parameter means, for the OpenAPI document (/docs, /redoc): filled in where a
model or a route gives no description of its own. docs/api.md, docs/jobs.md and docs/voices.md say more;
tests/test_first_contact.py fails on a request field or parameter left without one."""

from __future__ import annotations

from typing import Any

_SPEECH = {
    "model": "`voxcpm2` or an alias (`tts-1`, `tts-1-hd`, `gpt-4o-mini-tts`, ...); all run VoxCPM2.",
    "input": "The text to speak, 1 to --max-input-chars characters. Exactly one of `input` and `dialogue`.",
    "voice": 'A voice id (voices.json or the library; OpenAI\'s 13 names ship), or `{"id": ...}`. Default: '
    "the server's --default-voice.",
    "instructions": "Style direction, up to 4096 characters (VoxCPM2's parenthesised prefix).",
    "response_format": "mp3, opus, aac, flac, wav, pcm (raw s16le mono), mulaw or alaw (raw G.711, 8 kHz).",
    "input_format": "`text` (default) or `ssml`: `input` is an SSML document (the subset in docs/api.md).",
    "pronunciation_dictionaries": "Up to 3 named pronunciation dictionaries, applied over the server's "
    "lexicon where their scope applies, in the order named.",
    "speed": "Tempo, 0.25 to 4.0: duration times 1/speed, pitch kept.",
    "stream_format": "`audio`: the encoded bytes; `sse`: OpenAI's server-sent events.",
    "stream": "false: the whole file at once, with its length. Unset: the server's --stream-speech (on: "
    "streamed as generated). The /stream route always streams.",
    "cache": "false: nothing about this request is read from or written to the audio cache.",
    "cfg_value": "Classifier-free guidance scale, 0 to 10.",
    "inference_timesteps": "Diffusion steps per 0.16 s of audio, 1 to 100 (default: the server's).",
    "max_length": "Upper bound on generated steps of 0.16 s each (at most the server's --max-length).",
    "seed": "0 to 2^32-1: the same seed, text and settings give the same audio (default: the voice's).",
    "normalize": "Spell out numbers, dates and currency before synthesis.",
    "sample_rate": "Output rate in Hz, 8000 to 48000 (default 48000; pcm 24000); mp3, aac and opus take "
    "their codec's rates only.",
    "pronunciations": "Word to respelling for this request, over the server's lexicon (at most 100 entries).",
    "language": "The text's language, ISO 639-1 (`en`, `zh`, ...); any case, and a BCP 47 tag counts as "
    "its language (`en-US`, `zh-CN`). Selects the sentence rules.",
    "loudness": "Target integrated loudness in LUFS, -50 to -5 (ITU-R BS.1770); null: off.",
    "timestamps": "true: where each sentence starts and ends in the audio (JSON body, or SSE events).",
    "dialogue": "Several voices in one audio, instead of `input`: 1 to 100 turns of {voice, input, "
    "instructions}.",
    "dialogue_gap": "Seconds of silence between dialogue turns, 0 to 5 (default: --dialogue-gap-s).",
    # multipart speech: a recording sent with the request
    "custom_voice_file": "A recording to speak with (5 to 15 s is best); never cached.",
    "speaker_wav": "The same as `custom_voice_file`.",
    "prompt_text": "The recording's transcript (optional; improves the cloned voice).",
    # jobs and batches
    "webhook_url": "An http(s) URL that receives a signed POST when the job (or batch) finishes.",
    "metadata": "Your labels: at most 16 keys of at most 64 characters, values at most 512.",
    "requests": "The speech bodies of the batch's jobs, each as POST /v1/audio/speech/jobs takes it.",
    # cancel, voices, consents
    "request_id": "The X-Request-Id of the request in flight to cancel.",
    "name": "A display name, 1 to 100 characters.",
    "voice_name": "The new voice's name, 1 to 100 characters.",
    "prompt_wav_path": "The recording, relative to the server's --allowed-prompt-dir.",
    "replace": "true: replace a voice of that name (keeping its id) instead of answering 409.",
    "id": "A voice id.",
}
_BY_MODEL = {
    ("DialogueTurn", "voice"): "This turn's voice: an id, as `voice` takes (not an upload).",
    ("DialogueTurn", "input"): "This turn's text.",
    ("DialogueTurn", "instructions"): "This turn's style; else the request's `instructions`.",
    ("VoiceFromPathParams", "prompt_text"): "The recording's transcript.",
    ("PronunciationDictionaryParams", "scope"): "`global`, `language` (with `language`) or `voice` (with "
    "`voice`): which requests the dictionary applies to.",
    ("PronunciationDictionaryParams", "language"): "With scope `language`: the requests in that language.",
    ("PronunciationDictionaryParams", "voice"): "With scope `voice`: the text that voice speaks.",
    ("PronunciationDictionaryParams", "entries"): "Word to respelling, as `pronunciations` (or give `pls`).",
    ("PronunciationDictionaryParams", "pls"): "A W3C PLS lexicon document (alias lexemes are taken).",
}
_PARAMETERS = {
    "job_id": "A job's id (`speechjob_...`), as POST /v1/audio/speech/jobs answered it.",
    "batch_id": "A batch's id, as POST /v1/audio/speech/batches answered it.",
    "consent_id": "A consent's id (`cons_...`).",
    "voice_id": "A library voice's id.",
    "model_id": "A model id, as /v1/models lists them.",
    "limit": "At most this many items in the page, 1 to 100.",
    "name": "The voice alias's, or the pronunciation dictionary's, name.",
    "after": "The last id of the previous page: the page starts after it.",
}


def describe(schema: dict[str, Any]) -> None:
    """Give every request field and parameter of the document a description, where it has none."""
    components = schema.get("components", {}).get("schemas", {})
    for name, component in components.items():
        _fill(name, component)
    for operations in schema["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if not parameter.get("description") and parameter["name"] in _PARAMETERS:
                    parameter["description"] = _PARAMETERS[parameter["name"]]
            for content in operation.get("requestBody", {}).get("content", {}).values():
                if "properties" in content.get("schema", {}):
                    _fill("", content["schema"])


def _fill(model: str, schema: dict[str, Any]) -> None:
    for field, prop in schema.get("properties", {}).items():
        text = _BY_MODEL.get((model, field)) or _SPEECH.get(field)
        if not prop.get("description") and text:
            prop["description"] = text
