"""What every featurizer shares: ids and budgets, the protocol, errors, the cache dir, and the row
normalisation and head+tail truncation they all apply. No model is loaded here."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np

DEFAULT_FEATURIZER_ID = "minilm-l6-v2"
DEFAULT_MAX_TOKENS = 48
ONNX_OPSET = 17
STATIC_FEATURIZER_ID = "minilm-l6-v2-static"
STATIC_MAX_TOKENS = 256
# What `doka router train` uses unless told otherwise: the static embedding routes better than the
# full transformer at 48 tokens at ~1/30 of the cost, and the prompt statistics are what carries
# to unseen tasks (leave-one-task-out, docs/benchmarks.md).
ROUTING_FEATURIZER_ID = STATIC_FEATURIZER_ID + "+stats"
STATIC_METHOD = "m2v1"  # part of the fingerprint: a change to the distillation invalidates artifacts
STATS_SUFFIX = "+stats"  # `<featurizer>+stats`: the embedding plus task-agnostic prompt statistics


class FeaturizerError(ValueError):
    """An unknown featurizer id or a featurizer that cannot be built here."""


class Featurizer(Protocol):
    id: str
    dim: int
    fingerprint: str

    def embed(self, texts: list[str]) -> np.ndarray: ...


def cache_dir() -> Path:
    """Where derived files (ONNX graph, embedding cache, fetched artifacts) live."""
    return Path(os.environ.get("DOKA_CACHE_DIR", ".doka/cache")).expanduser()


def l2_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def head_tail(items, budget: int):
    """At most `budget` items: the first quarter and the last three quarters (few-shot and long
    prompts carry the actual question at the end)."""
    if len(items) <= budget:
        return items
    head = budget // 4
    return items[:head] + items[len(items) - (budget - head):]
