"""Gateway overhead bench: the mock upstream directly vs the same upstream through doka.

Starts a mock upstream (default 50 ms latency) and `doka run` on free loopback ports, then
drives both with wrk (or a bounded asyncio load generator when wrk is missing) at each client
count, and prints a Markdown table: requests/s, p50, p99 and the gateway's added p50.
By default the gateway runs as in production: keys required (each request carries a virtual
key with quotas, so it pays key check + reservation + settle + a ledger row) and `auto`
answered by the learned router from `doka router bootstrap`; `--keys off` measures without, and
`--keys both` runs the two side by side (load/bench_keys.py).
Only 127.0.0.1 is ever targeted; every run is bounded in time.
"""

from __future__ import annotations

import argparse
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

from load.isolation import free_port, haproxy_env, kill_haproxy, on_port

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


def _wait_http(url: str, timeout: float, log: Path | None = None) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not come up within {timeout:g}s" + (f" (log: {log})" if log else ""))


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


async def _py_load(url: str, body: dict[str, Any], clients: int, duration: int,
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
    return asyncio.run(_py_load(url, body, clients, duration, headers))


def start_mock(latency_ms: float) -> tuple[subprocess.Popen, int]:
    """The in-repo mock upstream on a free loopback port, once it answers."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "load.mock_upstream", "--port", str(port),
                             "--latency-ms", str(latency_ms)], cwd=REPO, stdout=subprocess.DEVNULL)
    _wait_http(f"http://127.0.0.1:{port}/health", 30)
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
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clients", default="1,50", help="comma-separated concurrent client counts")
    p.add_argument("--duration", type=int, default=15, help="seconds per measurement")
    p.add_argument("--latency-ms", type=float, default=50.0, help="mock upstream latency")
    p.add_argument("--models", default="mock-gpt-3.5,auto", help="comma-separated doka model names to call")
    p.add_argument("--mock-answer", action="append", default=[], metavar="UPSTREAM_MODEL=TEXT",
                   help="a fixed answer for one upstream model (repeatable): makes a cascade's models agree")
    p.add_argument("--keys", choices=["on", "off", "both"], default="on",
                   help="on: every request carries a virtual key (auth + quota + ledger row); both: a "
                   "keys-off and a keys-on gateway side by side, alternated (load/bench_keys.py)")
    p.add_argument("--rounds", type=int, default=5, help="with --keys both: off/on pairs to alternate")
    p.add_argument("--router", choices=["learned", "static"], default="learned",
                   help="what answers `auto` (learned needs `doka router bootstrap`)")
    p.add_argument("--tool", choices=["auto", "wrk", "python"], default="auto")
    p.add_argument("--no-perf", action="store_true", help="run Serve without its throughput/HAProxy mode")
    p.add_argument("--skip-direct", action="store_true", help="skip measuring the mock upstream directly")
    p.add_argument("--memory", action="store_true",
                   help="instead: idle RSS/PSS/USS per process of a gateway node, by role (load/bench_memory.py)")
    p.add_argument("--no-dashboard", action="store_true", help="with --memory: `doka run --no-dashboard`")
    p.add_argument("--compare", action="store_true",
                   help="instead: mock vs doka vs LiteLLM proxy at 1/10/50 clients (load/compare.py)")


def run_bench(args: argparse.Namespace) -> int:
    if args.memory:
        from load.bench_memory import main as memory_main

        argv = ["--keys", "on" if args.keys == "both" else args.keys, "--router", args.router, "--processes"]
        return memory_main(argv + (["--no-perf"] if args.no_perf else []) + (["--no-dashboard"] if args.no_dashboard else []))
    if args.compare:
        from load.compare import main as compare_main

        argv = ["--duration", str(args.duration), "--latency-ms", str(args.latency_ms), "--tool", args.tool]
        if args.clients != "1,50":
            argv += ["--clients", args.clients]
        return compare_main(argv)
    tool = args.tool if args.tool != "auto" else ("wrk" if shutil.which("wrk") else "python")
    if args.keys == "both":
        from load.bench_keys import run_keys_ab

        return run_keys_ab(args, tool)
    clients = [int(c) for c in args.clients.split(",")]
    models = [m for m in args.models.split(",") if m]
    mock = gw = None
    la_before = os.getloadavg()
    try:
        mock, mock_port = start_mock(args.latency_ms)
        if args.mock_answer:
            import httpx

            answers = dict(a.split("=", 1) for a in args.mock_answer)
            httpx.post(f"http://127.0.0.1:{mock_port}/_mock/state", json={"answers": answers}, timeout=10).raise_for_status()
        gw = Gateway(mock_port, keys=args.keys == "on", learned=args.router == "learned", perf=not args.no_perf)
        gw.ready()
        url = f"{gw.url}/v1/chat/completions"
        for m in models:  # warm-up: connections, JIT caches, the router's first batches
            load(tool, url, {**BODY, "model": m}, 8, 3, gw.headers)
        rows = []
        for n in clients:
            direct = None if args.skip_direct else load(tool, f"http://127.0.0.1:{mock_port}/v1/chat/completions",
                                                        {**BODY, "model": "gpt-3.5-turbo"}, n, args.duration)
            rows.append((n, "mock upstream", direct, None))
            for m in models:
                rows.append((n, f"doka {m}", load(tool, url, {**BODY, "model": m}, n, args.duration, gw.headers), direct))
                r = rows[-1][2]
                print(f"  {n:>3} clients  doka {m:<14} {r['rps']:8.1f} req/s  p50 {r['p50']:7.1f} ms  "
                      f"p99 {r['p99']:7.1f} ms  errors {r['non2xx']}", flush=True)
    finally:
        if gw is not None:
            gw.stop()
        if mock is not None:
            mock.terminate()
            mock.wait(30)
    la = os.getloadavg()
    print(f"\nbench: tool={tool}, {args.duration}s per point, upstream latency {args.latency_ms:g} ms, "
          f"keys {args.keys}, auto router {args.router}, perf env {'off' if args.no_perf else 'on'}, "
          f"load average before/after {la_before[0]:.2f}/{la[0]:.2f}\n")
    print("| clients | target | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms | errors |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for n, name, r, direct in rows:
        if r is None:
            continue
        added = (f"{r['p50'] - direct['p50']:.1f}", f"{r['p99'] - direct['p99']:.1f}") if direct else ("", "")
        print(f"| {n} | {name} | {r['rps']:.1f} | {r['p50']:.1f} | {r['p99']:.1f} | {added[0]} | {added[1]} | "
              f"{r['non2xx']} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="doka bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_bench(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
