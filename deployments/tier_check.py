"""Can a vLLM tier start at all? Checked before anything is deployed (Ray-free).

Each vLLM tier is its own Serve application (deployments/tier_apps.py), so one that fails to
start fails only itself. The causes seen on a first run (weights missing, no GPU for a GPU engine,
vLLM absent) are knowable before deploying, though, and deserve a reason a person can act on
rather than an engine traceback after Serve's retries: the gateway's builder (app/graph.py)
passes them to the ingress, which names the tier on /health/readiness from the start and skips
it in chains, and the tier's own builder refuses with the same reason.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from app.config import DokaConfig, ModelEntry


def _wants_gpu(entry: ModelEntry) -> bool:
    v = entry.vllm
    if v is None:
        return False
    if v.accelerator_type:
        return True
    bundles = (v.placement_group_config or {}).get("bundles") or []
    if bundles:
        return any(float(b.get("GPU", 0) or 0) > 0 for b in bundles if isinstance(b, dict))
    return True  # ray.serve.llm's default placement asks for one GPU per engine


def tier_problem(entry: ModelEntry, cluster_gpus: float | None = None,
                 vllm_importable: bool | None = None) -> str | None:
    """Why this vLLM tier cannot start here, or None. `cluster_gpus`: GPUs in the cluster (None:
    unknown, not checked); `vllm_importable`: override for tests (None: look)."""
    if entry.provider != "vllm" or entry.vllm is None:
        return None
    if vllm_importable is None:
        vllm_importable = importlib.util.find_spec("vllm") is not None
    if not vllm_importable:
        return "vllm is not installed (pip install 'doka[vllm]')"
    source = entry.vllm.model_source
    if source.startswith((".", "/", "~")) and not Path(os.path.expanduser(source)).exists():
        return f"weights not found at {source} (run `doka models make-tiny` for the demo model)"
    if cluster_gpus is not None and cluster_gpus <= 0 and _wants_gpu(entry):
        return "needs a GPU and the cluster has none (give it CPU placement_group_config bundles to run on CPU)"
    return None


def down_tiers(cfg: DokaConfig, cluster_resources: dict[str, Any] | None = None) -> dict[str, str]:
    """model name -> why it cannot start, for every vLLM tier of the config that cannot."""
    gpus = None if cluster_resources is None else float(cluster_resources.get("GPU", 0) or 0)
    out = {}
    for m in cfg.model_list:
        problem = tier_problem(m, gpus)
        if problem:
            out[m.model_name] = problem
    return out
