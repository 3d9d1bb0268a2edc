"""The hostile tenant: a valid virtual key whose request bodies try to steer the provider call.

A keyed gateway on config/default.yaml's models (OpenAI pass-through `mock-*`, Anthropic
`mock-claude`, Gemini `mock-gemini`, Cohere `mock-command-r` via Router.acompletion,
embeddings `mock-embed`) and every endpoint (chat, completions, embeddings, responses,
messages; explicit models, `auto`, the `default` chain, the `verified` cascade; streaming and
not). Body fields naming an upstream URL (a trap listener on another port), a key, a provider,
headers or fallbacks are refused with a 400, the trap sees no connection and the mock provider
sees no request at all. The positive controls show both signals work: an operator's
`allow_client_params: [api_base]` on one model lets the same field reach the trap (with the
provider key LiteLLM adds, which is why it is off by default), and the mock's request record
shows the OpenAI parameters a tenant may send.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import anthropic
import httpx
import openai
import pytest

from tests.conftest import MockUpstream
from tests.keyed_gateway import keyed_gateway, new_key

MASTER = "sk-master-bodies"
APP = "doka-bodies-test"
PREFIX = "/bodies"
MSG = [{"role": "user", "content": "hello there"}]
OPEN_MODEL = "mock-command-r-open"  # mock-command-r with `allow_client_params: [api_base]`


# ------------------------------------------------------------------ no cluster
def test_known_parameters_come_from_the_openai_sdk():
    from openai.types.chat import completion_create_params

    from app.request_params import KNOWN

    sdk = set(completion_create_params.CompletionCreateParamsBase.__annotations__)
    assert KNOWN["chat"] == (sdk | {"stream"}) - {"metadata"}  # LiteLLM's control object stays out
    assert {"tools", "response_format", "seed", "logprobs", "stream_options", "n"} <= KNOWN["chat"]
    assert {"suffix", "echo", "best_of"} <= KNOWN["completion"]
    assert KNOWN["embedding"] == {"model", "input", "encoding_format", "dimensions", "user"}
    for steering in ("api_base", "base_url", "api_key", "custom_llm_provider", "extra_headers", "extra_body",
                     "fallbacks", "num_retries", "mock_response", "headers"):
        assert all(steering not in known for known in KNOWN.values()), steering


def test_refusal_names_every_field_and_the_operator_switch():
    from app.errors import OpenAIError
    from app.request_params import provider_body, refuse_unknown

    body = {"model": "m", "messages": [], "seed": 1, "doka": {}, "api_base": "http://x", "zz_custom": 1}
    with pytest.raises(OpenAIError) as e:
        refuse_unknown("chat", body)
    assert e.value.status == 400 and e.value.param == "api_base" and e.value.code == "unknown_parameter"
    assert "api_base, zz_custom" in e.value.message and "allow_client_params" in e.value.message
    refuse_unknown("chat", body, extra=("api_base", "zz_custom"))  # allowed by the operator: no error
    assert provider_body("chat", body) == {"model": "m", "messages": [], "seed": 1}
    assert provider_body("chat", body, ("api_base",))["api_base"] == "http://x"


def test_allow_client_params_is_off_by_default_and_validated():
    from app.config import ConfigError, load_config, parse_config
    from tests.conftest import DEFAULT_CONFIG

    assert all(m.model_info.allow_client_params == [] for m in load_config(DEFAULT_CONFIG).model_list)
    raw = {"model_list": [{"model_name": "x", "litellm_params": {"model": "openai/x"},
                           "model_info": {"allow_client_params": ["api_base", "doka"]}}]}
    with pytest.raises(ConfigError, match="allow_client_params"):
        parse_config(raw)


# ------------------------------------------------------------------ through a keyed gateway
class Trap:
    """A plain HTTP server on another 127.0.0.1 port that records every connection and request."""

    def __init__(self) -> None:
        trap = self
        self.connections: list[tuple[str, int]] = []
        self.requests: list[dict[str, Any]] = []

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                size = int(self.headers.get("content-length") or 0)
                trap.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                      "body": self.rfile.read(size).decode(errors="replace")})
                payload = b'{"error": {"message": "trap", "type": "authentication_error"}}'
                self.send_response(401)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = _any

            def log_message(self, *args: Any) -> None:
                return None

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self):  # every accepted connection, whether or not it sends a request
                sock, addr = super().get_request()
                trap.connections.append(addr)
                return sock, addr

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def clear(self) -> None:
        self.connections.clear()
        self.requests.clear()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def trap() -> Iterator[Trap]:
    t = Trap()
    yield t
    t.stop()


@pytest.fixture(scope="module")
def gw(ray_cluster, mock_upstream: MockUpstream, tmp_path_factory):
    def edit(raw: dict) -> None:
        cohere = next(m for m in raw["model_list"] if m["model_name"] == "mock-command-r")
        raw["model_list"].append({"model_name": OPEN_MODEL, "litellm_params": dict(cohere["litellm_params"]),
                                  "model_info": {**cohere["model_info"], "allow_client_params": ["api_base"]}})

    yield from keyed_gateway(mock_upstream, tmp_path_factory.mktemp("bodies"), app=APP, prefix=PREFIX,
                             master=MASTER, edit=edit)


@pytest.fixture(scope="module")
def key(gw) -> dict:
    return new_key(gw)


def mock_requests(gw) -> list[dict]:
    return httpx.get(f"{gw.mock.url}/_mock/requests", timeout=5).json()["requests"]


@pytest.fixture()
def clean(gw, trap):
    httpx.delete(f"{gw.mock.url}/_mock/requests", timeout=5)
    trap.clear()
    yield
    trap.clear()


def hostile_fields(trap: Trap) -> dict[str, Any]:
    """One body field per way a LiteLLM call can be steered: URL, key, provider, headers, fallbacks, ..."""
    return {
        "api_base": trap.url, "base_url": trap.url, "api_key": "sk-hostile-key",
        "custom_llm_provider": "openai", "headers": {"x-hostile": "1"}, "extra_headers": {"x-hostile": "1"},
        "extra_body": {"api_base": trap.url}, "fallbacks": ["mock-gpt-4"], "num_retries": 3,
        "mock_response": "pwned", "metadata": {"hostile": "1"}, "api_version": "hostile",
    }


def oai(gw, key: dict) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key["key"], max_retries=0, timeout=30)


def _chat(client, model, stream, extra):
    return client.chat.completions.create(model=model, messages=MSG, max_tokens=8, stream=stream, extra_body=extra)


def _completion(client, model, stream, extra):
    return client.completions.create(model=model, prompt="hello there", max_tokens=8, stream=stream, extra_body=extra)


def _responses(client, model, stream, extra):
    return client.responses.create(model=model, input="hello there", max_output_tokens=16, stream=stream,
                                   extra_body=extra)


def _embedding(client, model, stream, extra):
    return client.embeddings.create(model=model, input="hello there", extra_body=extra)


CHAT_MODELS = ["mock-gpt-3.5", "mock-claude", "mock-gemini", "mock-command-r", "auto", "default", "verified"]
OPENAI_CASES = (
    [("chat", m, s) for m in CHAT_MODELS for s in (False, True)]
    + [("completion", m, s) for m in ("mock-gpt-3.5", "mock-claude", "mock-command-r", "auto", "default", "verified")
       for s in (False, True)]
    + [("responses", m, s) for m in CHAT_MODELS for s in (False, True)]
    + [("embedding", "mock-embed", False)]
)
CALLS = {"chat": _chat, "completion": _completion, "responses": _responses, "embedding": _embedding}


def assert_untouched(gw, trap: Trap) -> None:
    assert trap.connections == [] and trap.requests == [], "a body field made the gateway connect to the trap"
    assert mock_requests(gw) == [], "the provider saw a refused request"


@pytest.mark.parametrize("endpoint,model,stream", OPENAI_CASES,
                         ids=[f"{e}-{m}-{'stream' if s else 'plain'}" for e, m, s in OPENAI_CASES])
def test_steering_fields_are_refused_on_openai_endpoints(gw, key, trap, clean, endpoint, model, stream):
    client = oai(gw, key)
    for name, value in hostile_fields(trap).items():
        if endpoint == "responses" and name == "metadata":
            continue  # the Responses API's own `metadata`: echoed in the response, never sent upstream
        with pytest.raises(openai.BadRequestError) as e:
            CALLS[endpoint](client, model, stream, {name: value})
        err = e.value.body
        assert e.value.status_code == 400 and err["code"] == "unknown_parameter", (name, err)
        assert name in err["message"] and err["param"] == name and err["type"] == "invalid_request_error"
    assert_untouched(gw, trap)


MESSAGES_CASES = [(m, s) for m in ("mock-claude", "mock-gpt-3.5", "mock-gemini", "mock-command-r", "auto",
                                    "default", "verified") for s in (False, True)]


@pytest.mark.parametrize("model,stream", MESSAGES_CASES,
                         ids=[f"{m}-{'stream' if s else 'plain'}" for m, s in MESSAGES_CASES])
def test_steering_fields_never_leave_the_messages_endpoint(gw, key, trap, clean, model, stream):
    client = anthropic.Anthropic(base_url=gw.url, api_key=key["key"], max_retries=0, timeout=30)
    for name, value in hostile_fields(trap).items():
        if name in ("metadata", "fallbacks"):
            # Anthropic's own fields (`metadata` {user_id}; the beta `fallbacks`): accepted as the
            # Messages API takes them, never translated; `assert_untouched` below sees them go nowhere
            continue
        with pytest.raises(anthropic.APIStatusError) as e:
            client.messages.create(model=model, max_tokens=8, messages=MSG, stream=stream, extra_body={name: value})
        assert 400 <= e.value.status_code < 500, (name, e.value)
        assert e.value.body["type"] == "error", e.value.body  # Anthropic's error shape
    assert_untouched(gw, trap)


def test_every_unknown_field_is_named_in_one_400(gw, key, trap, clean):
    """Raw HTTP (no SDK in between): several fields at once, nested ones too, one clear refusal."""
    body = {"model": "mock-command-r", "messages": MSG, "seed": 1, **hostile_fields(trap)}
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key['key']}"},
                   timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "unknown_parameter" and err["type"] == "invalid_request_error"
    for name in hostile_fields(trap):
        assert name in err["message"]
    assert "seed" not in err["message"] and "allow_client_params" in err["message"]
    assert r.headers["x-doka-request-id"]
    assert_untouched(gw, trap)


def test_openai_parameters_still_reach_each_provider_kind(gw, key, trap, clean):
    """The signal the refusals are read on: the mock records what a provider was sent, and
    OpenAI's own parameters (extra_body included) still arrive."""
    client = oai(gw, key)
    r = client.chat.completions.create(model="mock-gpt-3.5", messages=MSG, max_tokens=8, seed=7, user="tenant-a",
                                       extra_body={"logit_bias": {"50256": -100}})
    assert r.choices[0].message.content
    for model in ("mock-claude", "mock-gemini", "mock-command-r"):
        assert client.chat.completions.create(model=model, messages=MSG, max_tokens=8, temperature=0.5,
                                              stop=["zz"]).choices[0].message.content
    assert client.embeddings.create(model="mock-embed", input="x", dimensions=8).data
    seen = mock_requests(gw)
    paths = [s["path"] for s in seen]
    assert paths[0] == "/v1/chat/completions" and seen[0]["body"]["seed"] == 7
    assert seen[0]["body"]["logit_bias"] == {"50256": -100} and seen[0]["body"]["user"] == "tenant-a"
    assert "/v1/messages" in paths and any(":generateContent" in p for p in paths) and "/v2/chat" in paths
    assert seen[0]["headers"]["authorization"] == "Bearer mock-key"  # headers are recorded too
    assert "/v1/embeddings" in paths
    assert trap.connections == []


