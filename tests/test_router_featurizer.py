"""The ONNX Runtime hot path gives the sentence-transformers embedding."""

import numpy as np
import pytest

from router.featurizer import FeaturizerError, get_featurizer

TEXTS = [
    "What is the capital of France?",
    "Write a function to find the intersection of two arrays.",
    "Please answer with the letter of the correct answer. " * 30 + "Which gas do plants absorb? A) O2 B) CO2",
    "",
]


def test_onnx_matches_sentence_transformers():
    onnx = get_featurizer("minilm-l6-v2", backend="onnx")
    ref = get_featurizer("minilm-l6-v2", backend="torch")
    a, b = onnx.embed(TEXTS), ref.embed(TEXTS)
    assert a.dtype == np.float32 and a.shape == (len(TEXTS), 384) and onnx.dim == 384
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert np.abs(a - b).max() < 1e-4
    assert onnx.id == ref.id == "minilm-l6-v2" and onnx.fingerprint == ref.fingerprint


def test_reference_path_is_plain_sentence_transformers_on_short_text():
    from sentence_transformers import SentenceTransformer

    feat = get_featurizer("minilm-l6-v2")
    st = SentenceTransformer(str(feat.model_dir), device="cpu")
    short = TEXTS[:2]
    assert np.abs(feat.embed(short) - st.encode(short, normalize_embeddings=True)).max() < 1e-4


def test_truncation_keeps_head_and_tail_within_budget():
    feat = get_featurizer("minilm-l6-v2")
    ids, mask = feat.encode_ids(["start " + "filler " * 200 + "the real question at the end"])
    assert ids.shape[1] == 48 and mask.sum() == 48
    tail = feat._tok.decode(ids[0, -8:].tolist())
    assert "question at the end" in tail and "start" in feat._tok.decode(ids[0, :4].tolist())
    longer = get_featurizer("minilm-l6-v2@t128")
    assert longer.id == "minilm-l6-v2@t128" and longer.encode_ids([TEXTS[2]])[0].shape[1] == 128


def test_unknown_featurizer_is_refused():
    with pytest.raises(FeaturizerError, match="unknown featurizer"):
        get_featurizer("bert-huge")


def test_static_featurizer_is_minilm_distilled_to_token_vectors():
    """The cheap path: each row of its table is MiniLM's own embedding of that one token."""
    static = get_featurizer("minilm-l6-v2-static")
    full = get_featurizer("minilm-l6-v2")
    assert static.id == "minilm-l6-v2-static" and static.dim == 384
    assert static.fingerprint.startswith(full.fingerprint) and static.fingerprint != full.fingerprint
    word = static._tok.token_to_id("france")
    row = static.table()[word]
    assert np.dot(row / np.linalg.norm(row), full.embed(["france"])[0]) > 0.99  # [CLS] france [SEP], pooled
    a = static.embed(TEXTS)
    assert a.dtype == np.float32 and a.shape == (len(TEXTS), 384)
    assert np.allclose(np.linalg.norm(a[:3], axis=1), 1.0, atol=1e-5) and not a[3].any()  # empty -> zero vector
    assert np.array_equal(a, static.embed(TEXTS))  # deterministic
    code = static.embed(["Write a python function that sorts a list of integers.",
                         "Implement a function to reverse a linked list in python.",
                         "Hi! How was your weekend? Anything fun?"])
    assert code[0] @ code[1] > code[0] @ code[2]  # code is nearer code than small talk


def test_static_featurizer_reads_head_and_tail_of_long_prompts():
    static = get_featurizer("minilm-l6-v2-static@t64")
    ids = static.token_ids(["start " + "filler " * 50_000 + "the real question at the end"])[0]
    assert len(ids) == 64
    assert "question at the end" in static._tok.decode(ids[-8:]) and "start" in static._tok.decode(ids[:2])


def test_stats_features_from_the_embedding_cache_are_the_served_features(tmp_path):
    """Training reads `<base>+stats` as cached base vectors + `StatsFeaturizer.extend`; the router
    serves `StatsFeaturizer.embed`. One function: the two are identical, cold and warm cache."""
    from training.embeddings import EmbeddingCache, embed_texts

    feat = get_featurizer("hashing-64+stats")
    texts = TEXTS + ["def f(x):\n    return x + 1\n", "Solve 3 * 4 = ?"]
    cold = embed_texts(texts, feat, progress=False, cache_root=tmp_path)
    base_cache = EmbeddingCache(feat.base, tmp_path)
    assert len(base_cache.load()) == len(set(texts))  # the base vectors were cached (what warm reads)
    warm = embed_texts(texts, feat, progress=False, cache_root=tmp_path)
    served = feat.embed(texts)
    assert cold.shape == (len(texts), feat.dim) == served.shape
    assert np.array_equal(cold, served) and np.array_equal(warm, served)
