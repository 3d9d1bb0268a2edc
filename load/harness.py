"""The bench harness: a mock upstream and a `doka run` gateway on free loopback ports, and the
load generators (wrk, or a bounded asyncio client) that drive them.

Shared by every bench command (load/bench_gateway.py, bench_keys, bench_memory, bench_cpu,
bench_endpoints, bench_providers, compare); it imports none of them, so the benches form no
import cycle. Only 127.0.0.1 is ever targeted; every run is bounded in time.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from load.isolation import free_port, haproxy_env, kill_haproxy, on_port, wait_http

REPO = Path(__file__).resolve().parent.parent
MASTER_KEY = "sk-doka-bench-master"  # a throwaway cluster's master key, only on 127.0.0.1
REGISTRY = REPO / ".doka" / "registry"  # where `doka router bootstrap` publishes
BODY = {"model": "{model}", "messages": [{"role": "user", "content": "Say hello to the benchmark."}], "max_tokens": 16}


def bench_config(mock_port: int, server_port: int, keys: bool = False, learned: bool = False,
                 data_dir: str | None = None) -> dict[str, Any]:
    """config/default.yaml with no vLLM model, pointed at the bench's ports.

    keys: require gateway keys (master key MASTER_KEY; the ledger lives under data_dir).
    learned: `auto` uses the latest artifact in REGISTRY (else weighted round-robin).
    """
    raw = yaml.safe_load((REPO / "config" / "default.yaml").read_text())
    vllm = {m["model_name"] for m in raw["model_list"] if m.get("provider") == "vllm"}
    raw["model_list"] = [m for m in raw["model_list"] if m["model_name"] not in vllm]
    for m in raw["model_list"]:
        if "api_base" in m.get("litellm_params", {}):
            m["litellm_params"]["api_base"] = on_port(m["litellm_params"]["api_base"], mock_port)
    raw["fallbacks"] = {k: [x for x in v if x not in vllm] for k, v in raw.get("fallbacks", {}).items()}
    raw["server"]["port"] = server_port
    raw["fallbacks"] = {k: v for k, v in raw["fallbacks"].items() if v}
    if data_dir:
        raw["server"]["data_dir"] = data_dir
    raw["accounts"] = {"require_keys": keys, "master_key": MASTER_KEY if keys else None}
    if learned:
        raw["router"].update(strategy="learned", registry=str(REGISTRY), artifact="latest")
    else:
        raw["router"].update(strategy="weighted_round_robin", registry=None)
    return raw


def gateway_env(tag: str) -> dict[str, str]:
    """Env for a bench's `doka run`: Serve's throughput mode, its own HAProxy ports and files
    (load/isolation.py), and the dev signing key `doka router bootstrap` wrote (the bench's
    data dir is a temp dir)."""
    base = Path(tempfile.mkdtemp(prefix="dkhb", dir="/tmp"))  # short: HAProxy caps socket paths
    env = {**os.environ, "MOCK_API_KEY": os.environ.get("MOCK_API_KEY", "mock-key"),
           "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled",
           **haproxy_env(base)}
    key = REPO / ".doka" / "signing.key"
    if key.exists() and not os.environ.get("DOKA_SIGNING_KEY"):
        env.setdefault("DOKA_SIGNING_KEY_FILE", str(key))
    return env


def create_key(gateway: str) -> str:
    """A virtual key with quotas, budget and rate limits all far from exhausted (full accounting path)."""
    import httpx

    for _ in range(60):  # the ingress may answer health checks before its accounts seam is bound
        r = httpx.post(f"{gateway}/key/generate", headers={"Authorization": f"Bearer {MASTER_KEY}"},
                       json={"tokens_per_day": 10**12, "tokens_per_month": 10**12, "max_budget": 10**6,
                             "budget_period": "month", "rpm_limit": 10**7, "tpm_limit": 10**12}, timeout=60)
        if r.status_code == 200:
            break
        time.sleep(1)
    if r.status_code != 200:
        raise RuntimeError(f"{gateway}/key/generate: {r.status_code} {r.text[:300]}")
    return r.json()["key"]


# ---------------------------------------------------------------- load generators
_LUA = """wrk.method = "POST"
wrk.body = [[{body}]]
wrk.headers["Content-Type"] = "application/json"
{headers}
"""


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def run_wrk(url: str, body: dict[str, Any], clients: int, duration: int,
            headers: dict[str, str] | None = None) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        extra = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in (headers or {}).items())
        f.write(_LUA.format(body=json.dumps(body), headers=extra))
        script = f.name
    try:
        out = subprocess.run(
            ["wrk", f"-t{min(clients, 2)}", f"-c{clients}", f"-d{duration}s", "--timeout", "10s", "--latency",
             "-s", script, url], capture_output=True, text=True, timeout=duration + 30, check=True).stdout
    finally:
        os.unlink(script)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {m.group(1): _ms(m.group(2), m.group(3)) for m in re.finditer(r"\s(50|99)%\s+([\d.]+)(us|ms|s|m)\b", out)}
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {"rps": rps, "p50": lat["50"], "p99": lat["99"], "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": errors.group(0) if errors else ""}


async def py_load(url: str, body: dict[str, Any], clients: int, duration: int,
                   headers: dict[str, str] | None = None) -> dict[str, float]:
    import aiohttp

    latencies: list[float] = []
    failures = 0
    payload = json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    deadline = time.perf_counter() + duration

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal failures
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            async with session.post(url, data=payload, headers=hdrs) as resp:
                await resp.read()
                if resp.status != 200:
                    failures += 1
            latencies.append((time.perf_counter() - t) * 1000)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731
    return {"rps": len(latencies) / elapsed, "p50": pick(0.5), "p99": pick(0.99), "non2xx": failures,
            "socket_errors": ""}


def load(tool: str, url: str, body: dict[str, Any], clients: int, duration: int,
         headers: dict[str, str] | None = None) -> dict[str, float]:
    if tool == "wrk":
        return run_wrk(url, body, clients, duration, headers)
    return asyncio.run(py_load(url, body, clients, duration, headers))


def start_mock(latency_ms: float) -> tuple[subprocess.Popen, int]:
    """The in-repo mock upstream on a free loopback port, once it answers."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "load.mock_upstream", "--port", str(port),
                             "--latency-ms", str(latency_ms)], cwd=REPO, stdout=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{port}/health", 30)
    return proc, port


