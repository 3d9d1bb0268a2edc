"""Featurizers that run no model per request: `minilm-l6-v2-static` (MiniLM distilled to one vector
per token, Model2Vec-style) and `hashing-<dim>` (character n-grams)."""

from __future__ import annotations

import mmap
import os
import threading
import uuid
from pathlib import Path

import numpy as np

from router.featurizer_base import (STATIC_FEATURIZER_ID, STATIC_MAX_TOKENS, STATIC_METHOD, FeaturizerError, cache_dir, head_tail,
                                    l2_rows)
from router.featurizer_minilm import MiniLMFeaturizer


class StaticMiniLMFeaturizer:
    """MiniLM distilled to one vector per token: a table lookup and a weighted mean per prompt.

    Token weights follow Model2Vec's Zipf heuristic: BERT's word-piece ids past the character
    block are roughly frequency-ordered, so weight = log(1 + rank) damps "the", "of", "?" and
    lets rarer, content-bearing tokens dominate the mean.
    """

    dim = 384

    def __init__(self, max_tokens: int = STATIC_MAX_TOKENS):
        if max_tokens < 8 or max_tokens > 4096:
            raise FeaturizerError(f"max_tokens must be in [8, 4096], got {max_tokens}")
        self.max_tokens = max_tokens
        self.id = STATIC_FEATURIZER_ID if max_tokens == STATIC_MAX_TOKENS else f"{STATIC_FEATURIZER_ID}@t{max_tokens}"
        self._encoder = MiniLMFeaturizer(max_tokens=8)  # tokenizer, weights and ONNX graph of the teacher
        self.fingerprint = f"{self._encoder.fingerprint}-{STATIC_METHOD}"
        self._tok = self._encoder._tok
        self._lock = threading.Lock()
        self._table: np.ndarray | None = None
        self._special = {self._tok.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]")}

    def table_path(self) -> Path:
        fp = self._encoder.fingerprint.split(":")[1]
        return cache_dir() / "static" / f"minilm-l6-v2-{fp}-{STATIC_METHOD}.npy"

    def table(self) -> np.ndarray:
        """[vocab, 384] weighted token vectors (built once per machine, 47 MB on disk).

        Memory-mapped read-only: a process holds only the pages of tokens its prompts used, as
        clean page cache that every replica on the node shares and the kernel may drop (an idle
        router replica: ~1 MB of it instead of 47 MB; docs/benchmarks.md, "Gateway memory").
        """
        with self._lock:
            if self._table is None:
                path = self.table_path()
                if not path.exists():
                    build_static_table(self._encoder, path, self._special)
                table = np.load(path, mmap_mode="r")
                mapping = getattr(table, "_mmap", None)
                if mapping is not None and hasattr(mmap, "MADV_RANDOM"):
                    mapping.madvise(mmap.MADV_RANDOM)  # rows are read one by one: no readahead
                self._table = table if table.flags.c_contiguous else np.ascontiguousarray(table)
            return self._table

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Head+tail token ids; text far over budget is cut by characters first (tokenising
        a 100 kB prompt to keep 256 tokens would cost more than the embedding)."""
        budget = self.max_tokens
        chars = budget * 8
        cut = [t if len(t) <= chars else t[: chars // 4] + " " + t[-(chars - chars // 4):] for t in (x or "" for x in texts)]
        return [head_tail(enc.ids, budget) for enc in self._tok.encode_batch(cut, add_special_tokens=False)]

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        table = self.table()
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, ids in enumerate(self.token_ids(list(texts))):
            if ids:
                out[i] = table[np.asarray(ids, dtype=np.int64)].sum(axis=0)
        return l2_rows(out)


def build_static_table(encoder: MiniLMFeaturizer, target: Path, special: set[int], batch: int = 512) -> Path:
    """Run every vocabulary token through MiniLM once; save the Zipf-weighted table atomically."""
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.exists():
            return target
        session = encoder._onnx()
        vocab = encoder._tok.get_vocab_size()
        cls, sep = encoder._cls, encoder._sep
        table = np.zeros((vocab, encoder.dim), dtype=np.float32)
        for start in range(0, vocab, batch):
            ids = np.arange(start, min(vocab, start + batch), dtype=np.int64)
            input_ids = np.stack([np.full_like(ids, cls), ids, np.full_like(ids, sep)], axis=1)
            hidden = session.run(["last_hidden_state"], {"input_ids": input_ids, "attention_mask": np.ones_like(input_ids),
                                                         "token_type_ids": np.zeros_like(input_ids)})[0]
            table[start : start + len(ids)] = hidden.mean(axis=1)
        table = l2_rows(table)
        weights = np.log1p(np.arange(vocab, dtype=np.float32) + 1.0)  # Zipf: rank ~ id in BERT's vocab
        weights[sorted(i for i in special if i is not None)] = 0.0
        table *= weights[:, None]
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp.npy")
        np.save(tmp, table.astype(np.float32))
        os.replace(tmp, target)
    return target


class HashingFeaturizer:
    """A cheap, model-free featurizer (character n-gram hashing); for speed, not accuracy."""

    def __init__(self, dim: int = 1024):
        from sklearn.feature_extraction.text import HashingVectorizer

        self.dim = dim
        self.id = f"hashing-{dim}"
        self.fingerprint = "sklearn-hashing-char-1-3"
        self._vec = HashingVectorizer(n_features=dim, analyzer="char_wb", ngram_range=(1, 3), norm="l2")

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return l2_rows(self._vec.transform(list(texts)).toarray())
