"""Schemathesis fuzzing of the ingress's own OpenAPI spec (served by FastAPI at /openapi.json).

Every operation of the live session gateway is called with generated inputs (valid and
invalid: schemathesis' positive and negative modes). The chat/completions operations read
their body themselves, so the spec lists no body for them; the test adds doka's request
models (app/schemas.py) to the fetched spec so their bodies are fuzzed too. Asserted for every
response: no 5xx, and every error is OpenAI's `{"error": {message, type, param, code}}`.
Bounded: a fixed number of examples per operation.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from load.faults import ScenarioResult, record
from tests.faults_support import openai_error_shape

EXAMPLES = 20
SEEN: Counter[str] = Counter()
BAD: list[str] = []


def _with_bodies(spec: dict[str, Any]) -> dict[str, Any]:
    from app.schemas import ChatCompletionRequest, CompletionRequest

    for path, model in (("/v1/chat/completions", ChatCompletionRequest), ("/v1/completions", CompletionRequest)):
        op = spec["paths"].get(path, {}).get("post")
        if op is None:
            continue
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            spec.setdefault("components", {}).setdefault("schemas", {})[name] = sub
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
    return spec


def _check(case: Any, base_url: str) -> None:
    response = case.call(base_url=base_url, timeout=30)
    status = response.status_code
    SEEN[str(status)] += 1
    where = f"{case.method} {case.formatted_path} -> {status}"
    if status >= 500 and status not in (502, 503, 504):  # 502-504 are upstream answers, not gateway bugs
        BAD.append(where)
    assert status < 500 or status in (502, 503, 504), f"{where}: {response.text[:300]}"
    if status >= 400 and not case.formatted_path.endswith("/metrics"):
        body = response.json()
        if not openai_error_shape(body):
            BAD.append(f"{where} (shape)")
        assert openai_error_shape(body), f"{where}: not an OpenAI error: {response.text[:300]}"


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_500_and_every_error_in_openai_shape(gateway, mock, mode):
    """Hypothesis drives schemathesis' strategy for every operation (no pytest plugin magic)."""
    from hypothesis import given
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation import GenerationMode

    spec = httpx.get(f"{gateway.url}/openapi.json", timeout=30).json()
    loaded = schemathesis.openapi.from_dict(_with_bodies(spec))
    generation = GenerationMode.POSITIVE if mode == "positive" else GenerationMode.NEGATIVE
    before = sum(SEEN.values())
    operations = [result.ok() for result in loaded.get_all_operations()]
    skipped: list[str] = []
    assert len(operations) >= 5, [f"{o.method} {o.path}" for o in operations]
    for operation in operations:
        try:
            strategy = operation.as_strategy(generation_mode=generation)
        except Exception as e:  # noqa: BLE001 - an operation with nothing to negate has no negative cases
            if mode == "negative":
                continue
            raise AssertionError(f"{operation.method} {operation.path}: {e}") from e

        @given(case=strategy)
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                  derandomize=True, database=None)
        def run(case: Any) -> None:
            _check(case, gateway.url)

        try:
            run()
        except Unsatisfiable:  # negative mode: an operation with no input has nothing to make invalid
            assert mode == "negative", f"{operation.method} {operation.path}: no cases generated"
            skipped.append(f"{operation.method} {operation.path}")
    requests = sum(SEEN.values()) - before
    assert requests >= len(operations) - len(skipped), f"only {requests} requests were made"
    if mode == "negative":  # the bodies and parameters that matter must have been fuzzed
        assert not {"POST /v1/chat/completions", "POST /v1/completions"} & set(skipped), skipped
    if mode == "negative":
        record(ScenarioResult(
            scenario="schemathesis fuzz of /openapi.json", load=f"{EXAMPLES} examples x every operation x 2 modes",
            faults="generated valid + invalid params, bodies, headers", requests=sum(SEEN.values()),
            errors=sum(v for k, v in SEEN.items() if k.startswith("5")), status_counts=dict(sorted(SEEN.items())),
            data_lost=None, passed=not BAD, notes=f"{len(BAD)} bad answers" + (f": {BAD[:3]}" if BAD else "")))
