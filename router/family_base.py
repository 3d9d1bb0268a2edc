"""What every router family shares: the `Family` record, the error, missing-score imputation
and the map of predictions onto (0, 1) that keeps their order (`to_unit`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np


class FamilyError(ValueError):
    pass


@dataclass(frozen=True)
class Family:
    name: str
    defaults: dict[str, Any]
    fit: Callable[[np.ndarray, np.ndarray, dict[str, Any], bool], dict[str, Any]]
    predict: Callable[[dict[str, Any], np.ndarray], np.ndarray]
    doc: str
    grouped: bool = False  # fit takes `groups=` (each record's task) as a keyword


def impute_missing(Y: np.ndarray) -> np.ndarray:
    Y = np.array(Y, dtype=float)
    means = np.nanmean(np.where(np.isnan(Y).all(axis=0), 0.5, Y), axis=0) if Y.size else np.zeros(Y.shape[1])
    means = np.where(np.isnan(means), 0.5, means)
    idx = np.where(np.isnan(Y))
    Y[idx] = means[idx[1]]
    return Y


_EDGE = 0.02  # predictions inside [_EDGE, 1 - _EDGE] are kept as they are


def to_unit(P: np.ndarray) -> np.ndarray:
    """A predicted quality onto (0, 1), keeping its order. A hard clip gave every prompt of an
    unseen task the same 1.0 (or 0.0) for both models wherever a regressor overshot (the mlp and
    svm families on 95-99% of llmrouter's trivia_qa and commonsense_qa prompts): a constant
    routing score. Inside [0.02, 0.98] nothing changes; beyond, a hyperbolic tail that meets it
    with slope 1 and approaches 0 or 1 without reaching it (an overshoot of 100 is still told
    from one of 99), so the order survives."""
    P = np.asarray(P, dtype=np.float64)
    if P.size and _EDGE <= P.min() and P.max() <= 1.0 - _EDGE:
        return P  # the usual case on a routing decision: nothing to map
    over = np.maximum(P - (1.0 - _EDGE), 0.0) / _EDGE
    under = np.maximum(_EDGE - P, 0.0) / _EDGE
    return np.where(over > 0, 1.0 - _EDGE / (1.0 + over), np.where(under > 0, _EDGE / (1.0 + under), P))


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function, overflow-safe."""
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))
