"""Router artifacts: a folder with the fitted model (no pickle), metadata and a signature.

    <artifact>/model.npz        fitted state made only of numeric arrays (difficulty, mf: numpy's
                                npz, loaded with allow_pickle=False), or
    <artifact>/model.skops      fitted state holding sklearn objects (knn, mlp, svm, ...: skops)
    <artifact>/metadata.json    version, family, labels, featurizer, data hash, metrics, params, costs
    <artifact>/signature.json   HMAC-SHA256 over the SHA-256 and byte size of the model file and
                                the metadata: the small signed manifest a remote registry's
                                download checks first (router/registry.py)

An array-only state never needs skops, whose import loads all of sklearn and scipy (~90 MB in
every process that routes; docs/benchmarks.md, "Gateway memory").

The key comes from the `DOKA_SIGNING_KEY` env var (or an explicit argument, or the file named by
`DOKA_SIGNING_KEY_FILE`, or `.doka/signing.key` which `doka router bootstrap` creates for a local
run). Loading checks the signature, then the featurizer, then the skops types, before anything in
the model file is used; any failure raises ArtifactError saying what is wrong.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any

import numpy as np

MODEL_FILE = "model.skops"
ARRAYS_FILE = "model.npz"
MODEL_FILES = (ARRAYS_FILE, MODEL_FILE)
METADATA_FILE = "metadata.json"
SIGNATURE_FILE = "signature.json"
ALGORITHM = "hmac-sha256"
SCHEMA_VERSION = 1
DEFAULT_KEY_FILE = Path(".doka/signing.key")


class ArtifactError(ValueError):
    """An artifact that must not be used (unsigned, tampered, wrong key or featurizer, malformed)."""


def resolve_signing_key(key: bytes | str | None = None, *, required: bool = True) -> bytes | None:
    """The HMAC key: the argument, else $DOKA_SIGNING_KEY, else $DOKA_SIGNING_KEY_FILE / .doka/signing.key."""
    if key is None:
        key = os.environ.get("DOKA_SIGNING_KEY") or None
    if key is None:
        path = Path(os.environ.get("DOKA_SIGNING_KEY_FILE", DEFAULT_KEY_FILE))
        if path.is_file():
            key = path.read_text().strip()
    if key is None or key in ("", b""):
        if required:
            raise ArtifactError(
                "no artifact signing key: set DOKA_SIGNING_KEY (or DOKA_SIGNING_KEY_FILE), "
                "or run `doka router bootstrap` to create .doka/signing.key for a local run"
            )
        return None
    return key.encode() if isinstance(key, str) else bytes(key)


def ensure_local_key(path: Path = DEFAULT_KEY_FILE) -> bytes:
    """A signing key for a local run: the configured one, or a new random one saved at `path` (0600)."""
    key = resolve_signing_key(required=False)
    if key is not None:
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return resolve_signing_key(required=True)  # type: ignore[return-value]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _mac(key: bytes, files: dict[str, str], sizes: dict[str, int] | None = None) -> str:
    """The MAC over digests (and sizes, in signatures that carry them; older ones have none)."""
    body: dict[str, Any] = {"algorithm": ALGORITHM, "files": files}
    if sizes is not None:
        body["sizes"] = sizes
    payload = json.dumps(body, sort_keys=True).encode()
    return hmac.new(key, payload, hashlib.sha256).hexdigest()


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def _array_only(state: Any) -> bool:
    """A flat dict of numeric numpy arrays and strings (the family's name): storable as npz,
    loadable without skops or pickle."""
    return (isinstance(state, dict) and bool(state) and all(
        isinstance(k, str) and (isinstance(v, str) or (isinstance(v, np.ndarray) and v.dtype.kind in "biuf"))
        for k, v in state.items()))


def save_artifact(out_dir: str | Path, state: dict[str, Any], metadata: dict[str, Any], key: bytes | str | None = None) -> Path:
    """Write model + metadata and sign them. `out_dir` must not already hold another artifact."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if _array_only(state):
        with (out / ARRAYS_FILE).open("wb") as f:
            np.savez(f, **state)
    else:
        from app.lean_imports import skops_io; sio = skops_io()  # noqa: E702 (no torch: app/lean_imports.py)

        sio.dump(state, out / MODEL_FILE)
    meta = {"schema": SCHEMA_VERSION, **_jsonable(metadata)}
    (out / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    sign_artifact(out, key)
    return out


def sign_artifact(path: str | Path, key: bytes | str | None = None) -> None:
    k = resolve_signing_key(key)
    p = Path(path)
    names = (model_file(p), METADATA_FILE)
    files = {name: _sha256(p / name) for name in names}
    sizes = {name: (p / name).stat().st_size for name in names}
    sig = {"algorithm": ALGORITHM, "files": files, "sizes": sizes, "key_id": hashlib.sha256(k).hexdigest()[:8],
           "mac": _mac(k, files, sizes)}
    (p / SIGNATURE_FILE).write_text(json.dumps(sig, indent=2, sort_keys=True) + "\n")


def verify_signature(path: str | Path, key: bytes | str | None = None) -> dict[str, Any]:
    """Check the signature and file digests; returns the metadata. Uses nothing else in the folder."""
    p = Path(path)
    if not p.is_dir():
        raise ArtifactError(f"artifact {p} not found (expected a folder with {METADATA_FILE} and "
                            f"{' or '.join(MODEL_FILES)})")
    sig_path = p / SIGNATURE_FILE
    if not sig_path.is_file():
        raise ArtifactError(f"artifact {p} is not signed ({SIGNATURE_FILE} missing); refusing to load it")
    manifest = verify_manifest(sig_path.read_bytes(), key, str(p))
    for name, (digest, size) in manifest.items():
        f = p / name
        if not f.is_file():
            raise ArtifactError(f"artifact {p}: {name} is missing")
        if (size is not None and f.stat().st_size != size) or not hmac.compare_digest(_sha256(f), digest):
            raise ArtifactError(f"artifact {p}: {name} was modified after signing (SHA-256 mismatch); refusing to load it")
    if all((p / name).exists() for name in MODEL_FILES):  # load_state must read the signed one
        raise ArtifactError(f"artifact {p} holds both {' and '.join(MODEL_FILES)}; only one is signed")
    try:
        meta = json.loads((p / METADATA_FILE).read_text())
    except ValueError as e:
        raise ArtifactError(f"artifact {p}: {METADATA_FILE} is not JSON ({e})") from e
    for field in ("version", "family", "labels", "featurizer"):
        if field not in meta:
            raise ArtifactError(f"artifact {p}: metadata lacks {field!r}")
    return meta


def verify_manifest(raw: bytes, key: bytes | str | None, where: str) -> dict[str, tuple[str, int | None]]:
    """Check a signature.json on its own (no other file needed): name -> (SHA-256, size or None).

    What a remote download verifies before it fetches anything large; raises ArtifactError."""
    k = resolve_signing_key(key)
    try:
        sig = json.loads(raw)
        files = {str(n): str(d) for n, d in dict(sig["files"]).items()}
        sizes = sig.get("sizes")
        sizes = None if sizes is None else {str(n): int(v) for n, v in dict(sizes).items()}
        mac = str(sig["mac"])
        algorithm = sig["algorithm"]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ArtifactError(f"artifact {where}: {SIGNATURE_FILE} is malformed ({e})") from e
    if algorithm != ALGORITHM:
        raise ArtifactError(f"artifact {where}: signature algorithm {algorithm!r} is not {ALGORITHM!r}")
    if set(files) not in ({name, METADATA_FILE} for name in MODEL_FILES):
        raise ArtifactError(f"artifact {where}: signature covers {sorted(files)}, expected {METADATA_FILE} and one "
                            f"of {', '.join(MODEL_FILES)}")
    if sizes is not None and (set(sizes) != set(files) or any(v < 0 for v in sizes.values())):
        raise ArtifactError(f"artifact {where}: {SIGNATURE_FILE} sizes do not match its files")
    if not hmac.compare_digest(mac, _mac(k, files, sizes)):
        raise ArtifactError(
            f"artifact {where}: signature does not verify with this key (key id {hashlib.sha256(k).hexdigest()[:8]}, "
            f"signed with {sig.get('key_id', '?')}); wrong DOKA_SIGNING_KEY or a tampered signature"
        )
    return {n: (d, None if sizes is None else sizes[n]) for n, d in files.items()}


def check_featurizer(meta: dict[str, Any], featurizer: Any) -> None:
    """Refuse an artifact whose embedding differs from the featurizer that would feed it."""
    want = meta["featurizer"]
    if want.get("id") != featurizer.id:
        raise ArtifactError(
            f"artifact {meta['version']} was trained with featurizer {want.get('id')!r}, "
            f"but this router uses {featurizer.id!r}; retrain or use the matching featurizer"
        )
    if int(want.get("dim", -1)) != int(featurizer.dim):
        raise ArtifactError(f"artifact {meta['version']}: featurizer dim {want.get('dim')} != {featurizer.dim}")
    if want.get("fingerprint") != featurizer.fingerprint:
        raise ArtifactError(
            f"artifact {meta['version']}: featurizer weights differ (artifact {want.get('fingerprint')}, "
            f"local {featurizer.fingerprint}); the embedding would not match"
        )


_ALLOWED_TYPE_PREFIXES = ("sklearn.", "numpy.", "builtins.", "scipy.")


def model_file(path: str | Path) -> str:
    """The artifact's model file name: ARRAYS_FILE or MODEL_FILE (whichever it holds)."""
    return ARRAYS_FILE if (Path(path) / ARRAYS_FILE).is_file() else MODEL_FILE


def signed_files(signature: dict[str, Any]) -> tuple[str, ...]:
    """The files a signature.json covers, checked against the names an artifact may hold (for copying)."""
    names = tuple(sorted(signature.get("files") or {}))
    if not names or any(n not in (*MODEL_FILES, METADATA_FILE) for n in names):
        raise ArtifactError(f"signature lists unexpected files {list(names)}")
    return names


def load_state(path: str | Path) -> dict[str, Any]:
    """Load the model file: npz arrays (allow_pickle=False), or skops trusting only
    sklearn/numpy/scipy types. Never pickle."""
    if model_file(path) == ARRAYS_FILE:
        try:
            with np.load(Path(path) / ARRAYS_FILE, allow_pickle=False) as arrays:
                state = {name: arrays[name] for name in arrays.files}
            return {k: str(v) if v.dtype.kind == "U" and v.ndim == 0 else v for k, v in state.items()}
        except Exception as e:  # noqa: BLE001 - any parse failure means an unusable file
            raise ArtifactError(f"artifact {path}: {ARRAYS_FILE} is not a valid npz file ({e})") from e
    from app.lean_imports import skops_io; sio = skops_io()  # noqa: E702 (no torch: app/lean_imports.py)

    f = Path(path) / MODEL_FILE
    try:
        untrusted = sio.get_untrusted_types(file=f)
    except Exception as e:  # noqa: BLE001 - any parse failure means an unusable file
        raise ArtifactError(f"artifact {path}: {MODEL_FILE} is not a valid skops file ({e})") from e
    bad = [t for t in untrusted if not t.startswith(_ALLOWED_TYPE_PREFIXES)]
    if bad:
        raise ArtifactError(f"artifact {path}: {MODEL_FILE} holds types outside sklearn/numpy: {bad}")
    state = sio.load(f, trusted=untrusted)
    if not isinstance(state, dict):
        raise ArtifactError(f"artifact {path}: {MODEL_FILE} does not hold a router state")
    return state


def load_artifact(path: str | Path, key: bytes | str | None = None, featurizer: Any = None) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """Verify then load: (metadata, state, featurizer). Raises ArtifactError on any problem."""
    from router.featurizer import FeaturizerError, get_featurizer

    meta = verify_signature(path, key)
    if featurizer is None:
        try:
            featurizer = get_featurizer(meta["featurizer"]["id"])
        except FeaturizerError as e:
            raise ArtifactError(f"artifact {meta['version']}: {e}") from e
    check_featurizer(meta, featurizer)
    return meta, load_state(path), featurizer
