"""Property-based: Schemathesis generates requests from our OpenAPI document, valid and invalid ones, for
every operation, and sends them to a real server (the reference engine on the tiny checkpoint). No answer
may be a 5xx, and every answer must be one the document describes: its status, content type and schema.

Bounded: a fixed number of examples per operation, derandomized (the same requests every run), no
shrinking deadline. Nothing is excluded: the admin routes run too (the server is this module's own, so
clearing its cache or reloading its voices.json harms nothing)."""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import TEST_MAX_LENGTH, ServerProcess
from voxport.app import create_app
from voxport.config import Settings

MAX_EXAMPLES = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "mode": "all"},
        # The coverage phase's boundary cases are not bounded by max-examples; the explicit regression
        # tests (tests/test_strict_input.py) hold those cases instead.
        "phases": {"coverage": {"enabled": False}, "stateful": {"enabled": False}},
    }
)
sent: Counter[str] = Counter()
statuses: Counter[int] = Counter()


@pytest.fixture(scope="module")
def fuzzed_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("fuzz-data")
    allowed = tmp_path_factory.mktemp("fuzz-prompts")  # POST /v1/voices reads paths (none exist here)
    proc = ServerProcess(
        ["--model", str(tiny_model), "--data-dir", str(data), "--max-length", str(TEST_MAX_LENGTH),
         "--design-clip-seconds", "1", "--allowed-prompt-dir", str(allowed), "--max-input-chars", "200"]
    )  # fmt: skip
    try:
        proc.wait_ready()
        yield proc
    finally:
        output = proc.stop()
    assert "Traceback" not in output, output[-4000:]


def _document() -> dict:
    """The document the server serves, built in-process at collection (Schemathesis' lazy fixture loader
    does not work with this pytest); the test checks that the server serves this very document."""
    with tempfile.TemporaryDirectory() as data:
        return create_app(Settings(model="unused", engine="sim", data_dir=Path(data))).openapi()


DOCUMENT = _document()
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_no_request_gets_a_5xx_or_an_undocumented_answer(case, fuzzed_server: ServerProcess) -> None:
    response = case.call_and_validate(base_url=fuzzed_server.base_url, checks=CHECKS, timeout=60)
    sent[f"{case.method.upper()} {case.path}"] += 1
    statuses[response.status_code] += 1


def test_every_operation_was_exercised(fuzzed_server: ServerProcess) -> None:
    """Runs after the generated tests (file order): a run that sent nothing would pass vacuously."""
    assert httpx.get(f"{fuzzed_server.base_url}/openapi.json").json() == DOCUMENT
    operations = {f"{op.method.upper()} {op.path}" for op in (r.ok() for r in schema.get_all_operations())}
    total = sum(sent.values())
    print(f"schemathesis: {len(operations)} operations, {total} requests, statuses {dict(statuses)}")
    assert set(sent) == operations
    # An operation without inputs has one distinct request; each one with inputs gets its examples.
    with_inputs = {
        f"{method.upper()} {path}"
        for path, operations in DOCUMENT["paths"].items()
        for method, operation in operations.items()
        if "requestBody" in operation or operation.get("parameters")
    }
    assert len(with_inputs) >= 7
    # Issue 29's criterion by name: the batch, job, voice and consent routes ran under the strict checks.
    named = {"POST /v1/audio/speech/batches", "POST /v1/audio/speech/jobs", "GET /v1/audio/speech/jobs",
             "GET /v1/audio/speech/jobs/{job_id}/content", "HEAD /v1/audio/speech/jobs/{job_id}/content",
             "POST /v1/audio/voices", "POST /v1/voices", "POST /v1/audio/voice_consents",
             "GET /v1/audio/voice_consents", "POST /v1/audio/voice_consents/{consent_id}"}  # fmt: skip
    assert all(sent[name] >= (MAX_EXAMPLES // 2 if name in with_inputs else 1) for name in named), sent
    assert all(sent[name] >= MAX_EXAMPLES // 2 for name in with_inputs), sent
    assert statuses[200] + statuses[201] > 0  # some generated speech was synthesised
