"""config/homelab.example.yaml (vLLM -> Ollama -> OpenAI, Groq and Gemini free tiers) parses with the
project's loader and means what its comments say; the Ollama tier's price and capabilities."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from app.capabilities import resolve
from app.config import load_config

REPO = Path(__file__).resolve().parent.parent
HOMELAB = REPO / "config" / "homelab.example.yaml"


def test_homelab_example_parses_with_the_home_chain_in_order():
    cfg = load_config(HOMELAB)
    assert cfg.chain_for("home") == ["qwen-gpu", "qwen-cpu", "gpt-4o-mini"]
    assert cfg.chain_for("qwen-gpu") == ["qwen-gpu", "qwen-cpu", "gpt-4o-mini"]
    assert cfg.chain_for("free") == ["groq-llama", "gemini-flash", "gpt-4o-mini"]
    ollama = cfg.model("qwen-cpu")
    assert ollama.litellm_params["model"] == "ollama_chat/qwen2.5:3b" and ollama.model_info.timeout == 120
    assert ollama.self_hosted and cfg.model("qwen-gpu").self_hosted and not cfg.model("gpt-4o-mini").self_hosted
    assert ollama.cost(1000, 1000) == 0.0  # no price set, self-hosted: free, not unknown
    assert cfg.model("gpt-4o-mini").cost(1000, 1000) > 0


def test_homelab_example_passes_doka_config_check():
    r = subprocess.run([sys.executable, "-m", "app.cli", "config", "check", str(HOMELAB)], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "home: qwen-gpu -> qwen-cpu -> gpt-4o-mini" in r.stdout


def test_an_ollama_model_is_priced_zero_unless_configured_and_its_capabilities_are_declared():
    cfg = load_config(REPO / "config" / "default.yaml")
    entry = cfg.model("mock-ollama")
    assert entry.cost(10, 10) == 0.0 and "mock-ollama" not in cfg.auto_candidates()
    asked = []
    caps = resolve(entry, lambda model: asked.append(model) or {"supports_function_calling": False})
    assert asked == []  # never LiteLLM's lookup: for Ollama it is an HTTP call to a server
    assert (caps.tools, caps.vision, caps.response_schema, caps.context_window) == (True, False, True, 32768)
    priced = entry.model_copy(update={"model_info": entry.model_info.model_copy(
        update={"input_cost_per_token": 1e-7, "output_cost_per_token": 2e-7})})
    assert priced.cost(10, 10) == 10 * 1e-7 + 10 * 2e-7  # configured: its price
