"""Idle memory of a gateway node, per process and per role: `doka bench --memory`.

Starts the mock upstream and `doka run` on config/default.yaml without its vLLM model (keys on,
the learned router when `doka router bootstrap` has run, like production), waits until it is
ready and then idle, and reports RSS, PSS and USS of every process the gateway started (its
whole session: driver, Ray's daemons, Serve's controller/proxy/replicas, idle workers, HAProxy),
grouped by role. PSS splits shared pages (the Python interpreter, Ray's core library) fairly
between processes, so the PSS total is what the node really holds; the RSS total double-counts.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from dataclasses import dataclass
from typing import Any

MIB = 1024 * 1024

# (role, pattern on the process title / command line); the first match wins.
ROLES: list[tuple[str, str]] = [
    ("Serve replica: Ingress", r"^ray::ServeReplica:[^ ]*:Ingress"),
    ("Serve replica: Router", r"^ray::ServeReplica:[^ ]*:Router"),
    ("Serve replica: Egress", r"^ray::ServeReplica:[^ ]*:Egress"),
    ("Serve replica: Accounts", r"^ray::ServeReplica:[^ ]*:Accounts"),
    ("Serve replica: other", r"^ray::ServeReplica:"),
    ("Serve controller", r"^ray::ServeController"),
    ("Serve proxy actor", r"^ray::ProxyActor"),
    ("Serve HAProxy manager", r"^ray::HAProxyManager"),
    ("HAProxy", r"^\S*/haproxy\b"),
    ("accounts core", r"^ray::AccountsCore"),
    ("Ray GCS", r"^\S*gcs_server"),
    ("Ray raylet", r"^\S*/raylet "),
    ("Ray dashboard agent", r"^ray::DashboardAgent|dashboard/agent\.py"),
    ("Ray runtime env agent", r"^ray::RuntimeEnvAgent|runtime_env/agent/main\.py"),
    ("Ray idle worker", r"^ray::IDLE"),
    ("Ray worker: other", r"^ray::"),
    ("Ray dashboard head", r"dashboard/dashboard\.py"),
    ("Ray dashboard head modules", r"^ray-dashboard-|ray\.dashboard|multiprocessing\.(forkserver|resource_tracker)"),
    ("Ray log monitor", r"_private/log_monitor\.py"),
    ("Ray autoscaler monitor", r"autoscaler/_private/monitor\.py"),
    ("driver (doka run)", r"app\.cli run"),
]


@dataclass
class Proc:
    pid: int
    role: str
    title: str
    rss: int
    pss: int
    uss: int


def role_of(title: str) -> str:
    for role, pattern in ROLES:
        if re.search(pattern, title):
            return role
    return "other: " + title[:60]


def process_title(p: Any) -> str:
    try:
        cmd = p.cmdline()
    except Exception:
        cmd = []
    return " ".join(cmd) or p.name()


def session_processes(root_pid: int, extra_match: str | None = None) -> list[Any]:
    """Every live process of `root_pid`'s session and tree, plus daemons whose command line
    names `extra_match` (Serve's HAProxy re-parents itself away from the tree)."""
    import psutil

    found: dict[int, Any] = {}
    try:
        root = psutil.Process(root_pid)
        for p in [root, *root.children(recursive=True)]:
            found[p.pid] = p
    except psutil.Error:
        pass
    for p in psutil.process_iter(["cmdline"]):
        try:
            if os.getsid(p.pid) == root_pid or (extra_match and any(extra_match in a for a in p.info["cmdline"] or [])):
                found.setdefault(p.pid, p)
        except (OSError, psutil.Error):
            pass
    return list(found.values())


def snapshot(procs: list[Any]) -> list[Proc]:
    """RSS/PSS/USS per process (PSS/USS read from /proc/PID/smaps_rollup)."""
    import psutil

    out = []
    for p in procs:
        try:
            m = p.memory_full_info()
            title = process_title(p)
            out.append(Proc(p.pid, role_of(title), title, m.rss, getattr(m, "pss", 0), m.uss))
        except psutil.Error:
            pass
    return out


def tree_rss(root_pid: int, extra_match: str | None = None) -> tuple[int, int]:
    """(RSS sum, PSS sum) in bytes of a whole process tree/session (for `doka bench --compare`)."""
    rows = snapshot(session_processes(root_pid, extra_match))
    return sum(r.rss for r in rows), sum(r.pss for r in rows)


def table(rows: list[Proc]) -> str:
    groups: dict[str, list[Proc]] = {}
    for r in rows:
        groups.setdefault(r.role, []).append(r)
    out = ["| role | processes | RSS MiB | PSS MiB | USS MiB |", "| --- | ---: | ---: | ---: | ---: |"]
    for role, rs in sorted(groups.items(), key=lambda kv: -sum(r.pss for r in kv[1])):
        out.append(f"| {role} | {len(rs)} | {sum(r.rss for r in rs) / MIB:.0f} | "
                   f"{sum(r.pss for r in rs) / MIB:.0f} | {sum(r.uss for r in rs) / MIB:.0f} |")
    out.append(f"| **total** | {len(rows)} | {sum(r.rss for r in rows) / MIB:.0f} | "
               f"**{sum(r.pss for r in rows) / MIB:.0f}** | {sum(r.uss for r in rows) / MIB:.0f} |")
    return "\n".join(out)


def warm_up(url: str, headers: dict[str, str]) -> None:
    """One explicit, one streamed and one `auto` request, so lazily loaded code is resident."""
    import httpx

    for body in ({"model": "mock-gpt-3.5"}, {"model": "mock-gpt-3.5", "stream": True}, {"model": "auto"}):
        r = httpx.post(f"{url}/v1/chat/completions", headers=headers, timeout=60,
                       json={**body, "messages": [{"role": "user", "content": "warm up"}], "max_tokens": 8})
        if r.status_code != 200:
            raise RuntimeError(f"warm-up {body}: {r.status_code} {r.text[:200]}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--idle-s", type=float, default=30, help="seconds to wait idle after ready before measuring")
    p.add_argument("--keys", choices=["on", "off"], default="on")
    p.add_argument("--router", choices=["learned", "static"], default="learned")
    p.add_argument("--no-perf", action="store_true", help="run Serve without its throughput/HAProxy mode")
    p.add_argument("--no-dashboard", action="store_true", help="run the gateway with `doka run --no-dashboard`")
    p.add_argument("--processes", action="store_true", help="also list every process")


def run_memory(args: argparse.Namespace) -> int:
    from load.harness import REGISTRY, Gateway, start_mock

    learned = args.router == "learned" and (REGISTRY / "latest").exists()
    mock, mock_port = start_mock(50.0)
    gw = Gateway(mock_port, keys=args.keys == "on", learned=learned, perf=not args.no_perf, tag="mem",
                 extra_args=("--no-dashboard",) if args.no_dashboard else ())
    try:
        t0 = time.time()
        gw.ready()
        warm_up(gw.url, gw.headers)
        print(f"ready after {time.time() - t0:.0f} s; idle {args.idle_s:g} s ...", flush=True)
        time.sleep(args.idle_s)
        rows = snapshot(session_processes(gw.proc.pid, gw.env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"]))
        load = os.getloadavg()
        print(f"\nidle gateway node (default config without vLLM, keys {args.keys}, "
              f"router {'learned' if learned else 'static'}, perf mode {'off' if args.no_perf else 'on'}, "
              f"dashboard {'off' if args.no_dashboard else 'on'}); "
              f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n")
        print(table(rows))
        if args.processes:
            print()
            for r in sorted(rows, key=lambda r: -r.pss):
                print(f"{r.pid:>8} {r.rss / MIB:7.0f} {r.pss / MIB:7.0f} {r.uss / MIB:7.0f}  {r.role:32} {r.title[:110]}")
    finally:
        gw.stop()
        mock.terminate()
        mock.wait(10)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    return run_memory(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
