"""Artifact registry: a local folder by default, any fsspec URL (s3://bucket/prefix for MinIO/S3).

    <root>/versions/<version>/{model.npz or model.skops, metadata.json, signature.json}
    <root>/latest                      {"version": "...", "updated": "..."}

`latest` is replaced atomically: a temp file + rename on local disk, a single small object put on
object stores (which are atomic per object). Versions are immutable: publishing a different
artifact under an existing version is refused. Remote versions are fetched into the local cache
(`$DOKA_CACHE_DIR/registry/...`) before use, so loading always reads local files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import fsspec

from router.artifact import (METADATA_FILE, SIGNATURE_FILE, ArtifactError, resolve_signing_key, signed_files,
                             verify_signature)
from router.featurizer import cache_dir

LATEST = "latest"


class RegistryError(ArtifactError):
    """The registry is unreachable, empty, or lacks the requested version."""


class Registry:
    def __init__(self, url: str | os.PathLike[str]):
        self.url = str(url).rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    def _p(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    # ---- reading ----
    def latest_version(self) -> str | None:
        path = self._p(LATEST)
        try:
            if not self.fs.exists(path):
                return None
            raw = self.fs.cat_file(path)
        except FileNotFoundError:
            return None
        try:
            return str(json.loads(raw)["version"])
        except (ValueError, KeyError, TypeError) as e:
            raise RegistryError(f"registry {self.url}: `latest` pointer is malformed ({e})") from e

    def list_versions(self) -> list[str]:
        base = self._p("versions")
        try:
            if not self.fs.exists(base):
                return []
            names = [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(base, detail=False)]
        except FileNotFoundError:
            return []
        return sorted(n for n in names if not n.startswith("."))

    def resolve(self, version: str = LATEST) -> Path:
        """A local folder holding that version's files (fetched into the cache if remote)."""
        v = self.latest_version() if version == LATEST else version
        if v is None:
            raise RegistryError(f"registry {self.url} has no `latest` artifact yet; publish one first")
        src = self._p("versions", v)
        if not self.fs.exists(src):
            raise RegistryError(f"registry {self.url} has no version {v!r}; it has {self.list_versions()}")
        if self.local:
            return Path(src)
        dest = cache_dir() / "registry" / hashlib.sha256(self.url.encode()).hexdigest()[:12] / v
        if not dest.is_dir():
            tmp = dest.with_name(f".{v}.{uuid.uuid4().hex}")
            tmp.mkdir(parents=True)
            try:
                names = signed_files(json.loads(self.fs.cat_file(f"{src}/{SIGNATURE_FILE}")))
            except (ValueError, FileNotFoundError) as e:
                shutil.rmtree(tmp, ignore_errors=True)
                raise ArtifactError(f"registry {self.url}: version {v} has no readable {SIGNATURE_FILE} ({e})") from e
            for name in (*names, SIGNATURE_FILE):
                self.fs.get_file(f"{src}/{name}", str(tmp / name))
            try:
                os.replace(tmp, dest)
            except OSError:  # another process fetched it first
                shutil.rmtree(tmp, ignore_errors=True)
        return dest

    # ---- writing ----
    def publish(self, artifact_dir: str | os.PathLike[str], set_latest: bool = True, key: bytes | str | None = None) -> str:
        """Upload a signed artifact under its version; then point `latest` at it."""
        src = Path(artifact_dir)
        if not (src / SIGNATURE_FILE).is_file():
            raise ArtifactError(f"artifact {src} is not signed; refusing to publish it")
        if resolve_signing_key(key, required=False) is not None:
            meta = verify_signature(src, key)
        else:
            meta = json.loads((src / METADATA_FILE).read_text())
        version = str(meta["version"])
        dest = self._p("versions", version)
        files = (*signed_files(json.loads((src / SIGNATURE_FILE).read_text())), SIGNATURE_FILE)  # signature last
        if self.fs.exists(dest):
            same = all(
                self.fs.exists(f"{dest}/{n}") and self.fs.cat_file(f"{dest}/{n}") == (src / n).read_bytes() for n in files
            )
            if not same:
                raise RegistryError(f"registry {self.url} already has a different artifact as version {version!r}")
        else:
            staging = self._p("versions", f".{version}.{uuid.uuid4().hex}") if self.local else dest
            self.fs.makedirs(staging, exist_ok=True)
            for name in files:  # signature last: a partial upload never verifies
                self.fs.put_file(str(src / name), f"{staging}/{name}")
            if self.local:
                os.replace(staging, dest)
        if set_latest:
            self.set_latest(version)
        return version

    def set_latest(self, version: str) -> None:
        if not self.fs.exists(self._p("versions", version)):
            raise RegistryError(f"registry {self.url} has no version {version!r}")
        body = json.dumps({"version": version, "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode()
        if self.local:
            root = Path(self.root)
            root.mkdir(parents=True, exist_ok=True)
            tmp = root / f".latest.{uuid.uuid4().hex}.tmp"
            tmp.write_bytes(body)
            os.replace(tmp, root / LATEST)
        else:
            self.fs.pipe_file(self._p(LATEST), body)
