"""Schemathesis fuzzing of the ingress's own OpenAPI spec (served by FastAPI at /openapi.json).

Every operation of a keys-on gateway (admin API included) is called with generated inputs
(valid and invalid: schemathesis' positive and negative modes), as the master key and as a
virtual key. The chat/completions and admin POST
operations read their body themselves, so the spec lists no body for them; the test adds doka's
request models (app/schemas.py, accounts/admin_api.py) to the fetched spec so their bodies are
fuzzed too (embeddings, messages, count_tokens and responses included). Asserted for every
response: no 5xx, `x-doka-request-id`, and every error is OpenAI's `{"error": {message, type,
param, code}}` (Anthropic's `{"type": "error", "error": {type, message}}` on /v1/messages).
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
from tests.faults_support import MASTER, deploy_app, openai_error_shape

EXAMPLES = 20
SEEN: Counter[str] = Counter()
CALLED: Counter[str] = Counter()  # "caller METHOD path" -> requests made
SKIPPED: dict[str, int] = {}  # "caller mode" -> operations schemathesis generated no case for
BAD: list[str] = []
MODEL_PATHS = {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/messages",
               "/v1/messages/count_tokens", "/v1/responses"}


def _with_bodies(spec: dict[str, Any]) -> dict[str, Any]:
    from accounts.admin_api import DeleteKeyRequest, GenerateKeyRequest, UpdateKeyRequest
    from app.anthropic_api import CountTokensRequest, MessagesRequest
    from app.responses_api import ResponsesRequest
    from app.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

    for path, model in (("/v1/chat/completions", ChatCompletionRequest), ("/v1/completions", CompletionRequest),
                        ("/v1/embeddings", EmbeddingRequest), ("/v1/messages", MessagesRequest),
                        ("/v1/messages/count_tokens", CountTokensRequest), ("/v1/responses", ResponsesRequest),
                        ("/key/generate", GenerateKeyRequest), ("/key/update", UpdateKeyRequest),
                        ("/key/delete", DeleteKeyRequest)):
        op = spec["paths"].get(path, {}).get("post")
        if op is None:
            continue
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            spec.setdefault("components", {}).setdefault("schemas", {})[name] = sub
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
    return spec


def anthropic_error_shape(body: Any) -> bool:
    return (isinstance(body, dict) and body.get("type") == "error" and isinstance(body.get("error"), dict)
            and isinstance(body["error"].get("type"), str) and isinstance(body["error"].get("message"), str)
            and bool(body["error"]["message"]))


def _check(case: Any, base_url: str, headers: dict[str, str], op: str) -> None:
    response = case.call(base_url=base_url, timeout=30, headers=headers)
    status = response.status_code
    SEEN[str(status)] += 1
    CALLED[op] += 1
    where = f"{case.method} {case.formatted_path} -> {status}"
    if status >= 500 and status not in (502, 503, 504):  # 502-504 are upstream answers, not gateway bugs
        BAD.append(where)
    assert status < 500 or status in (502, 503, 504), f"{where}: {response.text[:300]}"
    if status >= 400 and not case.formatted_path.endswith("/metrics"):
        body = response.json()
        anthropic = "/v1/messages" in case.formatted_path  # Anthropic's clients expect Anthropic's shape
        good = anthropic_error_shape(body) if anthropic else openai_error_shape(body)
        if not good:
            BAD.append(f"{where} (shape)")
        assert good, f"{where}: not an {'Anthropic' if anthropic else 'OpenAI'} error: {response.text[:300]}"
    if case.formatted_path in MODEL_PATHS:  # every model endpoint's answer carries it, errors included
        assert response.headers.get("x-doka-request-id"), f"{where}: no x-doka-request-id"


@pytest.fixture(scope="module")
def keyed(ray_cluster, mock_upstream, tmp_path_factory):
    """A keys-on gateway (the admin API answers) and a virtual key with room to spare."""
    from ray import serve

    app = deploy_app("doka-fuzz", "/fuzz", mock_upstream.port, str(tmp_path_factory.mktemp("fuzz")))
    key = app.new_key(tokens_per_day=100_000_000)
    yield app, {"master": MASTER, "virtual": key["key"]}
    serve.delete(app.name)


@pytest.mark.parametrize("mode", ["positive", "negative"])
@pytest.mark.parametrize("caller", ["master", "virtual"])
def test_no_500_and_every_error_in_openai_shape(keyed, mock, caller, mode):
    """Hypothesis drives schemathesis' strategy for every operation (no pytest plugin magic).

    Keys on, as the master key (admin operations run for real) and as a virtual key (they are
    refused). A case schemathesis cannot generate is counted, never dropped silently; every
    operation must have been called, in one mode or the other, by each caller.
    """
    from hypothesis import given
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation import GenerationMode

    app, keys = keyed
    headers = {"Authorization": f"Bearer {keys[caller]}"}
    spec = httpx.get(f"{app.url}/openapi.json", timeout=30).json()
    loaded = schemathesis.openapi.from_dict(_with_bodies(spec))
    generation = GenerationMode.POSITIVE if mode == "positive" else GenerationMode.NEGATIVE
    before = sum(SEEN.values())
    operations = [result.ok() for result in loaded.get_all_operations()]
    skipped: list[str] = []
    assert len(operations) >= 5, [f"{o.method} {o.path}" for o in operations]
    assert any(o.path.startswith("/key/") for o in operations), "the admin API is not in the spec"
    for operation in operations:
        op = f"{caller} {operation.method.upper()} {operation.path}"
        try:
            strategy = operation.as_strategy(generation_mode=generation)
        except Exception as e:  # noqa: BLE001 - an operation with nothing to negate has no negative cases
            if mode == "negative":
                skipped.append(op)
                continue
            raise AssertionError(f"{operation.method} {operation.path}: {e}") from e

        @given(case=strategy)
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                  derandomize=True, database=None)
        def run(case: Any) -> None:
            _check(case, app.url, headers, op)

        try:
            run()
        except Unsatisfiable:  # negative mode: an operation with no input has nothing to make invalid
            assert mode == "negative", f"{operation.method} {operation.path}: no cases generated"
            skipped.append(op)
    SKIPPED[f"{caller} {mode}"] = len(skipped)
    requests = sum(SEEN.values()) - before
    assert requests >= len(operations) - len(skipped), f"only {requests} requests were made"
    if mode == "negative":  # the bodies and parameters that matter must have been fuzzed
        assert not {f"{caller} POST {p}" for p in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                                                   "/v1/messages", "/v1/responses")} & set(skipped), skipped
        # runs after the positive mode of the same caller: nothing may be left never called
        never = [f"{caller} {o.method.upper()} {o.path}" for o in operations
                 if not CALLED[f"{caller} {o.method.upper()} {o.path}"]]
        assert not never, f"operations never exercised: {never}"
    if mode == "negative" and caller == "virtual":
        record(ScenarioResult(
            scenario="schemathesis fuzz of /openapi.json (keys on)",
            load=f"{EXAMPLES} examples x every operation x 2 modes x 2 callers (master key, virtual key)",
            faults="generated valid + invalid params, bodies, headers", requests=sum(SEEN.values()),
            errors=sum(v for k, v in SEEN.items() if k.startswith("5")), status_counts=dict(sorted(SEEN.items())),
            data_lost=None, passed=not BAD,
            notes=f"{len(BAD)} bad answers" + (f": {BAD[:3]}" if BAD else "") +
                  f"; cases schemathesis could not generate (operations skipped per run): {dict(SKIPPED)}"))
