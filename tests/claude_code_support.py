"""The real Claude Code CLI for tests: installed from the npm registry (pinned) into
.doka/cache, and run in print mode against a gateway on 127.0.0.1 only."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.conftest import REPO

CLAUDE_CODE_VERSION = "2.1.332"  # pinned: the 2.1.x that today's tests were written against
CACHE = REPO / ".doka" / "cache" / f"claude-code-{CLAUDE_CODE_VERSION}"


def npm_binary(package: str, version: str, binary: str, cache: Path) -> tuple[Path | None, str]:
    """(path of an npm CLI's binary, "") or (None, why not): the cached copy in `cache`, else
    `npm install` of the pinned version there (the registry is the one network this machine has)."""
    path = cache / "node_modules" / ".bin" / binary
    if path.exists():
        return path, ""
    npm = shutil.which("npm")
    if npm is None:
        return None, f"npm is not installed and no cached {package} is in {cache}"
    try:
        proc = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(cache), f"{package}@{version}"],
                              capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return None, f"npm install of {package} timed out (registry unreachable?)"
    if proc.returncode != 0 or not path.exists():
        return None, f"npm could not install {package}@{version}: {proc.stderr[-300:]}"
    return path, ""


def claude_binary() -> tuple[Path | None, str]:
    """(path of the `claude` binary, "") or (None, why not)."""
    return npm_binary("@anthropic-ai/claude-code", CLAUDE_CODE_VERSION, "claude", CACHE)


def dead_proxy_env() -> dict[str, str]:
    """Every HTTP(S) connection but 127.0.0.1's goes to a dead proxy: the CLI reaches the gateway only."""
    return {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
            "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9",
            "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}


def offline_env(home: Path, base_url: str, api_key: str, model: str) -> dict[str, str]:
    """Claude Code's environment: the gateway as its API, nothing else reachable.

    Telemetry, error reports, auto-update and other non-essential traffic are off, and every
    other HTTP(S) connection goes to a dead proxy on 127.0.0.1 (only 127.0.0.1 bypasses it).
    """
    keep = {k: os.environ[k] for k in ("PATH", "LANG", "TERM") if k in os.environ}
    return {**keep, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
            "ANTHROPIC_BASE_URL": base_url, "ANTHROPIC_API_KEY": api_key,
            "ANTHROPIC_MODEL": model, "ANTHROPIC_SMALL_FAST_MODEL": model,
            "ANTHROPIC_DEFAULT_HAIKU_MODEL": model, "ANTHROPIC_DEFAULT_SONNET_MODEL": model,
            "ANTHROPIC_DEFAULT_OPUS_MODEL": model,
            "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1", "DISABLE_AUTOUPDATER": "1",
            "DISABLE_BUG_COMMAND": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "CLAUDE_CODE_ENABLE_TELEMETRY": "0", **dead_proxy_env()}


def run_claude(binary: Path, workdir: Path, env: dict[str, str], prompt: str, model: str,
               *extra: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), "-p", prompt, "--model", model, *extra], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
