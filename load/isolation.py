"""One more gateway on a shared machine: free loopback ports and a private HAProxy.

Serve's HAProxy binds fixed ports (8404 stats, 9101 metrics) and files under
/tmp/haproxy-serve by default, so two clusters on one machine (a bench's and the test
session's, or the session's and a private `ray start --head`) fight over them and the loser's
proxy never starts. Benches and tests give each cluster its own through `haproxy_env`.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, log: Path | None = None, poll: float = 0.5) -> None:
    """Block until `url` answers 200; fail loudly (naming the process's log) instead of letting
    every request after it hit a dead port. Benches and tests alike wait through this."""
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(poll)
    raise RuntimeError(f"{url} did not come up within {timeout:g}s" + (f" (log: {log})" if log else ""))


def on_port(url: str, port: int) -> str:
    """`url` on 127.0.0.1:`port`, path kept: each mock provider lives under its own path
    (OpenAI `/v1`, Anthropic `/`, Gemini `/v1beta`, Cohere `/v2/chat`) on the one mock port."""
    u = urlsplit(url)
    return urlunsplit((u.scheme or "http", f"127.0.0.1:{port}", u.path, u.query, u.fragment))


def haproxy_env(base: Path) -> dict[str, str]:
    """Env giving one cluster's HAProxy its own ports and its files under `base`.

    Keep `base` short: HAProxy caps socket paths at 97 characters.
    """
    base.mkdir(parents=True, exist_ok=True)
    return {
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(base / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(base / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(base),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(base / "server-state"),
    }


def kill_haproxy(env: dict[str, str]) -> None:
    """Stop the HAProxy a cluster started with `env` (it outlives `ray stop`); only that one."""
    import psutil

    base = env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"]
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            if "haproxy" in (proc.info["name"] or "") and any(base in a for a in proc.info["cmdline"] or []):
                proc.kill()
        except psutil.Error:
            pass
