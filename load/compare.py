"""Side-by-side bench: the mock upstream directly, doka, and a LiteLLM proxy on the same mock.

One run starts a mock upstream (50 ms latency), `doka run` and `litellm --config` (the LiteLLM
proxy from the installed `litellm[proxy]`), both with the same model list pointed at the same
mock, then measures all three at 1, 10 and 50 concurrent clients (wrk when installed, else a
bounded aiohttp loop): requests/s, p50/p99, the latency added over the mock's own at the same
concurrency, errors, and the peak RSS of each process tree (sampled every 0.5 s). It writes a
Markdown section into docs/benchmarks.md and a plot to docs/bench-compare.png:

    python -m load.compare                       # = doka bench --compare (part of make bench)
    python -m load.compare --clients 1,10,50 --duration 15 --no-docs

Only 127.0.0.1 is ever targeted and every step is bounded in time.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from load.harness import BODY, MASTER_KEY, REGISTRY, Gateway, wait_http, bench_config, load
from load.isolation import free_port

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"
PLOT = REPO / "docs" / "bench-compare.png"
START, END = "<!-- bench-compare:start -->", "<!-- bench-compare:end -->"
MODEL = "mock-gpt-3.5"  # doka and LiteLLM both call it by this name; the mock sees `gpt-3.5-turbo`


def litellm_proxy_config(doka_raw: dict[str, Any]) -> dict[str, Any]:
    """The same model list (LiteLLM's own `model_list` shape, which doka's config follows)."""
    models = [{"model_name": m["model_name"], "litellm_params": dict(m["litellm_params"])}
              for m in doka_raw["model_list"] if m.get("provider", "litellm") == "litellm"]
    return {"model_list": models,
            "litellm_settings": {"telemetry": False, "drop_params": True, "num_retries": 0},
            # a master key, no database: LiteLLM checks the key and keeps no ledger (doka does both)
            "general_settings": {"disable_spend_logs": True, "master_key": MASTER_KEY}}


class Tree:
    """A started process and the peak RSS of its whole tree (children included, e.g. Ray workers)."""

    def __init__(self, name: str, proc: subprocess.Popen) -> None:
        self.name, self.proc, self.peak = name, proc, 0
        self.gateway: Any = None  # doka's load.bench_gateway.Gateway, stopped with its HAProxy
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def processes(self) -> list[Any]:
        """The whole tree and session (Ray's daemons and workers), plus doka's HAProxy, which
        leaves the tree (load/bench_memory.py)."""
        from load.bench_memory import session_processes

        extra = self.gateway.env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"] if self.gateway is not None else None
        return session_processes(self.proc.pid, extra)

    def rss(self) -> int:
        import psutil

        total = 0
        for p in self.processes():
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def pss(self) -> int:
        """Proportional set size of the whole tree: shared pages split fairly, so it is what the
        node really holds (an RSS sum counts the interpreter and Ray's library once per process)."""
        from load.bench_memory import snapshot

        return sum(r.pss for r in snapshot(self.processes()))

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            self.peak = max(self.peak, self.rss())

    def stop(self) -> None:
        self._stop.set()
        if self.gateway is not None:
            self.gateway.stop()  # doka: also its HAProxy and temp dirs
            return
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def start_all(latency_ms: float, workdir: Path) -> tuple[dict[str, Tree], dict[str, str], dict[str, dict[str, str]]]:
    """Mock, doka and LiteLLM proxy on free ports; returns their trees, chat URLs and auth headers.

    doka runs as in production: keys required (a virtual key with quotas: key check, reservation,
    settle, ledger row per request) and `auto` answered by the learned router.
    """
    env = {**os.environ, "MOCK_API_KEY": os.environ.get("MOCK_API_KEY", "mock-key"),
           "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}
    trees: dict[str, Tree] = {}
    mock_port, litellm_port = free_port(), free_port()
    trees["mock upstream"] = Tree("mock upstream", _spawn(
        [sys.executable, "-m", "load.mock_upstream", "--port", str(mock_port), "--latency-ms", str(latency_ms)],
        env, workdir / "mock.log"))
    wait_http(f"http://127.0.0.1:{mock_port}/health", 30)
    raw = bench_config(mock_port, 0)
    (workdir / "litellm.yaml").write_text(yaml.safe_dump(litellm_proxy_config(raw)))
    learned = (REGISTRY / "latest").exists()
    gw = Gateway(mock_port, keys=True, learned=learned, tag="compare", log=workdir / "doka.log")
    trees["doka"] = Tree("doka", gw.proc)
    trees["doka"].gateway = gw
    litellm_bin = shutil.which("litellm", path=str(Path(sys.executable).parent)) or "litellm"
    trees["LiteLLM proxy"] = Tree("LiteLLM proxy", _spawn(
        [litellm_bin, "--config", str(workdir / "litellm.yaml"), "--host", "127.0.0.1", "--port", str(litellm_port),
         "--num_workers", "1"], env, workdir / "litellm.log"))
    gw.ready()
    trees["doka"].proc = gw.proc  # ready() may have restarted it
    wait_http(f"http://127.0.0.1:{litellm_port}/health/liveliness", 240, workdir / "litellm.log")
    doka = f"{gw.url}/v1/chat/completions"
    urls = {"mock upstream": f"http://127.0.0.1:{mock_port}/v1/chat/completions",
            "doka": doka, "doka auto": doka,
            "LiteLLM proxy": f"http://127.0.0.1:{litellm_port}/v1/chat/completions"}
    headers = {"mock upstream": {}, "doka": gw.headers, "doka auto": gw.headers,
               "LiteLLM proxy": {"Authorization": f"Bearer {MASTER_KEY}"}}
    return trees, urls, headers


def measure(urls: dict[str, str], clients: list[int], duration: int, tool: str,
            headers: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    rows = []
    for name, url in urls.items():  # warm-up: connections, lazy imports, caches
        load(tool, url, _body(name), 4, 2, headers.get(name))
    for n in clients:
        for name, url in urls.items():
            r = load(tool, url, _body(name), n, duration, headers.get(name))
            errors = int(r["non2xx"]) + _socket_errors(str(r.get("socket_errors", "")))
            rows.append({"clients": n, "target": name, "rps": r["rps"], "p50": r["p50"], "p99": r["p99"],
                         "errors": errors})
            print(f"  {n:>3} clients  {name:<14} {r['rps']:8.1f} req/s  p50 {r['p50']:7.1f} ms  "
                  f"p99 {r['p99']:7.1f} ms  errors {errors}", flush=True)
    return rows


def _body(target: str) -> dict[str, Any]:
    return {**BODY, "model": {"mock upstream": "gpt-3.5-turbo", "doka auto": "auto"}.get(target, MODEL)}


def _socket_errors(text: str) -> int:
    return sum(int(x) for x in re.findall(r"\b(?:connect|read|write|timeout) (\d+)", text))


# ---------------------------------------------------------------- output
def _mem(mem: dict[str, int], target: str) -> int:
    return mem.get(target, mem.get(target.split()[0], 0))


def table(rows: list[dict[str, Any]], peaks: dict[str, int], idle: dict[str, int] | None = None,
          idle_pss: dict[str, int] | None = None) -> str:
    """One row per (clients, target); memory columns are whole process trees (`doka auto` is the
    same doka process tree as `doka`)."""
    idle, idle_pss = idle or {}, idle_pss or {}
    direct = {r["clients"]: r for r in rows if r["target"] == "mock upstream"}
    out = ["| clients | target | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms | errors | idle RSS MiB "
           "| idle PSS MiB | peak RSS MiB |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        d = direct.get(r["clients"])
        added = ("", "") if r["target"] == "mock upstream" or d is None else (
            f"{r['p50'] - d['p50']:.1f}", f"{r['p99'] - d['p99']:.1f}")
        out.append(f"| {r['clients']} | {r['target']} | {r['rps']:.1f} | {r['p50']:.1f} | {r['p99']:.1f} | "
                   f"{added[0]} | {added[1]} | {r['errors']} | {_mem(idle, r['target']) / 2**20:.0f} | "
                   f"{_mem(idle_pss, r['target']) / 2**20:.0f} | {_mem(peaks, r['target']) / 2**20:.0f} |")
    return "\n".join(out)


def verdict(rows: list[dict[str, Any]], clients: int) -> str:
    at = {r["target"]: r for r in rows if r["clients"] == clients}
    d, l = at.get("doka"), at.get("LiteLLM proxy")
    if not d or not l:
        return f"no measurement at {clients} clients"
    ratio = d["rps"] / l["rps"] if l["rps"] else float("inf")
    rps_ok, p99_ok = ratio >= 4.0, d["p99"] < l["p99"]
    text = (f"At {clients} clients doka served {ratio:.2f}x LiteLLM proxy's requests/s "
            f"(target >= 4x: {'met' if rps_ok else 'NOT met'}) with p99 {d['p99']:.0f} ms vs {l['p99']:.0f} ms "
            f"(target lower: {'met' if p99_ok else 'NOT met'})")
    a = at.get("doka auto")
    if a and d["rps"]:
        share = a["rps"] / d["rps"]
        text += f"; `auto` ran at {share:.0%} of explicit (target >= 85%: {'met' if share >= 0.85 else 'NOT met'})"
    return text + "."


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for target in dict.fromkeys(r["target"] for r in rows):
        pts = [r for r in rows if r["target"] == target]
        xs = [r["clients"] for r in pts]
        ax1.plot(xs, [r["rps"] for r in pts], marker="o", label=target)
        ax2.plot(xs, [r["p99"] for r in pts], marker="o", label=target)
    ax1.set(xlabel="concurrent clients", ylabel="requests/s", title="throughput", xscale="log")
    ax2.set(xlabel="concurrent clients", ylabel="p99 latency (ms)", title="p99 latency", xscale="log")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("mock upstream (50 ms) direct vs doka vs LiteLLM proxy")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_doc(section: str, path: Path = DOC) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{START}\n{section.strip()}\n{END}"
    if START in text and END in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clients", default="1,10,50", help="comma-separated concurrent client counts")
    p.add_argument("--duration", type=int, default=15, help="seconds per measurement")
    p.add_argument("--latency-ms", type=float, default=50.0, help="mock upstream latency")
    p.add_argument("--tool", choices=["auto", "wrk", "python"], default="auto")
    p.add_argument("--no-docs", action="store_true", help="print only; leave docs/ untouched")


def run_compare(args: argparse.Namespace) -> int:
    tool = args.tool if args.tool != "auto" else ("wrk" if shutil.which("wrk") else "python")
    clients = [int(c) for c in str(args.clients).split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="doka-compare-"))
    la_before = os.getloadavg()
    trees: dict[str, Tree] = {}
    try:
        trees, urls, headers = start_all(args.latency_ms, workdir)
        time.sleep(10)  # settle after start-up before the idle reading
        idle = {name: t.rss() for name, t in trees.items()}
        idle_pss = {name: t.pss() for name, t in trees.items()}
        for t in trees.values():
            t.peak = 0  # peaks under load only (start-up spikes are not the steady footprint)
        print(f"compare: tool={tool}, {args.duration}s per point, clients {clients}; logs in {workdir}", flush=True)
        rows = measure(urls, clients, args.duration, tool, headers)
        peaks = {name: max(t.peak, t.rss()) for name, t in trees.items()}
    finally:
        for t in reversed(list(trees.values())):
            t.stop()
    la_after = os.getloadavg()
    md = table(rows, peaks, idle, idle_pss)
    top = max(clients)
    cmd = "python -m load.compare" + (f" --clients {args.clients}" if args.clients != "1,10,50" else "") + (
        f" --duration {args.duration}" if args.duration != 15 else "")
    busy = max(la_before[0], la_after[0]) > 2 * (os.cpu_count() or 1)
    caveat = (f" CAVEAT: load average reached {max(la_before[0], la_after[0]):.0f} on {os.cpu_count()} cores "
              "(other work on the box), so these figures measure contention, not the gateways; rerun when "
              "idle." if busy else "")
    section = f"""## doka vs LiteLLM proxy

```bash
{cmd}    # or: doka bench --compare (make bench runs it)
```

Same mock upstream ({args.latency_ms:g} ms latency), same model list (`{MODEL}`). LiteLLM proxy: one
worker (`litellm --config ... --num_workers 1`, litellm {_litellm_version()}), master key, no
database (so no key lookup and no spend rows). doka: `doka run` (Ray Serve, one ingress, egress
and router replica, RAY_SERVE_THROUGHPUT_OPTIMIZED=1 with HAProxy), keys ON: every request
carries a virtual key with quotas, budget and rate limits (key check + reservation + settle +
ledger row); `doka auto` = `model: "auto"` answered by the learned router
({'latest artifact of `doka router bootstrap`' if (REGISTRY / 'latest').exists() else 'weighted round-robin: no artifact'}).
Load: {tool}, {args.duration} s per point, after a 2 s warm-up. "added" = the target's latency
minus the mock's own at the same concurrency. Memory: the whole process tree and session of each
target (doka: driver + Ray GCS/raylet/dashboard/agents + every replica + HAProxy); idle = 10 s
after start-up, before any load (RSS sums count shared pages once per process, PSS splits them);
peak = the largest RSS sum sampled every 0.5 s during the load. `doka auto` is the same doka
process tree as `doka`.
Load average before / after: {la_before[0]:.1f} / {la_after[0]:.1f} on a shared {os.cpu_count()}-core box.

{md}

**{verdict(rows, top)}**{caveat}

![side by side](bench-compare.png)
"""
    print("\n" + section)
    if not args.no_docs:
        plot(rows, PLOT)
        write_doc(section)
        print(f"compare: wrote {DOC.relative_to(REPO)} and {PLOT.relative_to(REPO)}")
    return 0


def _litellm_version() -> str:
    try:
        from importlib.metadata import version

        return version("litellm")
    except Exception:
        return "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load.compare", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_compare(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
