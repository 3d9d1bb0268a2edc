"""A verified, loaded learned router: prompts -> per-model predicted quality."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from router.artifact import ArtifactError, load_artifact
from router.families import FamilyError, familiar, get_family, predict_gated
from router.registry import Registry


class LearnedRouter:
    """Built only through `load`/`from_path`, which verify signature and featurizer first."""

    def __init__(self, metadata: dict[str, Any], state: dict[str, Any], featurizer: Any, path: Path):
        self.metadata = metadata
        self.version: str = str(metadata["version"])
        self.labels: list[str] = list(metadata["labels"])
        self.featurizer = featurizer
        self.path = path
        self.costs: dict[str, float] = dict(metadata.get("costs") or {})
        try:
            self._family = get_family(metadata["family"])
        except FamilyError as e:
            raise ArtifactError(f"artifact {self.version}: {e}") from e
        self._state = state

    @classmethod
    def load(
        cls, registry_url: str, version: str = "latest", signing_key: bytes | str | None = None, featurizer: Any = None
    ) -> "LearnedRouter":
        """Resolve `version` in the registry, verify it, and load it."""
        path = Registry(registry_url).resolve(version, signing_key)  # manifest verified before download
        return cls.from_path(path, signing_key, featurizer)

    @classmethod
    def from_path(cls, path: str | Path, signing_key: bytes | str | None = None, featurizer: Any = None) -> "LearnedRouter":
        meta, state, feat = load_artifact(path, signing_key, featurizer)
        router = cls(meta, state, feat, Path(path))
        probe = router.predict_embeddings(np.zeros((1, feat.dim), dtype=np.float32))
        if probe.shape != (1, len(router.labels)):
            raise ArtifactError(f"artifact {router.version}: model predicts {probe.shape[1]} outputs for {len(router.labels)} labels")
        return router

    def _checked(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.featurizer.dim:
            raise ValueError(f"embeddings must be [n, {self.featurizer.dim}], got {X.shape}")
        return X

    def predict_embeddings(self, X: np.ndarray) -> np.ndarray:
        return self._family.predict(self._state, self._checked(X))

    def familiar_embeddings(self, X: np.ndarray) -> np.ndarray | None:
        """Which prompts pass a `gated` artifact's novelty gate (take its in-distribution path);
        None for families without one."""
        if self.metadata["family"] != "gated":
            return None
        return familiar(self._state, np.asarray(X, dtype=np.float32))

    def predict(self, prompts: list[str]) -> np.ndarray:
        """[n, len(labels)] predicted quality in [0, 1]."""
        return self.predict_embeddings(self.featurizer.embed(list(prompts)))

    def predict_embeddings_with_gate(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """`predict_embeddings`, and for a `gated` artifact which prompts passed its novelty gate
        (None for families without one), from one gate computation."""
        X = self._checked(X)
        if self.metadata["family"] != "gated":
            return self._family.predict(self._state, X), None
        return predict_gated(self._state, X)

    def predict_with_gate(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """`predict_embeddings_with_gate` on the prompts' embedding."""
        return self.predict_embeddings_with_gate(self.featurizer.embed(list(prompts)))

    def label_costs(self, labels: list[str] | None = None) -> np.ndarray:
        """Mean USD per call seen in training, per label (NaN where unknown)."""
        vals = [self.costs.get(label) for label in (labels or self.labels)]
        return np.array([np.nan if v is None else v for v in vals], dtype=np.float64)
