"""Validate manifests before a cluster sees them: KubeRay objects against the CRDs'
openAPIV3Schema, core objects (Secret) against the kubernetes client's model plus a small
schema. Unknown fields are errors here, because the API server would silently prune them.
"""

from __future__ import annotations

import copy
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

try:  # the C loader reads the 1 MB CRDs in a fraction of the time
    _Loader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _Loader = yaml.SafeLoader

# Where the KubeRay CRDs live in a doka checkout (shared/ beside the repo).
DEFAULT_CRD_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "kuberay-crds"
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


def _no_unknown_fields(schema: Any) -> Any:
    """Close every object schema that lists its properties, like the API server's pruning."""
    if isinstance(schema, dict):
        out = {k: _no_unknown_fields(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_no_unknown_fields(v) for v in schema]
    return schema


@lru_cache(maxsize=4)
def load_crd_schemas(crd_dir: str | Path = DEFAULT_CRD_DIR) -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> closed openAPIV3Schema, for every served version of every CRD."""
    crd_path = Path(crd_dir)
    files = sorted(crd_path.glob("*.yaml"))
    if not files:
        raise FileNotFoundError(f"no CRD YAML files in {crd_path}")
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for f in files:
        for crd in yaml.load_all(f.read_text(), Loader=_Loader):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for v in crd["spec"]["versions"]:
                schemas[(f"{group}/{v['name']}", kind)] = _no_unknown_fields(
                    copy.deepcopy(v["schema"]["openAPIV3Schema"]))
    return schemas


def _metadata_errors(obj: dict[str, Any]) -> list[str]:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return ["metadata: must be a mapping"]
    errors = []
    name = meta.get("name")
    if not isinstance(name, str) or len(name) > 253 or not _DNS1123.match(name):
        errors.append(f"metadata.name: {name!r} is not a DNS-1123 subdomain")
    ns = meta.get("namespace")
    if ns is not None and (not isinstance(ns, str) or len(ns) > 63 or not _DNS1123.match(ns) or "." in ns):
        errors.append(f"metadata.namespace: {ns!r} is not a DNS-1123 label")
    for key in ("labels", "annotations"):
        vals = meta.get(key, {})
        if not isinstance(vals, dict) or not all(isinstance(v, str) for v in vals.values()):
            errors.append(f"metadata.{key}: values must be strings")
    return errors


_SECRET_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "v1"},
        "kind": {"const": "Secret"},
        "metadata": {"type": "object"},
        "type": {"type": "string"},
        "immutable": {"type": "boolean"},
        "stringData": {"type": "object", "additionalProperties": {"type": "string"},
                       "propertyNames": {"pattern": _ENV_NAME.pattern}},
        "data": {"type": "object", "additionalProperties": {"type": "string", "contentEncoding": "base64"}},
    },
}


def _core_errors(obj: dict[str, Any]) -> list[str]:
    from kubernetes.client import ApiClient, V1Secret

    if (obj.get("apiVersion"), obj.get("kind")) != ("v1", "Secret"):
        return [f"no core schema for {obj.get('apiVersion')}/{obj.get('kind')}"]
    errors = [f"{'.'.join(map(str, e.path)) or '(top)'}: {e.message}"
              for e in jsonschema.Draft7Validator(_SECRET_SCHEMA).iter_errors(obj)]
    try:  # the client's own model must read it back unchanged (nothing dropped or renamed)
        back = ApiClient().sanitize_for_serialization(V1Secret.from_dict(obj))
        if back != obj:
            errors.append(f"kubernetes V1Secret reads it back as {back!r}")
    except Exception as e:  # noqa: BLE001 - any model error is a validation error
        errors.append(f"kubernetes V1Secret rejects it: {e}")
    return errors


def network_policy_errors(obj: dict[str, Any]) -> list[str]:
    """A NetworkPolicy against Kubernetes' own schema (kubernetes-validate ships it, strict: unknown
    fields are errors) and the kubernetes client's model (it must read it back unchanged)."""
    from kubernetes.client import ApiClient, V1NetworkPolicy

    errors = []
    try:
        import kubernetes_validate  # the `test` extra; the model check below runs without it
        from kubernetes_validate.utils import latest_version

        try:
            kubernetes_validate.validate(obj, latest_version(), strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{'.'.join(map(str, e.path)) or '(top)'}: {e.message}")
    except ImportError:
        pass
    try:
        back = ApiClient().sanitize_for_serialization(
            ApiClient()._ApiClient__deserialize(obj, V1NetworkPolicy))  # the client's own deserializer
        if back != obj:
            errors.append(f"kubernetes V1NetworkPolicy reads it back as {back!r}")
    except Exception as e:  # noqa: BLE001 - any model error is a validation error
        errors.append(f"kubernetes V1NetworkPolicy rejects it: {e}")
    return errors


def manifest_errors(obj: dict[str, Any], crd_dir: str | Path = DEFAULT_CRD_DIR) -> list[str]:
    """Human-readable problems with one manifest; empty when it is valid."""
    if not isinstance(obj, dict):
        return ["manifest must be a mapping"]
    errors = _metadata_errors(obj)
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key[0] == "v1":
        return errors + _core_errors(obj)
    if key == ("networking.k8s.io/v1", "NetworkPolicy"):
        return errors + network_policy_errors(obj)
    schemas = load_crd_schemas(str(crd_dir))
    if key not in schemas:
        return errors + [f"no CRD for apiVersion {key[0]!r} kind {key[1]!r} in {crd_dir}"]
    validator = jsonschema.Draft7Validator(schemas[key])
    for e in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.path))):
        errors.append(f"{'.'.join(map(str, e.path)) or '(top)'}: {e.message}")
    return errors
