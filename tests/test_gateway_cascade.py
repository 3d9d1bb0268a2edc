"""Cascades (`cascades:` in the config) through the real gateway, keys on: the weak model's answer
when the verifier agrees, the strong model's otherwise, every call charged on the request's one
ledger row, and every way out (answer, failure, client gone) releasing the reservation.

config/default.yaml's `verified`: weak mock-mixtral, verifier mock-gpt-3.5, strong mock-gpt-4;
the mock upstream answers each with a fixed text (`answers`) so agreement is chosen per test.
`auto` routes with a tiny gated artifact (code -> mock-gpt-4, small talk -> mock-mixtral) and
`router.novel_cascade: verified`: a prompt unlike both goes through the cascade.
"""

from __future__ import annotations

import asyncio
import os
import time

import httpx
import openai
import pytest

from accounts import estimate
from deployments.cascade import agree, answer_key, program_key, replay
from tests.keyed_gateway import admin, keyed_gateway, new_key
from tests.router_deployment_support import CHAT, KEY, publish, train_artifact

MASTER = "sk-master-cascade"
APP = "doka-cascade-test"
PREFIX = "/cascade"
WEAK, VERIFIER, STRONG = "mixtral-8x7b", "gpt-3.5-turbo", "gpt-4-turbo"  # as the upstream sees them
MSG = [{"role": "user", "content": "Which option is right, A or B?"}]
# nothing like the gated artifact's training prompts (its gate calls it novel), and one of them
NOVEL = [{"role": "user", "content": "Zur Mitteilung: der Vorstand tagt am Donnerstag im Saal 4, Tagesordnung folgt."}]
FAMILIAR = [{"role": "user", "content": CHAT[0]}]


