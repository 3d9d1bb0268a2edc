"""Signed artifacts: tampering, wrong key and wrong featurizer are refused; registry pointer."""

import json
import shutil

import numpy as np
import pytest

from router.artifact import ArtifactError, load_artifact, sign_artifact
from router.featurizer import get_featurizer
from router.registry import Registry, RegistryError
from router.runtime import LearnedRouter
from training.train import train

from .router_test_data import tiny_dataset

KEY = "test-key-0123456789"


@pytest.fixture()
def artifact(tmp_path):
    return train(tiny_dataset(), "logreg", tmp_path / "art", featurizer_id="hashing-256", signing_key=KEY,
                 holdout=0.0, progress=False)


def test_round_trip_predicts_per_label_quality(artifact):
    r = LearnedRouter.from_path(artifact, KEY)
    assert r.labels == ["model-a", "model-b"] and r.featurizer.id == "hashing-256"
    P = r.predict(["Write a python function number 99 that sorts a list", "What is the capital of country number 7?"])
    assert P.shape == (2, 2) and ((P >= 0) & (P <= 1)).all()
    assert P[0, 1] > P[0, 0] and P[1, 0] > P[1, 1]
    meta = r.metadata
    assert meta["training_data"]["sha256"] and meta["costs"] == pytest.approx({"model-a": 0.001, "model-b": 0.01})
    assert r.predict_embeddings(np.zeros((3, 256), np.float32)).shape == (3, 2)


def test_changed_byte_is_refused(artifact):
    model = artifact / "model.skops"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="modified after signing"):
        LearnedRouter.from_path(artifact, KEY)


def test_edited_metadata_is_refused(artifact):
    meta = json.loads((artifact / "metadata.json").read_text())
    meta["labels"] = ["model-b", "model-a"]
    (artifact / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="metadata.json was modified"):
        load_artifact(artifact, KEY)


def test_wrong_key_and_missing_signature_are_refused(artifact, monkeypatch):
    with pytest.raises(ArtifactError, match="does not verify with this key"):
        LearnedRouter.from_path(artifact, "another-key")
    monkeypatch.delenv("DOKA_SIGNING_KEY", raising=False)
    monkeypatch.setenv("DOKA_SIGNING_KEY_FILE", str(artifact / "nope"))
    with pytest.raises(ArtifactError, match="no artifact signing key"):
        LearnedRouter.from_path(artifact)
    (artifact / "signature.json").unlink()
    with pytest.raises(ArtifactError, match="not signed"):
        LearnedRouter.from_path(artifact, KEY)


def test_wrong_featurizer_is_refused(artifact):
    with pytest.raises(ArtifactError, match="trained with featurizer 'hashing-256'"):
        LearnedRouter.from_path(artifact, KEY, featurizer=get_featurizer("hashing-128"))
    # validly signed, but recorded for different embedding weights
    meta = json.loads((artifact / "metadata.json").read_text())
    meta["featurizer"]["fingerprint"] = "sha256:0000"
    (artifact / "metadata.json").write_text(json.dumps(meta))
    sign_artifact(artifact, KEY)
    with pytest.raises(ArtifactError, match="weights differ"):
        LearnedRouter.from_path(artifact, KEY)


@pytest.mark.parametrize("scheme", ["local", "memory"])
def test_registry_publish_latest_and_versions(artifact, tmp_path, scheme):
    url = str(tmp_path / "registry") if scheme == "local" else f"memory://doka-test-{tmp_path.name}"
    reg = Registry(url)
    assert reg.latest_version() is None and reg.list_versions() == []
    with pytest.raises(RegistryError, match="no `latest`"):
        reg.resolve()
    v1 = reg.publish(artifact, key=KEY)
    assert reg.latest_version() == v1 and reg.list_versions() == [v1]
    assert reg.publish(artifact, key=KEY) == v1  # idempotent
    second = train(tiny_dataset(seed=1), "knn", tmp_path / "art2", featurizer_id="hashing-256", signing_key=KEY,
                   holdout=0.0, progress=False)
    v2 = reg.publish(second, key=KEY, set_latest=False)
    assert reg.latest_version() == v1 and sorted(reg.list_versions()) == sorted([v1, v2])
    reg.set_latest(v2)
    router = LearnedRouter.load(url, "latest", KEY)
    assert router.version == v2 and LearnedRouter.load(url, v1, KEY).version == v1
    if scheme == "local":
        assert not [p for p in (tmp_path / "registry").iterdir() if p.name.startswith(".")]
    # a different artifact under an existing version is refused
    clash = tmp_path / "clash"
    shutil.copytree(second, clash)
    meta = json.loads((clash / "metadata.json").read_text())
    meta["version"] = v1
    (clash / "metadata.json").write_text(json.dumps(meta))
    sign_artifact(clash, KEY)
    with pytest.raises(RegistryError, match="already has a different artifact"):
        reg.publish(clash, key=KEY)
    with pytest.raises(RegistryError, match="no version"):
        reg.resolve("nope")


