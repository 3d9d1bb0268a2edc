"""Builds the doka Serve application from one config.

    ingress --(auto only, `router.placement: deployment`)--> router
       (`router.placement: ingress`, the default: the router runs inside each ingress replica)
       |---> egress (`egress.placement: deployment`: every `provider: litellm` model, one
       |     litellm.Router; `egress.placement: ingress`, the default: inside each ingress replica)
       |---> egress-translated (optional: the Router.acompletion-path models, in their own replicas)
       '- - > vLLM tiers: each `provider: vllm` model is its OWN Serve application
             (`<app_name>-tier-<model>`, no route prefix, built by `tier_app_builder`); the
             ingress reaches it by name (deployments/tier_apps.py), so an engine that fails
             to start fails its own application only, never the gateway's

`app_builder(args)` is the import path for `serve run app.graph:app_builder config_path=...`
and for the RayService's serveConfigV2 (`args: {config: {...inline...}}`), so the local run and
Kubernetes run the same graph. Deployment options come from the config's `deployments:`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ray.serve import Application

from pydantic import ValidationError

from app.config import ConfigError, DokaConfig, ModelEntry, load_config, parse_config
from app.placement import egress_homes, router_home
from app.serve_config import DEPLOYMENT_NAMES, router_user_config
from deployments.tier_apps import tier_apps

logger = logging.getLogger("ray.serve")

# Internal hops log no per-call access line (the ingress logs each request once); measured
# cost of those lines: docs/benchmarks.md. DOKA_ACCESS_LOG=all turns them back on.
_QUIET = {"logging_config": {"enable_access_log": os.environ.get("DOKA_ACCESS_LOG") == "all"}}


def _config_dict(cfg: DokaConfig) -> dict[str, Any]:
    # exclude_unset keeps `os.environ/NAME` references and lets defaults re-apply in replicas
    return cfg.model_dump(mode="json", exclude_unset=True)


def _cluster_resources() -> dict[str, Any] | None:
    try:
        import ray

        return ray.cluster_resources() if ray.is_initialized() else None
    except Exception:
        return None


def _down_tiers(cfg: DokaConfig) -> dict[str, str]:
    """vLLM tiers that cannot start here (deployments/tier_check.py: no vLLM, no weights, no GPU),
    and why; logged, and named by the ingress on /health/readiness."""
    from deployments.tier_check import down_tiers

    if not any(m.provider == "vllm" for m in cfg.model_list):
        return {}
    down = down_tiers(cfg, _cluster_resources())
    for name, why in down.items():
        logger.warning("doka: vLLM tier %s left out: %s; the other tiers serve, its chains skip it", name, why)
    return down


def build_tier_app(entry: ModelEntry) -> Application:
    """One vLLM tier's own Serve application (its LLMServer alone).

    Raises ConfigError when deployments/tier_check.py knows it cannot start: Serve then marks
    only this application DEPLOY_FAILED, with that reason as its message.
    """
    from deployments.tier_check import tier_problem

    if entry.provider != "vllm":
        raise ConfigError(f"model {entry.model_name!r} is not a `provider: vllm` model")
    resources = _cluster_resources()
    problem = tier_problem(entry, None if resources is None else float(resources.get("GPU", 0) or 0))
    if problem:
        raise ConfigError(f"vLLM tier {entry.model_name} cannot start: {problem}")
    from deployments import vllm as vllm_deployments

    return vllm_deployments.build_vllm_app(entry)


def tier_app_builder(args: dict[str, Any]) -> Application:
    """Serve's application builder for one tier: its inline `entry` (what app/serve_config.py
    writes: only what the engine needs, so editing a chain or a price redeploys no engine), or
    `model=NAME` of a `config_path` / inline `config`."""
    if args.get("entry") is not None:
        try:
            entry = ModelEntry.model_validate(args["entry"])
        except ValidationError as e:
            raise ConfigError(f"args.entry: {e}") from None
    else:
        entry = _args_config(args).model(str(args.get("model")))
        if entry is None:
            raise ConfigError(f"model {args.get('model')!r} is not in the config")
    return build_tier_app(entry)


def _accounts_app(cfg: DokaConfig) -> Application | None:
    """The accounts deployment when keys are required; refuses to start without one.

    A gateway that was told to require keys but cannot check them must not serve: it would
    admit every caller with the provider keys behind it. So any failure to import or build the
    accounts deployment is a ConfigError (one line, naming the setting), never a warning.
    """
    if not cfg.accounts.require_keys:
        return None
    try:
        from accounts.gateway import build_accounts_app  # type: ignore[import-not-found]

        return build_accounts_app(cfg)
    except Exception as e:  # noqa: BLE001 - whatever broke, the answer is the same: do not start
        raise ConfigError(
            f"accounts.require_keys is true but the accounts deployment cannot be built "
            f"({type(e).__name__}: {e}); refusing to start without key checks. Fix the accounts "
            f"install/database, or set accounts.require_keys: false for a keyless local run") from e


def check_accounts(cfg: DokaConfig) -> None:
    """Raise the ConfigError `build_app` would, before a cluster is started for nothing: `doka
    run` deploys through the Serve controller, where it would surface only as a failed deploy."""
    _accounts_app(cfg)


def build_app(cfg: DokaConfig) -> Application:
    """The whole graph, with per-deployment options from `cfg.deployments`."""
    accounts = _accounts_app(cfg)  # first: a keyed gateway without accounts never gets built
    from deployments.egress import Egress
    from deployments.ingress import Ingress
    from deployments.router import RouterDeployment

    raw = _config_dict(cfg)
    d = cfg.deployments
    homes = egress_homes(cfg)  # models with home "Ingress" get no handle: the ingress calls them
    egress_apps = {  # EgressTranslated: Router.acompletion translation in replicas of its own
        name: Egress.options(name=name, **getattr(d, section).serve_options(), **_QUIET).bind(raw)
        for section, name in DEPLOYMENT_NAMES.items() if section.startswith("egress") and name in homes.values()}
    model_apps: dict[str, Application] = {m: egress_apps[h] for m, h in homes.items() if h in egress_apps}
    down = _down_tiers(cfg)  # tiers that cannot start, and why (named on /health/readiness)
    if router_home(cfg) == "Router":
        router = RouterDeployment.options(**d.router.serve_options(), **_QUIET,
                                          user_config=router_user_config(cfg)).bind(raw)
        ingress_options = d.ingress.serve_options()
    else:  # decisions inside each ingress replica: the router user_config is the ingress's own
        router = None
        ingress_options = {**d.ingress.serve_options(), "user_config": router_user_config(cfg)}
    # capabilities resolved here, once: LiteLLM's model info needs litellm, which the ingress
    # itself does not import with `egress.placement: deployment`
    from app.capabilities import resolve_all

    return Ingress.options(**ingress_options).bind(raw, model_apps, router, accounts, resolve_all(cfg), down,
                                                   tier_apps(cfg))


def build_apps(cfg: DokaConfig) -> dict[str, Application]:
    """Every application of the config, the gateway's first, for an imperative `serve.run` of
    each (the tests; `doka run` and RayService deploy app/serve_config.py's config instead).

    A tier that cannot start here gets no application: the gateway names it down already.
    """
    apps = {cfg.server.app_name: build_app(cfg)}
    down = _down_tiers(cfg)
    for model, where in tier_apps(cfg).items():
        if model not in down:
            apps[where["app"]] = build_tier_app(cfg.model(model))  # type: ignore[arg-type]
    return apps


def _args_config(args: dict[str, Any]) -> DokaConfig:
    if args.get("config") is not None:
        return parse_config(args["config"], source="args.config")
    from app.config import DEFAULT_CONFIG_PATH

    return load_config(args.get("config_path") or DEFAULT_CONFIG_PATH)


def app_builder(args: dict[str, Any]) -> Application:
    """Serve's application builder: `config_path=FILE` or an inline `config` mapping."""
    return build_app(_args_config(args))
