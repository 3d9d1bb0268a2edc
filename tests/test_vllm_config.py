"""Config entries -> ray.serve.llm LLMConfig / LLMServer deployments, and the tiny model
generator. No engine is started here, but ray.serve.llm imports vLLM (slow on 2 cores)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from app.config import ModelEntry, load_config
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def _entry(**vllm) -> ModelEntry:
    return ModelEntry.model_validate({"model_name": "m", "provider": "vllm", "vllm": {"model_source": "org/model", **vllm}})


def test_default_config_local_tiny_maps_to_a_cpu_llm_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from deployments.tier_apps import deployment_name
    from deployments.vllm import build_vllm_models, llm_config_for

    monkeypatch.chdir(REPO)
    cfg = load_config(REPO / "config" / "default.yaml")
    llm = llm_config_for(cfg.model("local-tiny"))
    assert llm.model_id == "local-tiny"
    assert llm.model_loading_config.model_source == str(REPO / ".doka" / "models" / "tiny-llama")
    assert llm.engine_kwargs == {"max_model_len": 512, "dtype": "float32", "enforce_eager": True}
    assert llm.placement_group_config == {"bundles": [{"CPU": 1}]}
    assert llm.accelerator_config.kind == "cpu"
    assert llm.runtime_env["env_vars"]["VLLM_CPU_KVCACHE_SPACE"] == "1"
    apps = build_vllm_models(cfg)
    assert list(apps) == ["local-tiny"]
    dep = apps["local-tiny"]._bound_deployment
    assert dep.name == "LLMServer:local-tiny" == deployment_name("local-tiny")  # what the ingress asks for
    assert dep.func_or_class.__name__ == "DokaLLMServer"


def test_gpu_example_maps_accelerator_autoscaling_and_hub_id() -> None:
    from deployments.vllm import llm_config_for

    cfg = load_config(REPO / "config" / "gpu.example.yaml")
    entry = next(m for m in cfg.model_list if m.provider == "vllm")
    llm = llm_config_for(entry)
    assert llm.model_loading_config.model_source == entry.vllm.model_source  # hub id untouched
    assert llm.accelerator_type == entry.vllm.accelerator_type
    assert llm.accelerator_config.kind == "gpu"
    auto = llm.deployment_config["autoscaling_config"]
    assert (auto["min_replicas"], auto["max_replicas"]) == (entry.vllm.min_replicas, entry.vllm.max_replicas)
    assert auto["target_ongoing_requests"] > 0
    assert "VLLM_CPU_KVCACHE_SPACE" not in ((llm.runtime_env or {}).get("env_vars") or {})


def test_lora_and_runtime_env_pass_through() -> None:
    from deployments.vllm import llm_config_for

    llm = llm_config_for(_entry(lora_config={"dynamic_lora_loading_path": "s3://bucket/loras", "max_num_adapters_per_replica": 4},
                                runtime_env={"env_vars": {"FOO": 1}}, min_replicas=0, max_replicas=3))
    assert llm.lora_config.dynamic_lora_loading_path == "s3://bucket/loras"
    assert llm.lora_config.max_num_adapters_per_replica == 4
    assert llm.runtime_env["env_vars"]["FOO"] == "1"
    assert llm.deployment_config["autoscaling_config"]["min_replicas"] == 0


def test_stream_batching_interval_reaches_llm_server_config() -> None:
    from deployments.vllm import llm_config_for

    assert llm_config_for(_entry(stream_batching_interval_ms=0)).experimental_configs == {"stream_batching_interval_ms": 0}
    assert "stream_batching_interval_ms" not in llm_config_for(_entry()).experimental_configs  # ray.serve.llm's default
    with pytest.raises(ValueError):
        _entry(stream_batching_interval_ms=-1)


def test_start_retries_is_the_deployments_constructor_retry_count() -> None:
    from ray.serve._private.config import DeploymentConfig

    from deployments.vllm import llm_config_for

    assert llm_config_for(_entry(start_retries=1)).deployment_config["max_constructor_retry_count"] == 1
    unset = llm_config_for(_entry()).deployment_config
    assert "max_constructor_retry_count" not in unset  # Serve's own default applies
    assert DeploymentConfig(**unset).max_constructor_retry_count == 20  # bounded by 3 per replica in Serve
    with pytest.raises(ValueError):
        _entry(start_retries=0)


def test_non_vllm_entry_is_refused() -> None:
    from deployments.vllm import llm_config_for

    entry = ModelEntry.model_validate({"model_name": "x", "litellm_params": {"model": "openai/gpt-4o"}})
    with pytest.raises(ValueError, match="not a `provider: vllm` entry"):
        llm_config_for(entry)


def test_tiny_model_generation_is_deterministic_and_loadable(tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    from deployments.local_models import fingerprint, make_tiny_model

    a = make_tiny_model(tmp_path / "a")
    b = make_tiny_model(tmp_path / "b")
    assert fingerprint(a) == fingerprint(b)
    conf = AutoConfig.from_pretrained(a)
    assert conf.model_type == "llama" and conf.hidden_size // conf.num_attention_heads >= 64
    tok = AutoTokenizer.from_pretrained(a)
    prompt = tok.apply_chat_template([{"role": "user", "content": "héllo, wörld"}], tokenize=False,
                                     add_generation_prompt=True)
    assert prompt.endswith("<|assistant|>\n")
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids  # byte-level: any text encodes
    assert yaml.safe_load((a / "doka_tiny_spec.json").read_text())["seed"] == 0
