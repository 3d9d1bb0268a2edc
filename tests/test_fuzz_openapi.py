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


@pytest.fixture(scope="module")
def ingress_spec(gateway):
    spec = httpx.get(f"{gateway.url}/openapi.json", timeout=30).json()
    loaded = schemathesis.openapi.from_dict(_with_bodies(spec))
    loaded.config.base_url = gateway.url
    yield loaded
    record(ScenarioResult(
        scenario="schemathesis fuzz of /openapi.json", load=f"{EXAMPLES} examples x every operation",
        faults="generated valid + invalid params, bodies, headers", requests=sum(SEEN.values()),
        errors=sum(v for k, v in SEEN.items() if k.startswith("5")), status_counts=dict(sorted(SEEN.items())),
        data_lost=None, passed=not BAD, notes=f"{len(BAD)} bad answers" + (f": {BAD[:3]}" if BAD else "")))


schema = schemathesis.pytest.from_fixture("ingress_spec")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_500_and_every_error_in_openai_shape(case, gateway):
    response = case.call(base_url=gateway.url, timeout=30)
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