# ------------------------------------------------------------------ no cluster
def test_answers_agree_on_their_normalised_text_and_tool_calls():
    def chat(text, calls=None):
        return {"object": "chat.completion", "choices": [{"message": {"content": text, "tool_calls": calls}}]}

    assert agree(chat("B"), chat(" b.\n"))
    assert agree(chat('"Paris"'), chat("paris!"))
    assert agree({"choices": [{"text": "42 "}]}, {"choices": [{"text": "42"}]})  # legacy completions
    assert not agree(chat("B"), chat("A"))
    assert not agree(chat(""), chat(""))  # nothing said is no agreement
    call = [{"function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]
    other = [{"function": {"name": "get_weather", "arguments": '{"city": "Bergen"}'}}]
    assert agree(chat(None, call), chat(None, call)) and not agree(chat(None, call), chat(None, other))
    assert answer_key(chat("Hello   World")) == "hello world"


def test_final_answer_compares_the_result_a_worked_answer_states():
    def chat(text):
        return {"object": "chat.completion", "choices": [{"message": {"content": text}}]}

    def same(a, b):
        return agree(chat(a), chat(b), "final_answer")

    assert same("48 / 2 = 24, and 48 + 24 = 72.\n#### 72", "She sold 72 clips in all. The answer is 72.")
    assert same("The answer is $1,000.", "Answer: 1000") and same("The answer is 3.5. Since x", "answer: 3.50")
    assert same("so \\boxed{\\frac{1}{2}}", "The final answer is \\frac{1}{2}.")
    assert same("The answer is (B).", "B")  # one states a result, the other is only the result
    assert same("The answer is B, because the others are wrong.", "Answer: B; it is the only one")
    assert not same("#### 71", "The answer is 72") and not same("The answer is B", "The answer is C")
    assert not same("Paris, I think", "It is Paris") and same("Paris.", "paris")  # nothing stated: whole text
    assert not agree(chat("#### 72"), chat("The answer is 72."))  # `text`, the default, compares it all


def test_program_compares_the_python_an_answer_defines_not_its_wording():
    def chat(text):
        return {"object": "chat.completion", "choices": [{"message": {"content": text}}]}

    def same(a, b):
        return agree(chat(a), chat(b), "program")

    summed = ('Here you go:\n```python\ndef total(xs):\n    """Add them."""\n    s = 0  # running sum\n'
              "    for x in xs:\n        s += x\n    return s\n\nprint(total([1, 2]))\n```\nIt loops once.")
    renamed = ("```py\r\ndef total(numbers: list) -> int:\r\n    acc = 0\r\n    for n in numbers:\r\n"
               "        acc += n\r\n    return acc\r\n```\nUsage:\n```python\ntotal([3])\n```")
    assert same(summed, renamed)  # other locals, docstring, comments, annotations, CRLF, example usage
    assert not same(summed, "```python\ndef total(xs):\n    return sum(xs)\n```")  # another program
    assert not same(summed, renamed.replace("def total", "def add_all"))  # a function's name is its interface
    assert not same(summed, summed.replace("s += x", "s -= x"))
    root = "```python\nimport math\ndef r(a):\n    return math.sqrt(a)\n```"
    assert same(root, "```\nimport math\n\ndef r(value):\n    return math.sqrt(value)\n```")  # an unlabelled fence
    assert not same(root, root.replace("sqrt", "floor"))  # imported and builtin names are kept
    assert same("B", "b.") and not same("B", "C")  # no Python in it: the whole text, as `text`
    assert not same("```cpp\nint f(int x) { return x; }\n```", "```cpp\nint f(int y) { return y; }\n```")
    assert program_key("def broken(:\n") is None and program_key("x = 1") is None  # no definition; never run
    assert not agree(chat(summed), chat(renamed))  # `text`, the default, compares it all


def test_replay_is_the_stream_an_openai_client_reads():
    from openai.types.chat import ChatCompletionChunk

    done = {"id": "x", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "B"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}

    async def collect(include_usage):
        return [ChatCompletionChunk.model_validate(c) async for c in replay(done, include_usage)]

    chunks = asyncio.run(collect(True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "B"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.total_tokens == 4 and not chunks[-1].choices
    assert all(c.usage is None for c in asyncio.run(collect(False)))


# ------------------------------------------------------------------ through the gateway
@pytest.fixture(scope="module")
def gw(ray_cluster, mock_upstream, tmp_path_factory):
    data = tmp_path_factory.mktemp("cascade")
    publish(data / "registry", train_artifact(data / "gated", family="gated"))

    def edit(raw: dict) -> None:
        # `worked`: config/default.yaml's `verified` comparing stated results (`compare: final_answer`)
        raw["cascades"]["worked"] = {**raw["cascades"]["verified"], "compare": "final_answer"}
        raw["cascades"]["coded"] = {**raw["cascades"]["verified"], "compare": "program"}
        raw["router"].update(strategy="learned", registry=str(data / "registry"), artifact="latest",
                             signing_key=KEY, novel_cascade="verified")

    yield from keyed_gateway(mock_upstream, data, app=APP, prefix=PREFIX, master=MASTER, edit=edit)


@pytest.fixture()
def mock(gw):
    gw.mock.reset()
    yield gw.mock
    gw.mock.reset()


def rows(gw, key: dict) -> list[dict]:
    return admin(gw, "GET", "/spend/logs", params={"key_id": key["key_id"]}).json()["data"]


def settled(gw, key: dict, n: int) -> list[dict]:
    """The key's ledger rows once `n` are written and nothing is held any more."""
    deadline = time.time() + 20
    while time.time() < deadline:
        got = rows(gw, key)
        usage = admin(gw, "GET", "/key/info", params={"key_id": key["key_id"]}).json()["usage"]
        if len(got) >= n and usage["inflight"] == 0 and usage["reserved_tokens"] == 0:
            return got
        time.sleep(0.2)
    raise AssertionError(f"not settled: {got} {usage}")


def client(gw, key: dict) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key["key"], max_retries=0, timeout=30)


def metric(gw, name: str, **labels: str) -> float:
    """A doka_* counter's value on the gateway's /metrics (one ingress replica here)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{gw.url}/metrics", timeout=10).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


FALLBACK = {"to_model": "mock-gpt-4"}  # from whichever cheap call failed last


def cost(gw, model: str, p: int, c: int) -> float:
    return gw.cfg.model(model).cost(p, c)


def test_agreeing_models_answer_with_the_weak_one_and_both_calls_are_charged(gw, mock):
    mock.state(answers={WEAK: "B", VERIFIER: "b."}, reset_counts=True)
    key = new_key(gw)
    raw = client(gw, key).chat.completions.with_raw_response.create(model="verified", messages=MSG, max_tokens=8)
    resp = raw.parse()
    assert resp.choices[0].message.content == "B"
    assert metric(gw, "doka_cascade_outcomes_total", cascade="verified", outcome="agreed") >= 1
    assert raw.headers["x-doka-model"] == "mock-mixtral" and raw.headers["x-doka-route-reason"] == "cascade:agreed"
    assert raw.headers["x-doka-tiers-tried"] == "mock-mixtral,mock-gpt-3.5"
    assert mock.state()["by_model"] == {WEAK: 1, VERIFIER: 1}  # the strong model was never asked
    [row] = settled(gw, key, 1)
    p, c = resp.usage.prompt_tokens, resp.usage.completion_tokens  # the weak call's; the verifier's is alike
    assert (row["model"], row["model_requested"], row["status"], row["route_reason"]) == (
        "mock-mixtral", "verified", 200, "cascade:agreed")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (2 * p, 2 * c)
    assert row["cost_usd"] == pytest.approx(cost(gw, "mock-mixtral", p, c) + cost(gw, "mock-gpt-3.5", p, c))


def test_disagreement_escalates_to_the_strong_model_and_all_three_are_charged(gw, mock):
    mock.state(answers={WEAK: "A", VERIFIER: "B"}, reset_counts=True)
    key = new_key(gw)
    escalated, fallbacks = metric(gw, "doka_cascade_outcomes_total", outcome="escalated"), metric(gw, "doka_fallbacks_total", **FALLBACK)
    raw = client(gw, key).chat.completions.with_raw_response.create(model="verified", messages=MSG, max_tokens=8)
    resp = raw.parse()
    assert metric(gw, "doka_cascade_outcomes_total", cascade="verified", outcome="escalated") == escalated + 1
    assert metric(gw, "doka_fallbacks_total", **FALLBACK) == fallbacks  # escalation is not a fallback
    assert raw.headers["x-doka-model"] == "mock-gpt-4" and raw.headers["x-doka-route-reason"] == "cascade:escalated"
    assert raw.headers["x-doka-tiers-tried"] == "mock-mixtral,mock-gpt-3.5,mock-gpt-4"
    assert "mock answer from gpt-4-turbo" in resp.choices[0].message.content
    assert mock.state()["by_model"] == {WEAK: 1, VERIFIER: 1, STRONG: 1}
    [row] = settled(gw, key, 1)
    p, c = resp.usage.prompt_tokens, resp.usage.completion_tokens
    assert row["route_reason"] == "cascade:escalated" and row["model"] == "mock-gpt-4"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (3 * p, c + 1 + 1)  # "A" and "B": one token each
    assert row["cost_usd"] == pytest.approx(
        cost(gw, "mock-gpt-4", p, c) + cost(gw, "mock-mixtral", p, 1) + cost(gw, "mock-gpt-3.5", p, 1))


def test_a_final_answer_cascade_agrees_on_the_stated_result_where_text_escalates(gw, mock):
    mock.state(answers={WEAK: "48 / 2 = 24 and 48 + 24 = 72.\n#### 72",
                        VERIFIER: "She sold 72 clips altogether. The answer is 72."}, reset_counts=True)
    key = new_key(gw)
    worked = client(gw, key).chat.completions.with_raw_response.create(model="worked", messages=MSG, max_tokens=32)
    assert worked.headers["x-doka-route-reason"] == "cascade:agreed"
    assert worked.headers["x-doka-model"] == "mock-mixtral"
    assert worked.parse().choices[0].message.content.endswith("#### 72")  # the weak answer, whole
    assert metric(gw, "doka_cascade_outcomes_total", cascade="worked", outcome="agreed") >= 1
    text = client(gw, key).chat.completions.with_raw_response.create(model="verified", messages=MSG, max_tokens=32)
    assert text.headers["x-doka-route-reason"] == "cascade:escalated"  # the same answers, compared whole
    mock.state(answers={WEAK: "#### 71", VERIFIER: "The answer is 72."}, reset_counts=True)
    wrong = client(gw, key).chat.completions.with_raw_response.create(model="worked", messages=MSG, max_tokens=32)
    assert wrong.headers["x-doka-route-reason"] == "cascade:escalated" and wrong.headers["x-doka-model"] == "mock-gpt-4"
    assert mock.state()["by_model"] == {WEAK: 1, VERIFIER: 1, STRONG: 1}
    assert [r["route_reason"] for r in settled(gw, key, 3)].count("cascade:agreed") == 1


def test_a_program_cascade_agrees_on_the_same_function_in_other_words(gw, mock):
    mock.state(answers={WEAK: "```python\ndef area(r):\n    return 3.14159 * r * r\n```",
                        VERIFIER: "Sure:\n```python\ndef area(radius: float) -> float:\n    # pi r^2\n"
                                  "    return 3.14159 * radius * radius\n\nprint(area(2))\n```"}, reset_counts=True)
    key = new_key(gw)
    coded = client(gw, key).chat.completions.with_raw_response.create(model="coded", messages=MSG, max_tokens=64)
    assert coded.headers["x-doka-route-reason"] == "cascade:agreed" and coded.headers["x-doka-model"] == "mock-mixtral"
    text = client(gw, key).chat.completions.with_raw_response.create(model="verified", messages=MSG, max_tokens=64)
    assert text.headers["x-doka-route-reason"] == "cascade:escalated"  # the same answers, compared whole
    assert mock.state()["by_model"] == {WEAK: 2, VERIFIER: 2, STRONG: 1}
    assert [r["route_reason"] for r in settled(gw, key, 2)].count("cascade:agreed") == 1


@pytest.mark.parametrize("agreeing", [True, False])
def test_streamed_cascade_replays_or_streams_and_charges_every_call(gw, mock, agreeing):
    mock.state(answers={WEAK: "B", VERIFIER: "B" if agreeing else "A"}, reset_counts=True)
    key = new_key(gw)
    stream = client(gw, key).chat.completions.create(model="verified", messages=MSG, max_tokens=8, stream=True,
                                                     stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = [c.usage for c in chunks if c.usage is not None][-1]
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)
    [row] = settled(gw, key, 1)
    p = usage.prompt_tokens
    if agreeing:
        assert text == "B" and row["route_reason"] == "cascade:agreed" and row["model"] == "mock-mixtral"
        assert chunks[-1].usage is not None and not chunks[-1].choices  # OpenAI's own usage chunk
        assert (row["prompt_tokens"], row["completion_tokens"]) == (2 * p, 2)
    else:
        assert "mock answer from gpt-4-turbo" in text and row["route_reason"] == "cascade:escalated"
        assert (row["prompt_tokens"], row["completion_tokens"]) == (3 * p, usage.completion_tokens + 2)
    assert row["stream"] and row["status"] == 200
    if agreeing:  # no usage asked for: none is sent, and the ledger still has the calls' own counts
        plain = list(client(gw, key).chat.completions.create(model="verified", messages=MSG, max_tokens=8,
                                                             stream=True))
        assert all(c.usage is None for c in plain)
        again = [r for r in settled(gw, key, 2) if r["request_id"] != row["request_id"]][0]
        assert (again["prompt_tokens"], again["completion_tokens"]) == (row["prompt_tokens"], row["completion_tokens"])


def test_a_failing_verifier_escalates_and_its_weak_call_is_still_charged(gw, mock):
    mock.state(answers={WEAK: "B"}, faults={VERIFIER: "500"}, reset_counts=True)
    key = new_key(gw)
    raw = client(gw, key).chat.completions.with_raw_response.create(model="verified", messages=MSG, max_tokens=8)
    assert metric(gw, "doka_cascade_outcomes_total", cascade="verified", outcome="failed_check") >= 1
    assert raw.headers["x-doka-model"] == "mock-gpt-4"
    assert raw.headers["x-doka-route-reason"] == "cascade:failed_check"
    resp = raw.parse()
    [row] = settled(gw, key, 1)
    p, c = resp.usage.prompt_tokens, resp.usage.completion_tokens
    assert (row["prompt_tokens"], row["completion_tokens"]) == (2 * p, c + 1)  # the 500 cost nothing
    # both cheap calls failing: the strong call is a fallback like any tier after a failure
    mock.state(faults={WEAK: "500", VERIFIER: "500"})
    fallbacks = metric(gw, "doka_fallbacks_total", **FALLBACK)
    r = client(gw, key).chat.completions.with_raw_response.create(model="verified", messages=MSG, max_tokens=8)
    assert r.headers["x-doka-route-reason"] == "cascade:failed_check" and r.headers["x-doka-model"] == "mock-gpt-4"
    assert metric(gw, "doka_fallbacks_total", **FALLBACK) == fallbacks + 1
    settled(gw, key, 2)
    # and when every call fails, the client gets an OpenAI error and the weak call is still on the row
    mock.state(faults={VERIFIER: "500", STRONG: "500"})
    with pytest.raises(openai.APIStatusError) as err:
        client(gw, key).chat.completions.create(model="verified", messages=MSG, max_tokens=8)
    assert err.value.status_code == 502 and err.value.body["type"] in ("api_error", "server_error", "upstream_error")
    failed = [r for r in settled(gw, key, 3) if r["status"] != 200]
    assert len(failed) == 1 and failed[0]["prompt_tokens"] == p and failed[0]["completion_tokens"] == 1


def test_client_mistakes_are_a_400_without_escalating(gw, mock):
    mock.state(faults={WEAK: "400"}, reset_counts=True)
    key = new_key(gw)
    with pytest.raises(openai.BadRequestError):
        client(gw, key).chat.completions.create(model="verified", messages=MSG, max_tokens=8)
    assert STRONG not in mock.state()["by_model"]
    [row] = settled(gw, key, 1)
    assert row["status"] == 400


def test_a_cascade_reserves_for_its_three_calls_and_needs_the_verifier_allowed(gw, mock):
    import threading

    body = {"model": "verified", "messages": MSG, "max_tokens": 8}
    est = estimate.reservation(body)
    key = new_key(gw, tokens_per_day=2 * est)  # room for two plain calls, not for a cascade
    headers = {"Authorization": f"Bearer {key['key']}"}
    mock.state(latency_ms=1500)

    def held_while(model: str) -> tuple[int, int]:
        """Reserved tokens while one `model` request is in flight, and a second request's status."""
        first = threading.Thread(target=httpx.post, args=(gw.url + "/v1/chat/completions",),
                                 kwargs={"headers": headers, "json": {**body, "model": model}, "timeout": 30})
        first.start()
        deadline = time.time() + 10
        while time.time() < deadline:
            usage = admin(gw, "GET", "/key/info", params={"key_id": key["key_id"]}).json()["usage"]
            if usage["inflight"]:
                break
            time.sleep(0.05)
        second = httpx.post(gw.url + "/v1/chat/completions", headers=headers, timeout=30,
                            json={**body, "model": "mock-gpt-3.5"})
        first.join()
        return usage["reserved_tokens"], second.status_code

    assert held_while("mock-mixtral") == (est, 200)
    admin(gw, "POST", "/key/update", json={"key_id": key["key_id"], "tokens_per_day": None})  # reset the room
    settled(gw, key, 2)
    used = admin(gw, "GET", "/key/info", params={"key_id": key["key_id"]}).json()["usage"]["tokens_today"]
    admin(gw, "POST", "/key/update", json={"key_id": key["key_id"], "tokens_per_day": used + 2 * est})
    refused = httpx.post(gw.url + "/v1/chat/completions", headers=headers, timeout=30, json=body)
    assert refused.status_code == 429  # a cascade's worst case is three calls: two calls' room is not enough
    used = admin(gw, "GET", "/key/info", params={"key_id": key["key_id"]}).json()["usage"]["tokens_today"]
    admin(gw, "POST", "/key/update", json={"key_id": key["key_id"], "tokens_per_day": used + 3 * est})
    reserved, second = held_while("verified")
    assert reserved == 3 * est and second == 429
    # `auto` with `router.novel_cascade` is held alike: the hold is taken before the router decides
    settled(gw, key, 5)  # (with the refused cascade's row)
    used = admin(gw, "GET", "/key/info", params={"key_id": key["key_id"]}).json()["usage"]["tokens_today"]
    admin(gw, "POST", "/key/update", json={"key_id": key["key_id"], "tokens_per_day": used + 3 * est})
    assert held_while("auto") == (3 * est, 429)
    mock.reset()

    no_verifier = new_key(gw, models=["verified", "mock-mixtral", "mock-gpt-4"])
    with pytest.raises(openai.PermissionDeniedError) as err:
        client(gw, no_verifier).chat.completions.create(**body)
    assert "mock-gpt-3.5" in err.value.body["message"]
    models = {m.id: m for m in client(gw, new_key(gw)).models.list().data}
    assert models["verified"].model_extra["doka"] == {"kind": "cascade", "weak": "mock-mixtral",
                                                      "verifier": "mock-gpt-3.5", "strong": "mock-gpt-4",
                                                      "fallbacks": []}


@pytest.mark.parametrize("model,messages,reason", [("verified", MSG, "cascade:escalated"),
                                                    ("auto", NOVEL, "auto:novel:cascade:escalated")])
def test_clients_leaving_a_cascade_leave_no_reservation(gw, mock, model, messages, reason):
    """Clients that hang up while the weak and verifier calls run (plain and streamed), 5 rounds
    of 10: each request has exactly one row, nothing stays reserved, and a request whose hang-up
    reached the replica (499) was charged for no call. The same for `auto` sending a novel prompt
    through `router.novel_cascade`.

    Serve's own proxy reports every hang-up. HAProxy (`make test`'s default, as `make run`'s)
    keeps a request it has forwarded open after its client leaves (`abortonclose` drops only
    queued ones), so there some run to their answer (200, charged in full) and a share arrive as
    499: the rounds are many enough that the cancel path is seen either way.
    """
    key = new_key(gw, tokens_per_day=10_000_000)
    headers = {"Authorization": f"Bearer {key['key']}"}
    body = {"model": model, "messages": messages, "max_tokens": 8}
    mock.state(latency_ms=1500, reset_counts=True)  # far slower than the clients wait

    async def leave(http: httpx.AsyncClient, stream: bool) -> str:
        try:
            if stream:
                async with http.stream("POST", gw.url + "/v1/chat/completions", headers=headers,
                                       json={**body, "stream": True}) as r:
                    await r.aread()
            else:
                await http.post(gw.url + "/v1/chat/completions", headers=headers, json=body)
        except httpx.TimeoutException:
            return "left"
        return "answered"

    async def round_() -> list[str]:
        async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=0.5)) as http:
            return await asyncio.gather(*[leave(http, stream=i % 2 == 1) for i in range(10)])

    for n in range(1, 6):
        assert asyncio.run(round_()) == ["left"] * 10
        got = settled(gw, key, 10 * n)  # this round's holds released before the next round
    assert len(got) == 50 and all(r["model_requested"] == model for r in got), got
    left = [r for r in got if r["status"] == 499]
    assert left, got  # the cancel path (the one under test) ran
    # no call had answered: nothing but a cut stream's prompt (the rule for every stream) is charged
    assert all(r["completion_tokens"] == 0 and (r["stream"] or r["prompt_tokens"] == 0) for r in left), left
    answered = [r for r in got if r["status"] != 499]
    assert all(r["status"] == 200 and r["route_reason"] == reason and r["completion_tokens"] > 0
               for r in answered), answered
    if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY", "0") in ("0", ""):
        assert not answered, answered
    assert mock.state()["counts"]["requests"] >= 2  # the cascade's calls were in flight when they left


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_messages_through_a_cascade(gw, mock, stream):
    """The Messages API rides the same path: the replayed agreed answer in Anthropic's shape."""
    import anthropic

    mock.state(answers={WEAK: "B", VERIFIER: "B"}, reset_counts=True)
    key = new_key(gw)
    claude = anthropic.Anthropic(base_url=gw.url, api_key=key["key"], max_retries=0)
    if stream:
        with claude.messages.stream(model="verified", max_tokens=8, messages=MSG) as s:
            text = "".join(s.text_stream)
            final = s.get_final_message()
    else:
        final = claude.messages.create(model="verified", max_tokens=8, messages=MSG)
        text = final.content[0].text
    assert text == "B" and final.stop_reason == "end_turn"
    [row] = settled(gw, key, 1)
    assert row["route_reason"] == "cascade:agreed" and row["model"] == "mock-mixtral"
    assert mock.state()["by_model"] == {WEAK: 1, VERIFIER: 1}


def test_auto_sends_novel_prompts_through_the_cascade_and_familiar_ones_to_the_routed_model(gw, mock):
    mock.state(answers={WEAK: "B", VERIFIER: "b."}, reset_counts=True)
    key = new_key(gw)
    novel_before = metric(gw, "doka_routing_gate_total", path="novel")
    familiar_before = metric(gw, "doka_routing_gate_total", path="familiar")
    auto = client(gw, key).chat.completions.with_raw_response

    familiar = auto.create(model="auto", messages=FAMILIAR, max_tokens=8)
    assert familiar.headers["x-doka-route-reason"] == "auto:learned" and familiar.headers["x-doka-model"] == "mock-mixtral"
    assert familiar.headers["x-doka-tiers-tried"] == "mock-mixtral" and mock.state()["by_model"] == {WEAK: 1}

    agreed = auto.create(model="auto", messages=NOVEL, max_tokens=8)
    assert agreed.headers["x-doka-route-reason"] == "auto:novel:cascade:agreed"
    assert agreed.headers["x-doka-model"] == "mock-mixtral" and agreed.parse().choices[0].message.content == "B"
    assert agreed.headers["x-doka-tiers-tried"] == "mock-mixtral,mock-gpt-3.5"
    assert agreed.headers["x-doka-strategy"] == "learned"
    assert mock.state()["by_model"] == {WEAK: 2, VERIFIER: 1}

    mock.state(answers={WEAK: "A", VERIFIER: "B"})
    escalated = auto.create(model="auto", messages=NOVEL, max_tokens=8)
    assert escalated.headers["x-doka-route-reason"] == "auto:novel:cascade:escalated"
    assert escalated.headers["x-doka-model"] == "mock-gpt-4"
    assert mock.state()["by_model"] == {WEAK: 3, VERIFIER: 2, STRONG: 1}
    assert metric(gw, "doka_routing_gate_total", path="novel") == novel_before + 2
    assert metric(gw, "doka_routing_gate_total", path="familiar") == familiar_before + 1

    got = {r["request_id"]: r for r in settled(gw, key, 3)}
    row = got[agreed.headers["x-doka-request-id"]]
    usage = agreed.parse().usage
    assert (row["model_requested"], row["model"], row["route_reason"]) == ("auto", "mock-mixtral",
                                                                           "auto:novel:cascade:agreed")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (2 * usage.prompt_tokens, 2 * usage.completion_tokens)
    assert got[escalated.headers["x-doka-request-id"]]["model"] == "mock-gpt-4"

    # a key that may not call the verifier gets the routed model: the cascade never refuses auto
    mock.state(reset_counts=True)
    narrow = new_key(gw, models=["auto", "mock-mixtral", "mock-gpt-4"])
    routed = client(gw, narrow).chat.completions.with_raw_response.create(model="auto", messages=NOVEL, max_tokens=8)
    assert routed.headers["x-doka-route-reason"] == "auto:learned"
    assert routed.headers["x-doka-model"] in ("mock-mixtral", "mock-gpt-4") and VERIFIER not in mock.state()["by_model"]
    models = {m.id: m for m in client(gw, key).models.list().data}
    assert models["auto"].model_extra["doka"]["novel_cascade"] == "verified"
