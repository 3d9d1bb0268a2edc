"""The Routing page's registry view and its promote / roll back action.

Versions side by side come from each version's metadata.json (family, featurizer, training data,
evaluation metrics). Promoting goes through `training.from_traces.reconfigure_live`, the same
Serve user_config -> `reconfigure` path `doka router reload` takes: the app's router is pinned to
the chosen version in place on every replica, nothing restarts. Only an app Serve deployed
declaratively (`doka run`, `serve deploy`, a RayService) can be re-pinned from inside itself; an
app started with `serve.run` is refused with the CLI command to use instead.
"""

from __future__ import annotations

import json
from typing import Any

from router.versions import LATEST, VersionNameError, check_version

# metadata is read only to be shown (escaped); a remote registry's copy is capped, never trusted
MAX_METADATA_BYTES = 256 * 1024
METRIC_KEYS = ("apgr", "auc", "cpt_50", "cpt_80", "quality", "cost_usd", "strong_share")


class PromoteRefused(ValueError):
    """A promote the console will not do: a bad or unknown version (400), or an app that cannot be
    re-pinned from inside (409: no registry, not deployed declaratively)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _metadata(reg: Any, version: str) -> dict[str, Any]:
    try:
        meta = json.loads(reg.read_file(version, "metadata.json", MAX_METADATA_BYTES))
    except (OSError, ValueError) as e:  # RegistryError is a ValueError
        return {"error": f"{type(e).__name__}: {e}"}
    return meta if isinstance(meta, dict) else {"error": "metadata.json is not an object"}


def _metrics(meta: dict[str, Any]) -> str:
    """The evaluation figures training recorded, flattened to `name=value` (top level first)."""
    metrics = meta.get("metrics") or {}
    flat: list[str] = []
    if isinstance(metrics, dict):
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                flat.append(f"{k}={v:.4g}")
            elif isinstance(v, dict):
                flat.extend(f"{k}.{m}={v[m]:.4g}" for m in METRIC_KEYS
                            if isinstance(v.get(m), (int, float)) and not isinstance(v.get(m), bool))
    return ", ".join(flat[:12]) or "(none recorded)"


def versions(registry: str, live: str | None, limit: int = 20) -> list[dict[str, Any]]:
    """The newest `limit` versions, newest first, each with what it is and whether it serves now."""
    from router.registry import Registry

    reg = Registry(registry)
    latest = reg.latest_version()
    rows = []
    for v in reversed(reg.list_versions()[-limit:]):
        meta = _metadata(reg, v)
        featurizer = meta.get("featurizer") if isinstance(meta.get("featurizer"), dict) else {}
        data = meta.get("training_data") if isinstance(meta.get("training_data"), dict) else {}
        rows.append({"version": v, "live": v == live, "latest": v == latest,
                     "family": meta.get("family", ""), "created": meta.get("created", ""),
                     "featurizer": featurizer.get("id", ""),
                     "training_rows": data.get("records", ""),
                     "metrics": meta.get("error") or _metrics(meta)})
    return rows


def rollback_target(registry: str, live: str | None) -> str | None:
    """The version published just before the live one (None when the live one is the oldest or unknown)."""
    from router.registry import Registry

    names = Registry(registry).list_versions()
    if live not in names:
        return None
    i = names.index(live)
    return names[i - 1] if i > 0 else None


def promote(cfg: Any, version: str) -> dict[str, Any]:
    """Pin the running app's router to `version` through Serve `reconfigure`; blocking (run it in a thread)."""
    from router.registry import Registry
    from training.from_traces import local_declarative_apps, reconfigure_live

    if not cfg.router.registry:
        raise PromoteRefused("router.registry is not set in the config: nothing to promote from", 409)
    try:
        version = check_version(version, allow_latest=False)
    except VersionNameError as e:
        raise PromoteRefused(str(e)) from e
    if version not in Registry(cfg.router.registry).list_versions():
        raise PromoteRefused(f"the registry has no version {version!r}")
    if cfg.server.app_name not in local_declarative_apps():
        raise PromoteRefused(
            f"app {cfg.server.app_name!r} was not deployed declaratively (serve.run): promote it with "
            f"`doka router reload --version {version}` instead", 409)
    pinned = cfg.model_copy(update={"router": cfg.router.model_copy(update={"artifact": version})})
    return {"version": version, "via": reconfigure_live(pinned, version)}


__all__ = ["LATEST", "PromoteRefused", "promote", "rollback_target", "versions"]
