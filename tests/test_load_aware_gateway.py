"""Load-aware tiers through the real doka Serve app (issue 33): keys on, the in-repo mock upstream
behind LiteLLM, the unmodified `openai` SDK as the client. The local vLLM tiers are
tests/load_aware_support.py's QueueingLLM (a queue depth the test sets, reported through the
`doka_load` call the real DokaLLMServer answers), so the ingress's own poller, chain and `auto`
code decide. `local-q` (queue_limit 2) heads `local-chain` (then mock-mixtral); `local-solo`
(queue_limit 1) is in no chain."""

from __future__ import annotations

import re
import time

import httpx
import openai
import pytest

from tests.keyed_gateway import keyed_gateway
from tests.load_aware_support import fake_vllm_apps, queueing_tier
from tests.load_aware_support import set_queue as write_queue

MASTER = "sk-master-loadaware"
APP = "doka-loadaware"
PREFIX = "/la"


@pytest.fixture(scope="module")
def gw(ray_cluster, mock_upstream, tmp_path_factory):
    weights = tmp_path_factory.mktemp("weights")  # exists: the tier check lets the tier start

    def edit(raw: dict) -> None:
        queueing_tier(raw, "local-solo", str(weights), 1)
        queueing_tier(raw, "local-q", str(weights), 2, chain="local-chain")
        base = next(m for m in raw["model_list"] if m["model_name"] == "mock-gpt-3.5")["litellm_params"]["api_base"]
        raw["model_list"].append({  # a provider-limited model for the console's Models page
            "model_name": "mock-groq", "litellm_params": {"model": "openai/mock-groq", "api_base": base,
                                                          "api_key": "os.environ/MOCK_API_KEY"},
            "model_info": {"tier": "free", "timeout": 30, "parallel": True, "limits": {"rpd": 3, "rpm": 50}}})

    queue_dir = tmp_path_factory.mktemp("queues")
    with pytest.MonkeyPatch.context() as mp:
        fake_vllm_apps(mp, queue_dir)
        for gw in keyed_gateway(mock_upstream, tmp_path_factory.mktemp("loadaware"), app=APP, prefix=PREFIX,
                                master=MASTER, edit=edit):
            gw.queue_dir = queue_dir
            yield gw


def set_queue(gw, model: str, waiting: int, running: int = 0) -> None:
    """Set the stand-in's queue, then wait until the ingress's poller has read it."""
    write_queue(gw.queue_dir, model, waiting, running)
    wait_for_load(gw, model, waiting)


def wait_for_load(gw, model: str, waiting: int) -> dict:
    deadline = time.time() + 20
    while time.time() < deadline:
        r = httpx.get(f"{gw.url}/health/readiness", timeout=10)
        row = (r.json().get("load") or {}).get(model)
        if row is not None and row["waiting"] == waiting:
            return row
        time.sleep(0.2)
    raise AssertionError(f"the ingress never read {model} waiting={waiting}: {r.json()}")


@pytest.fixture(autouse=True)
def _empty_queues(gw):
    yield
    for model in ("local-q", "local-solo"):
        set_queue(gw, model, 0)


def client(gw) -> openai.OpenAI:
    return openai.OpenAI(api_key=MASTER, base_url=gw.url + "/v1", max_retries=0, timeout=60)


def ask(gw, model: str, **kw):
    return client(gw).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=8, **kw)


