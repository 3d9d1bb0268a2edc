"""Every bad input gets its status and an OpenAI-shaped error; none gives a 500."""

from __future__ import annotations

import httpx
import pytest

MSG = [{"role": "user", "content": "hi"}]


def _post(gateway, content: bytes, path: str = "/v1/chat/completions", **kw) -> httpx.Response:
    return httpx.post(f"{gateway.url}{path}", content=content, timeout=20,
                      headers={"content-type": "application/json", **kw.pop("headers", {})}, **kw)


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert r.headers.get("x-doka-request-id"), "every doka response names its request"
    return err


@pytest.mark.parametrize("body,needle", [
    (b"{not json", "not valid JSON"),
    (b"", "empty"),
    (b"[1, 2]", "JSON object"),
    (b'{"messages": [{"role": "user", "content": "x"}]}', "'model'"),
    (b'{"model": "mock-gpt-4"}', "Missing required parameter: 'messages'"),
    (b'{"model": "mock-gpt-4", "messages": []}', "'messages'"),
    (b'{"model": "mock-gpt-4", "messages": "hello"}', "'messages'"),
    (b'{"model": "mock-gpt-4", "messages": [{"content": "x"}]}', "messages.0.role"),
    (b'{"model": "mock-gpt-4", "messages": [{"role": "wizard", "content": "x"}]}', "messages.0.role"),
    (b'{"model": "mock-gpt-4", "messages": [{"role": "user", "content": "x"}], "temperature": 9}', "temperature"),
    (b'{"model": "mock-gpt-4", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', "max_tokens"),
    (b'{"model": 42, "messages": [{"role": "user", "content": "x"}]}', "'model'"),
])
def test_bad_chat_bodies_are_400(gateway, body, needle):
    err = _error(_post(gateway, body), 400)
    assert needle in err["message"]
    assert err["type"] == "invalid_request_error"


def test_completions_without_prompt_is_400(gateway):
    err = _error(_post(gateway, b'{"model": "mock-gpt-4"}', "/v1/completions"), 400)
    assert err["param"] == "prompt"


def test_unknown_model_is_404_listing_known_names(gateway):
    err = _error(_post(gateway, b'{"model": "gpt-17", "messages": [{"role": "user", "content": "x"}]}'), 404)
    assert err["code"] == "model_not_found" and err["param"] == "model"
    for name in ("auto", "mock-gpt-4", "mock-mixtral", "default"):
        assert name in err["message"]


def test_body_over_limit_is_413_by_content_length(gateway):
    big = b'{"model": "mock-gpt-4", "messages": [{"role": "user", "content": "' + b"x" * 1_100_000 + b'"}]}'
    assert _error(_post(gateway, big), 413)["code"] == "request_too_large"


def test_body_over_limit_is_413_when_streamed_without_length(gateway):
    def chunks():
        yield b'{"model": "mock-gpt-4", "messages": [{"role": "user", "content": "'
        for _ in range(20):
            yield b"y" * 60_000
        yield b'"}]}'

    r = httpx.post(f"{gateway.url}/v1/chat/completions", content=chunks(), timeout=20,
                   headers={"content-type": "application/json"})
    assert _error(r, 413)["code"] == "request_too_large"


def test_unknown_path_and_wrong_method_are_openai_shaped(gateway):
    _error(httpx.get(f"{gateway.url}/v1/nothing-here"), 404)
    _error(httpx.get(f"{gateway.url}/v1/chat/completions"), 405)


def test_bad_cost_weight_header_is_400(gateway):
    r = httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": "auto", "messages": MSG},
                   headers={"x-doka-cost-weight": "lots"}, timeout=20)
    assert _error(r, 400)["param"] == "x-doka-cost-weight"


def test_sdk_raises_its_usual_exceptions(gateway):
    import openai

    client = gateway.client()
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=MSG)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="mock-gpt-4", messages=[])


def test_the_catch_all_500_carries_the_request_id():
    """doka's own 500 handler marks its answer, so a fault test can tell it from a proxy's 500.

    Drives the ingress's FastAPI app (its real handlers) in-process with a route that fails the
    way a bug would; the Serve app has no route that can be made to fail on purpose.
    """
    from starlette.testclient import TestClient

    from deployments.ingress import app

    async def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/_test/boom", boom, include_in_schema=False)
    try:
        r = TestClient(app, raise_server_exceptions=False).get("/_test/boom", headers={"x-request-id": "req-500"})
    finally:
        app.router.routes = [rt for rt in app.router.routes if getattr(rt, "path", "") != "/_test/boom"]
    err = _error(r, 500)
    assert err["type"] == "server_error" and len(r.headers["x-doka-request-id"]) == 32  # doka's own, not the client's
