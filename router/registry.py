"""Artifact registry: a local folder by default, any fsspec URL (s3://bucket/prefix for MinIO/S3).

    <root>/versions/<version>/{model.npz or model.skops, metadata.json, signature.json}
    <root>/latest                      {"version": "...", "updated": "..."}

`latest` is replaced atomically: a temp file + rename on local disk, a single small object put on
object stores (which are atomic per object). Versions are immutable: publishing a different
artifact under an existing version is refused. Remote versions are fetched into the local cache
(`$DOKA_CACHE_DIR/registry/...`) before use, so loading always reads local files.

Fetching a remote version reads its small signed manifest (signature.json: each file's SHA-256
and size under an HMAC) first and verifies it; only then are the files downloaded, each refused
as soon as it outgrows its signed size and checked against its digest before the version enters
the cache. A tampered or foreign manifest therefore costs one small read, never a large download.
Version names are checked against `router.versions.VERSION_PATTERN` wherever one comes in.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import fsspec

from router.artifact import (METADATA_FILE, SIGNATURE_FILE, ArtifactError, resolve_signing_key, signed_files,
                             verify_manifest, verify_signature)
from router.featurizer import cache_dir
from router.versions import LATEST, VersionNameError, check_version

MAX_MANIFEST_BYTES = 64 * 1024  # a signature.json is a few hundred bytes
MAX_UNSIZED_FILE_BYTES = 2 * 1024**3  # older signatures carry no sizes: still bounded
_CHUNK = 1 << 20


class RegistryError(ArtifactError):
    """The registry is unreachable, empty, or lacks the requested version."""


def _version(version: object, *, allow_latest: bool = False) -> str:
    try:
        return check_version(version, allow_latest=allow_latest)
    except VersionNameError as e:
        raise RegistryError(str(e)) from None


def _valid(name: str) -> bool:
    try:
        check_version(name, allow_latest=False)
        return True
    except VersionNameError:
        return False


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
            version = json.loads(raw)["version"]
        except (ValueError, KeyError, TypeError) as e:
            raise RegistryError(f"registry {self.url}: `latest` pointer is malformed ({e})") from e
        return _version(version)  # the pointer is remote data too

    def list_versions(self) -> list[str]:
        base = self._p("versions")
        try:
            if not self.fs.exists(base):
                return []
            names = [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(base, detail=False)]
        except FileNotFoundError:
            return []
        return sorted(n for n in names if not n.startswith(".") and _valid(n))

    def read_file(self, version: str, name: str, max_bytes: int) -> bytes:
        """One small file of a version (metadata.json, signature.json) for display, never for loading:
        nothing here is verified, and a file over `max_bytes` is refused unread."""
        if name not in (METADATA_FILE, SIGNATURE_FILE):
            raise RegistryError(f"registry files readable for display: {METADATA_FILE}, {SIGNATURE_FILE}")
        path = self._p("versions", _version(version), name)
        size = self.fs.size(path)
        if size is not None and size > max_bytes:
            raise RegistryError(f"registry {self.url} version {version}: {name} is {size} bytes (> {max_bytes})")
        raw = self.fs.cat_file(path)
        if len(raw) > max_bytes:
            raise RegistryError(f"registry {self.url} version {version}: {name} is over {max_bytes} bytes")
        return raw

    def resolve(self, version: str = LATEST, key: bytes | str | None = None) -> Path:
        """A local folder holding that version's files (fetched into the cache if remote).

        A remote version is fetched only after its signed manifest verifies with `key` (or the
        configured signing key); each file is then checked against the manifest as it arrives."""
        v = self.latest_version() if version == LATEST else _version(version)
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
                self._fetch_verified(src, v, tmp, key)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            try:
                os.replace(tmp, dest)
            except OSError:  # another process fetched it first
                shutil.rmtree(tmp, ignore_errors=True)
        return dest

    def _fetch_verified(self, src: str, v: str, tmp: Path, key: bytes | str | None) -> None:
        """Manifest first (small, HMAC-verified), then each file checked against it."""
        where = f"{self.url} version {v}"
        sig_path = f"{src}/{SIGNATURE_FILE}"
        try:
            size = self.fs.size(sig_path)
            if size is not None and size > MAX_MANIFEST_BYTES:
                raise ArtifactError(f"registry {where}: {SIGNATURE_FILE} is {size} bytes; refusing it")
            raw = self.fs.cat_file(sig_path)
        except (OSError, ValueError) as e:  # FileNotFoundError included
            raise ArtifactError(f"registry {where} has no readable {SIGNATURE_FILE} ({e})") from e
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ArtifactError(f"registry {where}: {SIGNATURE_FILE} is too large; refusing it")
        manifest = verify_manifest(raw, key, where)  # raises before any artifact file is read
        signed_files(json.loads(raw))  # names are only the ones an artifact may hold
        for name, (digest, want) in sorted(manifest.items()):
            remote = f"{src}/{name}"
            try:
                have = self.fs.size(remote)
            except (OSError, ValueError) as e:
                raise ArtifactError(f"registry {where}: {name} is missing ({e})") from e
            if want is not None and have is not None and have != want:
                raise ArtifactError(f"registry {where}: {name} is {have} bytes, the signature says {want}; "
                                    "refusing to download it")
            limit = want if want is not None else MAX_UNSIZED_FILE_BYTES
            h, got = hashlib.sha256(), 0
            with self.fs.open(remote, "rb") as f_in, (tmp / name).open("wb") as f_out:
                while chunk := f_in.read(_CHUNK):
                    got += len(chunk)
                    if got > limit:
                        raise ArtifactError(f"registry {where}: {name} is larger than its signed size; refusing it")
                    h.update(chunk)
                    f_out.write(chunk)
            if (want is not None and got != want) or not hmac.compare_digest(h.hexdigest(), digest):
                raise ArtifactError(f"registry {where}: {name} does not match its signed SHA-256; refusing it")
        (tmp / SIGNATURE_FILE).write_bytes(raw)

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
        version = _version(meta.get("version"))
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
        _version(version)
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
