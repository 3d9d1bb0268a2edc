"""Registry hardening (docs/security.md): version names are validated wherever one comes in, and a
remote version's signed manifest is verified before any artifact file is downloaded.

Downloads are counted on a real fsspec in-memory filesystem that records every file it opens.
"""

from __future__ import annotations

import json

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from app.config import ConfigError, parse_config
from deployments.router import merge_user_config
from router.artifact import ArtifactError
from router.registry import Registry, RegistryError
from router.runtime import LearnedRouter
from router.versions import VersionNameError, check_version
from tests.conftest import gateway_test_config
from training.train import train

from .router_test_data import tiny_dataset

KEY = "test-key-0123456789"
BAD_VERSIONS = ["../../etc", "..", "a/b", "a\\b", "v1/../v2", "s3://bucket/x", "v1?x=1", "v1#frag", "", ".hidden",
                "-flag", "v 1", "v1\n", "x" * 129, "%2e%2e", "~root", "v1;rm"]


class CountingFS(MemoryFileSystem):
    """The memory filesystem, recording the path of every read (open for reading, cat, get)."""

    protocol = "countmem"
    reads: list[str] = []

    def _open(self, path, mode="rb", **kwargs):
        if "r" in mode:
            CountingFS.reads.append(self._strip_protocol(path))
        return super()._open(path, mode, **kwargs)

    def cat_file(self, path, start=None, end=None, **kwargs):
        CountingFS.reads.append(self._strip_protocol(path))
        return super().cat_file(path, start=start, end=end, **kwargs)


fsspec.register_implementation("countmem", CountingFS, clobber=True)


@pytest.fixture()
def remote(tmp_path, monkeypatch):
    """A remote registry (countmem://) holding one signed artifact; (registry, version)."""
    monkeypatch.setenv("DOKA_CACHE_DIR", str(tmp_path / "cache"))
    art = train(tiny_dataset(), "logreg", tmp_path / "art", featurizer_id="hashing-256", signing_key=KEY,
                holdout=0.0, progress=False)
    reg = Registry(f"countmem://reg-{tmp_path.name}")
    version = reg.publish(art, key=KEY)
    CountingFS.reads.clear()
    return reg, version


def _artifact_reads(reg: Registry, version: str) -> list[str]:
    base = f"{reg.root}/versions/{version}/"
    return [p for p in CountingFS.reads if p.startswith(base) and not p.endswith("signature.json")]


def _model_name(reg: Registry, version: str) -> str:
    sig = json.loads(reg.fs.cat_file(reg._p("versions", version, "signature.json")))
    return next(n for n in sig["files"] if n.startswith("model."))


# ---------------------------------------------------------------- version names
@pytest.mark.parametrize("bad", BAD_VERSIONS)
def test_bad_version_names_are_refused_everywhere(bad, tmp_path):
    with pytest.raises(VersionNameError):
        check_version(bad)
    reg = Registry(tmp_path / "registry")
    with pytest.raises(RegistryError, match="not a valid version name"):
        reg.resolve(bad)
    with pytest.raises(RegistryError, match="not a valid version name"):
        reg.set_latest(bad)
    raw = gateway_test_config(9, 9)
    raw["router"]["artifact"] = bad
    with pytest.raises(ConfigError, match="not a valid version name"):  # config file
        parse_config(raw)
    with pytest.raises(ConfigError, match="not a valid version name"):  # Serve reconfigure / REST API user_config
        merge_user_config(gateway_test_config(9, 9), {"artifact": bad})


def test_good_version_names_pass():
    for good in ("latest", "v1", "20260101-120000-knn-1a2b3c4d", "2026.01_rc-1"):
        assert check_version(good) == good
    with pytest.raises(VersionNameError):
        check_version("latest", allow_latest=False)


def test_cli_refuses_bad_versions_before_reaching_anything(tmp_path, capsys):
    from app.cli import main as doka

    rc = doka(["k8s", "reload-router", "--artifact", "../../x", "--kubeconfig", str(tmp_path / "none")])
    assert rc == 1 and "not a valid version name" in capsys.readouterr().err
    rc = doka(["router", "versions", "--registry", str(tmp_path / "reg")])  # an empty local registry answers
    capsys.readouterr()
    assert rc == 0


def test_tampered_latest_pointer_and_published_metadata_are_refused(remote, tmp_path):
    reg, version = remote
    reg.fs.pipe_file(reg._p("latest"), json.dumps({"version": "../../outside"}).encode())
    with pytest.raises(RegistryError, match="not a valid version name"):
        reg.resolve("latest", KEY)
    assert _artifact_reads(reg, version) == []


# ---------------------------------------------------------------- manifest before download
def test_verified_manifest_then_every_file_downloaded_and_loaded(remote):
    reg, version = remote
    router = LearnedRouter.load(reg.url, version, KEY)
    assert router.version == version
    model = _model_name(reg, version)
    assert sorted(p.rsplit("/", 1)[-1] for p in _artifact_reads(reg, version)) == sorted([model, "metadata.json"])
    # the manifest was read before any artifact file
    first = [p.rsplit("/", 1)[-1] for p in CountingFS.reads if f"/versions/{version}/" in p]
    assert first[0] == "signature.json"


def test_tampered_manifest_is_refused_before_any_artifact_file_is_read(remote, tmp_path):
    reg, version = remote
    sig_path = reg._p("versions", version, "signature.json")
    sig = json.loads(reg.fs.cat_file(sig_path))
    model = _model_name(reg, version)
    sig["files"][model] = "0" * 64  # points the manifest at other bytes, keeps the old MAC
    reg.fs.pipe_file(sig_path, json.dumps(sig).encode())
    CountingFS.reads.clear()
    with pytest.raises(ArtifactError, match="does not verify with this key"):
        reg.resolve(version, KEY)
    assert CountingFS.reads and _artifact_reads(reg, version) == []  # the manifest only
    assert not list((tmp_path / "cache").rglob("model.*"))  # nothing entered the cache


def test_wrong_key_is_refused_before_any_artifact_file_is_read(remote):
    reg, version = remote
    with pytest.raises(ArtifactError, match="does not verify with this key"):
        reg.resolve(version, "another-key")
    assert _artifact_reads(reg, version) == []


def test_swapped_model_file_of_another_size_is_never_downloaded(remote, tmp_path):
    reg, version = remote
    model = _model_name(reg, version)
    reg.fs.pipe_file(reg._p("versions", version, model), b"x" * 10_000_000)  # a large substitute
    CountingFS.reads.clear()
    with pytest.raises(ArtifactError, match="refusing to download it"):
        reg.resolve(version, KEY)
    assert model not in [p.rsplit("/", 1)[-1] for p in _artifact_reads(reg, version)]
    assert not list((tmp_path / "cache").rglob("model.*"))


def test_same_size_substitute_is_refused_and_not_cached(remote, tmp_path):
    reg, version = remote
    model = _model_name(reg, version)
    path = reg._p("versions", version, model)
    data = bytearray(reg.fs.cat_file(path))
    data[len(data) // 2] ^= 0x01
    reg.fs.pipe_file(path, bytes(data))
    with pytest.raises(ArtifactError, match="does not match its signed SHA-256"):
        reg.resolve(version, KEY)
    assert not list((tmp_path / "cache").rglob("model.*"))
    with pytest.raises(ArtifactError):  # and a retry does not find a half-made cache entry
        reg.resolve(version, KEY)