def test_a_saturated_local_tier_spills_to_the_next_tier(gw):
    set_queue(gw, "local-q", 0, 1)
    r = ask(gw, "local-chain")
    assert r.headers["x-doka-model"] == "local-q"
    assert r.headers["x-doka-route-reason"] == "chain:local-chain"
    assert r.parse().choices[0].message.content == "from the local tier"

    set_queue(gw, "local-q", 2, 4)  # at its queue_limit: full
    r = ask(gw, "local-chain")
    assert r.headers["x-doka-model"] == "mock-mixtral"
    assert r.headers["x-doka-route-reason"] == "fallback:tier2;skipped=local-q:queue_full"
    assert r.headers["x-doka-tiers-tried"] == "mock-mixtral"  # the full tier was never called
    assert r.parse().usage.total_tokens > 0

    with client(gw).chat.completions.with_streaming_response.create(
            model="local-q", messages=[{"role": "user", "content": "hi"}], max_tokens=8, stream=True) as s:
        assert s.headers["x-doka-model"] == "mock-mixtral"  # asked by name: its chain is local-chain
        assert s.headers["x-doka-route-reason"] == "fallback:tier2;skipped=local-q:queue_full"
        assert "".join(c.choices[0].delta.content or "" for c in s.parse() if c.choices)

    set_queue(gw, "local-q", 1, 4)  # below the limit again: the local tier answers
    assert ask(gw, "local-chain").headers["x-doka-model"] == "local-q"


def test_auto_leaves_a_full_local_tier_out_of_its_candidates(gw):
    set_queue(gw, "local-q", 7, 4)
    for _ in range(3):
        r = ask(gw, "auto", extra_body={"doka": {"candidates": ["local-q", "mock-gpt-3.5"]}})
        assert r.headers["x-doka-model"] == "mock-gpt-3.5"
        reason = r.headers["x-doka-route-reason"]
        assert reason.startswith("auto:") and reason.endswith(";skipped=local-q:queue_full"), reason


def test_a_full_tier_with_nowhere_else_to_go_still_queues(gw):
    set_queue(gw, "local-solo", 3, 4)
    r = ask(gw, "local-solo")
    assert r.headers["x-doka-model"] == "local-solo"
    assert r.headers["x-doka-route-reason"] == "explicit"
    r = ask(gw, "auto", extra_body={"doka": {"candidates": ["local-solo"]}})
    assert r.headers["x-doka-model"] == "local-solo"
    assert "queue_full" not in r.headers["x-doka-route-reason"]


def test_the_load_shows_on_metrics_readiness_and_models(gw):
    set_queue(gw, "local-q", 5, 3)
    row = wait_for_load(gw, "local-q", 5)
    assert row == {"waiting": 5, "running": 3, "source": "vllm", "queue_limit": 2, "full": True}
    text = httpx.get(gw.url + "/metrics", timeout=30).text
    assert re.search(r'doka_tier_queue_waiting\{model="local-q"\} 5\.0', text), text[-2000:]
    assert re.search(r'doka_tier_queue_running\{model="local-q"\} 3\.0', text)
    assert re.search(r'doka_tier_queue_full\{model="local-q"\} 1\.0', text)
    info = client(gw).models.retrieve("local-q")
    assert info.model_extra["doka"]["queue_limit"] == 2


def _row(html: str, model: str) -> str:
    m = re.search(rf"<tr><td>{re.escape(model)}</td>.*?</tr>", html)
    assert m, html[:3000]
    return m.group(0)


def test_console_models_page_shows_queues_chains_and_provider_allowance(gw):
    """Issue 34: per model, health, chain, a local tier's queue and provider limits with what is left."""
    set_queue(gw, "local-q", 4, 2)
    assert ask(gw, "mock-groq").headers["x-doka-model"] == "mock-groq"  # one of its 3 a day
    with httpx.Client(base_url=gw.url + "/console", timeout=30) as c:
        assert c.post("/login", data={"key": MASTER}).status_code == 303
        page = c.get("/models")
    assert page.status_code == 200
    assert "local queue" in page.text and "provider limits" in page.text
    local = _row(page.text, "local-q")
    assert "local-q → mock-mixtral" in local
    assert "waiting 4 · running 2 · limit 2 · full: skipped" in local and "queue full" in local
    assert "limit 1" in _row(page.text, "local-solo") and "waiting 0" in _row(page.text, "local-solo")
    groq = _row(page.text, "mock-groq")
    assert re.search(r"rpm 49 of 50 left, resets in \d+ s; rpd 2 of 3 left, resets in [\d.]+ (h|min)", groq), groq
    assert '<span class="ok">ok</span>' in groq
