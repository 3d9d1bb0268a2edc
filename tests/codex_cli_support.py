"""The real Codex CLI (OpenAI's coding agent) for tests: installed from the npm registry (pinned)
into .doka/cache, and run with `codex exec --json` against a gateway on 127.0.0.1 only, over the
Responses API, as a user who adds doka as a model provider in Codex's config.toml does."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from tests.claude_code_support import dead_proxy_env, npm_binary
from tests.conftest import REPO

CODEX_VERSION = "0.171.0"  # pinned: the release these tests were written against
CACHE = REPO / ".doka" / "cache" / f"codex-{CODEX_VERSION}"

CONFIG = """model = "{model}"
model_provider = "doka"
check_for_update_on_startup = false

[model_providers.doka]
name = "doka"
base_url = "{base_url}"
env_key = "DOKA_API_KEY"
wire_api = "responses"
"""


def codex_binary() -> tuple[Path | None, str]:
    """(path of the `codex` binary, "") or (None, why not)."""
    return npm_binary("@openai/codex", CODEX_VERSION, "codex", CACHE)


def run_codex(binary: Path, home: Path, workdir: Path, base_url: str, api_key: str, model: str, prompt: str,
              timeout: float = 180) -> tuple[subprocess.CompletedProcess, list[dict[str, Any]]]:
    """`codex exec --json PROMPT` with doka as its only provider; (the process, its JSON events)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(CONFIG.format(model=model, base_url=base_url))
    keep = {k: os.environ[k] for k in ("PATH", "LANG", "TERM") if k in os.environ}
    env = {**keep, "HOME": str(home), "CODEX_HOME": str(home), "DOKA_API_KEY": api_key, **dead_proxy_env()}
    proc = subprocess.run([str(binary), "exec", "--json", "--skip-git-repo-check", prompt], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    events = []
    for line in proc.stdout.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return proc, events


def items(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The completed items of one kind (agent_message, command_execution, error) in Codex's events."""
    return [e["item"] for e in events if e.get("type") == "item.completed" and e.get("item", {}).get("type") == kind]
