"""Training with `--ray`: embeddings computed by Ray Data map_batches on a real local Ray."""

import os
import uuid

import numpy as np
import pytest

from router.featurizer import get_featurizer
from router.runtime import LearnedRouter
from training.embeddings import embed_texts
from training.train import train

from .router_test_data import tiny_dataset


@pytest.fixture(scope="module")
def local_ray():
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_train_with_ray_data_embedding(local_ray, tmp_path):
    ds = tiny_dataset(n=24)
    salt = uuid.uuid4().hex[:8]  # never cached: the embedding really runs on Ray
    ds.prompts = [f"{p} [{salt}]" for p in ds.prompts]
    feat = get_featurizer("minilm-l6-v2")
    via_ray = embed_texts(ds.prompts, feat, use_ray=True, use_cache=False, batch_size=8, ray_concurrency=1)
    assert np.abs(via_ray - feat.embed(ds.prompts)).max() < 1e-4
    art = train(ds, "knn", tmp_path / "art", use_ray=True, signing_key="k", holdout=0.0, progress=False,
                params={"n_neighbors": 5})
    router = LearnedRouter.from_path(art, "k")
    assert router.metadata["ray"] is True and router.labels == ["model-a", "model-b"]
    P = router.predict(["Write a python function number 3 that sorts a list"])
    assert P[0, 1] > P[0, 0]