@pytest.fixture()
def arrays_artifact(tmp_path):
    """A difficulty router on the default (static) featurizer: plain arrays, stored as npz, not skops."""
    return train(tiny_dataset(), "difficulty", tmp_path / "arr", signing_key=KEY, holdout=0.0, progress=False)


def test_an_array_only_state_is_stored_as_npz_and_routes_without_sklearn(arrays_artifact, artifact):
    import subprocess
    import sys

    assert (arrays_artifact / "model.npz").is_file() and not (arrays_artifact / "model.skops").exists()
    assert (artifact / "model.skops").is_file() and not (artifact / "model.npz").exists()  # sklearn objects
    assert set(json.loads((arrays_artifact / "signature.json").read_text())["files"]) == {"model.npz", "metadata.json"}
    probe = ("import json, sys\nfrom router.runtime import LearnedRouter\n"
             "r = LearnedRouter.from_path(sys.argv[1], sys.argv[2])\n"
             "P = r.predict(['Write a python function number 99 that sorts a list'])\n"
             "print(json.dumps({'shape': list(P.shape), 'heavy': sorted(m for m in ('skops', 'sklearn', 'scipy') "
             "if m in sys.modules)}))")
    # the skops artifact (and its sklearn hashing featurizer) shows that the probe sees those imports
    for path, heavy in ((arrays_artifact, []), (artifact, ["scipy", "sklearn", "skops"])):
        out = subprocess.run([sys.executable, "-c", probe, str(path), KEY], capture_output=True, text=True, timeout=120,
                             cwd=str(__import__("tests.conftest", fromlist=["REPO"]).REPO))
        assert out.returncode == 0, out.stderr[-2000:]
        got = json.loads(out.stdout.strip().splitlines()[-1])
        assert got == {"shape": [1, 2], "heavy": heavy}


def test_a_tampered_or_ambiguous_npz_artifact_is_refused(arrays_artifact, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(arrays_artifact, bad)
    data = bytearray((bad / "model.npz").read_bytes())
    data[len(data) // 2] ^= 0x01
    (bad / "model.npz").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="model.npz was modified after signing"):
        LearnedRouter.from_path(bad, KEY)
    both = tmp_path / "both"
    shutil.copytree(arrays_artifact, both)
    (both / "model.skops").write_bytes(b"unsigned")  # an extra, unsigned model file must not be read
    with pytest.raises(ArtifactError, match="only one is signed"):
        LearnedRouter.from_path(both, KEY)


def test_registry_round_trips_npz_artifacts(arrays_artifact, tmp_path):
    url = f"memory://doka-npz-{tmp_path.name}"
    reg = Registry(url)
    v = reg.publish(arrays_artifact, key=KEY)
    local = reg.resolve(v, KEY)  # manifest verified, then the files it lists fetched into the cache
    assert sorted(p.name for p in local.iterdir()) == ["metadata.json", "model.npz", "signature.json"]
    a = LearnedRouter.from_path(arrays_artifact, KEY)
    b = LearnedRouter.load(url, "latest", KEY)
    X = np.random.default_rng(0).random((4, a.featurizer.dim)).astype(np.float32)
    assert np.array_equal(a.predict_embeddings(X), b.predict_embeddings(X))
