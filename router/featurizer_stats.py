"""`<featurizer>+stats`: an embedding with task-agnostic prompt statistics appended."""

from __future__ import annotations

import re

import numpy as np

from router.featurizer_base import STATS_SUFFIX, Featurizer


# Prompt statistics that mean the same thing on any task (unlike an embedding's topic directions):
# length, lines, digits, code / multiple-choice / arithmetic markers, questions per line, words.
# Centred and scaled by fixed constants (RouterBench train split mean, 0.3 / std) so the
# embedding part (unit norm) still dominates distances.
_STATS_NAMES = ("log_chars", "log_lines", "digit_share", "code", "choices", "questions_per_line", "arithmetic", "log_words")
STATS_MEAN = np.array([7.04, 3.348, 0.004, 0.145, 0.864, 0.043, 0.013, 5.334], dtype=np.float32)
STATS_SCALE = 0.3 / np.array([1.038, 1.328, 0.024, 0.352, 0.342, 0.047, 0.114, 1.018], dtype=np.float32)
_CODE_RE = re.compile(r"def |```|return |\bfunction\b|print\(")
_CHOICE_RE = re.compile(r"\n[A-D][\).:]")
_ARITH_RE = re.compile(r"[=+\-*/^]\s*\d")
_DIGIT_RE = re.compile(r"\d")
STATS_WINDOW_CHARS = 4096  # markers are looked for in the head+tail 4 kB; lengths use the whole text


def prompt_stats(texts: list[str]) -> np.ndarray:
    """[n, 8] raw prompt statistics (see _STATS_NAMES); O(window) per prompt beyond len/count."""
    out = np.zeros((len(texts), len(_STATS_NAMES)), dtype=np.float32)
    half = STATS_WINDOW_CHARS // 2
    for i, t in enumerate(texts):
        t = t or ""
        win = t if len(t) <= STATS_WINDOW_CHARS else t[:half] + "\n" + t[-half:]
        lines = t.count("\n")
        out[i] = (np.log1p(len(t)), np.log1p(lines), 10.0 * len(_DIGIT_RE.findall(win)) / max(len(win), 1),
                  bool(_CODE_RE.search(win)), bool(_CHOICE_RE.search(win)), win.count("?") / (win.count("\n") + 1),
                  bool(_ARITH_RE.search(win)), np.log1p(len(win.split()) * max(len(t), 1) / max(len(win), 1)))
    return out


class StatsFeaturizer:
    """Another featurizer's embedding with the scaled prompt statistics appended."""

    def __init__(self, base: Featurizer):
        self.base = base
        self.id = base.id + STATS_SUFFIX
        self.dim = base.dim + len(_STATS_NAMES)
        self.fingerprint = f"{base.fingerprint}-stats1"

    def embed(self, texts: list[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.extend(self.base.embed(texts), texts)

    def extend(self, base_vectors: np.ndarray, texts: list[str]) -> np.ndarray:
        """The base embedding of `texts` with their scaled statistics appended: `embed` is this on
        `base.embed(texts)`; training calls it on cached base vectors (training.embeddings), so
        train and serve featurize through the same code."""
        stats = (prompt_stats(list(texts)) - STATS_MEAN) * STATS_SCALE
        return np.hstack([np.asarray(base_vectors, dtype=np.float32), stats]).astype(np.float32)
