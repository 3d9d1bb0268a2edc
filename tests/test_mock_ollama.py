"""The Ollama-format mock (load/mock_ollama.py) and the stall faults every mock shares."""

from __future__ import annotations

import json

import httpx
import pytest

CHAT = {"model": "qwen2.5:3b", "messages": [{"role": "user", "content": "hello there"}]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}}]


def _ndjson(mock, body: dict, timeout: float = 10) -> list[dict]:
    with httpx.stream("POST", f"{mock.url}/api/chat", json=body, timeout=timeout) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        return [json.loads(line) for line in r.iter_lines() if line]


def test_ollama_streams_ndjson_by_default_with_usage_on_the_done_line(mock):
    lines = _ndjson(mock, CHAT)  # no `stream` field: Ollama's default is to stream
    assert [x["done"] for x in lines] == [False] * 8 + [True]
    text = "".join(x["message"]["content"] for x in lines)
    assert text.startswith("mock answer from qwen2.5:3b to: hello there")
    last = lines[-1]
    assert last["done_reason"] == "stop" and last["prompt_eval_count"] == 2 and last["eval_count"] == 8
    assert all("prompt_eval_count" not in x for x in lines[:-1])
    assert mock.state()["counts"]["api_ollama"] == 1


def test_ollama_plain_answer_and_errors(mock):
    r = httpx.post(f"{mock.url}/api/chat", json={**CHAT, "stream": False}, timeout=10)
    body = r.json()
    assert body["done"] is True and body["message"]["role"] == "assistant"
    assert body["message"]["content"].startswith("mock answer from qwen2.5:3b")
    assert (body["prompt_eval_count"], body["eval_count"]) == (2, 8)
    assert httpx.post(f"{mock.url}/api/chat", content=b"{", timeout=10).status_code == 400
    mock.state(faults={"qwen2.5:3b": "503"})
    err = httpx.post(f"{mock.url}/api/chat", json={**CHAT, "stream": False}, timeout=10)
    assert err.status_code == 503 and err.json() == {"error": "mock fault 503 for qwen2.5:3b"}


def test_ollama_tool_call_in_ollamas_shape_and_the_answer_to_its_result(mock):
    ask = {**CHAT, "stream": False, "tools": TOOLS,
           "messages": [{"role": "user", "content": "what is the weather in Paris?"}]}
    call = httpx.post(f"{mock.url}/api/chat", json=ask, timeout=10).json()["message"]["tool_calls"]
    assert call == [{"function": {"name": "get_weather", "arguments": {"city": "mock", "days": 1}}}]
    lines = _ndjson(mock, {**ask, "stream": True})
    assert lines[0]["message"]["tool_calls"] == call and lines[-1]["done"] is True
    back = {**ask, "messages": [*ask["messages"], {"role": "assistant", "content": "", "tool_calls": call},
                                {"role": "tool", "content": "sunny, 21 C"}]}
    said = httpx.post(f"{mock.url}/api/chat", json=back, timeout=10).json()["message"]
    assert said["content"] == "mock answer from qwen2.5:3b: the tool said sunny, 21 C" and "tool_calls" not in said


def test_ollama_format_gets_json(mock):
    schema = TOOLS[0]["function"]["parameters"]
    r = httpx.post(f"{mock.url}/api/chat", json={**CHAT, "stream": False, "format": schema}, timeout=10)
    assert json.loads(r.json()["message"]["content"]) == {"city": "mock", "days": 1}
    lines = _ndjson(mock, {**CHAT, "format": "json"})
    assert json.loads("".join(x["message"]["content"] for x in lines)) == {"answer": "mock"}


def test_ollama_tags_and_show(mock):
    httpx.post(f"{mock.url}/api/chat", json={**CHAT, "model": "llama3.2:1b", "stream": False}, timeout=10)
    names = [m["name"] for m in httpx.get(f"{mock.url}/api/tags", timeout=10).json()["models"]]
    assert names == ["llama3.2:1b", "qwen2.5:3b"]
    show = httpx.post(f"{mock.url}/api/show", json={"name": "qwen2.5:3b"}, timeout=10).json()
    assert "tools" in show["template"].lower() and show["model_info"]["qwen2.context_length"] == 32768


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {"model": "m1", "messages": [{"role": "user", "content": "x"}], "stream": True}),
    ("/api/chat", {**CHAT, "model": "m1"}),
])
def test_stall_fault_sends_one_chunk_then_nothing(mock, path, body):
    mock.state(faults={"m1": "stall"})
    got = []
    with pytest.raises(httpx.ReadTimeout):
        with httpx.stream("POST", f"{mock.url}{path}", json=body, timeout=httpx.Timeout(10, read=1.0)) as r:
            for line in r.iter_lines():
                if line.strip():
                    got.append(line)
    assert len(got) == 1 and mock.state()["counts"]["fault_stall"] == 1


def test_silent_fault_sends_headers_then_nothing_and_plain_requests_get_no_answer(mock):
    mock.state(faults={"m1": "silent"})
    with httpx.stream("POST", f"{mock.url}/api/chat", json={**CHAT, "model": "m1"},
                      timeout=httpx.Timeout(10, read=1.0)) as r:
        assert r.status_code == 200
        with pytest.raises(httpx.ReadTimeout):
            next(r.iter_lines())
    with pytest.raises(httpx.ReadTimeout):  # a plain request with a stall fault is never answered
        httpx.post(f"{mock.url}/api/chat", json={**CHAT, "model": "m1", "stream": False}, timeout=1.0)