# ---------------------------------------------------------------- the gateway under test
class Gateway:
    """`doka run` on a bench config in its own session; `headers` carry a virtual key when keys are on."""

    def __init__(self, mock_port: int, keys: bool, learned: bool, perf: bool = True, tag: str = "bench",
                 log: Path | None = None, extra_args: tuple[str, ...] = (),
                 deployments: dict[str, Any] | None = None) -> None:
        self.keys, self.learned = keys, learned
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = tempfile.mkdtemp(prefix=f"doka-{tag}-")
        cfg = Path(self.data_dir) / "doka.yaml"
        raw = bench_config(mock_port, self.port, keys=keys, learned=learned, data_dir=self.data_dir)
        for section, options in (deployments or {}).items():  # e.g. {"egress": {"num_replicas": 2}}
            raw["deployments"][section] = {**(raw["deployments"].get(section) or {}), **options}
        cfg.write_text(yaml.safe_dump(raw))
        self.env = gateway_env(tag)
        self.env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="dkrb")  # its own Ray session dir, not /tmp/ray
        cmd = [sys.executable, "-m", "app.cli", "run", "--config", str(cfg), "--no-mock"]
        if not perf:
            cmd.append("--no-perf")
        cmd.extend(extra_args)
        self.log = log or Path(tempfile.gettempdir()) / f"doka-{tag}-{self.port}.log"
        self.cmd = cmd
        self.proc = self._spawn()
        self.headers: dict[str, str] = {}

    def _spawn(self) -> subprocess.Popen:
        return subprocess.Popen(self.cmd, cwd=REPO, env=self.env, stdout=self.log.open("a"),
                                stderr=subprocess.STDOUT, start_new_session=True)

    def ready(self, timeout: float = 240, attempts: int = 3) -> None:
        """Wait for the gateway; `doka run` is restarted when Ray's fixed 30 s node start-up
        wait ran out (it does on a 2-core box at load average 20+)."""
        import httpx

        deadline = time.time() + timeout * attempts
        while True:
            try:
                if httpx.get(f"{self.url}/health/liveliness", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                attempts -= 1
                if attempts <= 0:
                    raise RuntimeError(f"doka run exited with {self.proc.returncode} (log: {self.log})")
                self.proc = self._spawn()
            if time.time() > deadline:
                raise RuntimeError(f"{self.url} did not come up (log: {self.log})")
            time.sleep(0.5)
        if self.keys:
            self.headers = {"Authorization": f"Bearer {create_key(self.url)}"}
        if self.learned:  # the artifact loads in the background: wait until `auto` is learned
            import httpx

            deadline = time.time() + timeout
            while time.time() < deadline:
                if httpx.get(f"{self.url}/health/readiness", timeout=10).json().get("status") == "ok":
                    break
                time.sleep(1)
            else:
                raise RuntimeError("the learned router never became ready (run `doka router bootstrap`)")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        kill_haproxy(self.env)
        shutil.rmtree(self.env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"], ignore_errors=True)
        shutil.rmtree(self.data_dir, ignore_errors=True)
        shutil.rmtree(self.env["RAY_TMPDIR"], ignore_errors=True)


# ---------------------------------------------------------------- the bench