@pytest.mark.parametrize("stream", [False, True])
def test_operator_allowed_api_base_reaches_the_trap(gw, key, trap, clean, stream):
    """Positive control: the same field on a model whose operator allowed it goes where it says
    (so the refusals above are not the trap failing to see connections)."""
    client = oai(gw, key)
    with pytest.raises(openai.APIStatusError):
        resp = _chat(client, OPEN_MODEL, stream, {"api_base": trap.url})
        for _ in resp:
            pass
    assert trap.connections and trap.requests
    assert any("mock-key" in json.dumps(r["headers"]) for r in trap.requests)  # LiteLLM adds the provider key
    # still only what the operator allowed: the other fields stay refused on that model
    with pytest.raises(openai.BadRequestError) as e:
        _chat(client, OPEN_MODEL, stream, {"api_key": "sk-hostile-key"})
    assert e.value.body["param"] == "api_key"


def test_egress_sends_only_allowed_parameters(gw, trap, clean):
    """Defence in depth, without the ingress: the egress builds each call from the allow-list,
    so a body carrying steering fields reaches neither the trap nor the provider's request."""
    import asyncio

    from deployments.egress import EgressCore

    core = EgressCore(gw.cfg, cooldown_s=0)
    hostile = hostile_fields(trap)

    async def run() -> list[Any]:
        out = []
        try:
            for model in ("mock-gpt-3.5", "mock-claude", "mock-gemini", "mock-command-r"):
                out.append(await core.call("chat", model, {"model": model, "messages": MSG, "max_tokens": 8,
                                                           **hostile}, 30))
                if model == "mock-command-r":
                    continue  # LiteLLM's Cohere stream parser and the mock's SSE disagree (not this test's subject)
                async for chunk in core.stream("chat", model, {"model": model, "messages": MSG, "max_tokens": 8,
                                                               "stream": True, **hostile}, 30):
                    out.append(chunk)
            out.append(await core.call("embedding", "mock-embed", {"model": "mock-embed", "input": "x", **hostile}, 30))
        finally:
            await core.close()
        return out

    answers = asyncio.run(run())
    assert answers and all("mock_response" not in json.dumps(a) and "pwned" not in json.dumps(a) for a in answers)
    assert trap.connections == []
    seen = mock_requests(gw)
    assert len(seen) == 8
    for s in seen:
        text = json.dumps(s)
        assert "sk-hostile-key" not in text and "x-hostile" not in text and trap.url not in text, s
        assert "fallbacks" not in json.dumps(s["body"]) and "metadata" not in json.dumps(s["body"])
