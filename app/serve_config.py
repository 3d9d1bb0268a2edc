"""The Ray Serve config (the `applications:` schema of `serve deploy` and KubeRay's
serveConfigV2) for one doka config: the gateway application, then one per vLLM tier.

`doka run` and a RayService must run the same applications, so both deploy this config, built
by `app.graph:app_builder` (the gateway) and `app.graph:tier_app_builder` (each vLLM tier, its
own application: deployments/tier_apps.py); this module only adds the per-deployment options that
`serve deploy` applies on top (replicas/autoscaling, actor resources, router user_config).
"""

from __future__ import annotations

from typing import Any

from app.config import DokaConfig
from app.placement import DEPLOYMENT_NAMES, graph_deployments, router_home
from deployments.tier_apps import TIER_BUILDER, tier_apps

IMPORT_PATH = "app.graph:app_builder"


def config_dict(cfg: DokaConfig) -> dict[str, Any]:
    """The config as plain JSON data, keeping only what the file set (defaults re-apply on load).

    `os.environ/NAME` references stay references: the pods resolve them from their env.
    """
    return cfg.model_dump(mode="json", exclude_unset=True)


def router_owner(cfg: DokaConfig) -> str:
    """The deployment whose `reconfigure` takes the router user_config (`router.placement`)."""
    return router_home(cfg)


def router_user_config(cfg: DokaConfig) -> dict[str, Any]:
    """What the router's `reconfigure` receives (on `router_owner(cfg)`); patching it swaps
    artifacts in place.

    Same keys as app/graph.py sets, so `serve deploy` of this config changes nothing by itself.
    """
    return {"strategy": cfg.router.strategy, "artifact": cfg.router.artifact, "registry": cfg.router.registry}


def deployment_options(cfg: DokaConfig) -> list[dict[str, Any]]:
    """Per-deployment overrides in `serve deploy` form, from `cfg.deployments`."""
    out: list[dict[str, Any]] = []
    owner = router_owner(cfg)
    present = graph_deployments(cfg)  # the deployments app/graph.py binds
    for section, name in DEPLOYMENT_NAMES.items():
        options = getattr(cfg.deployments, section)
        if options is None or name not in present:
            continue  # a deployment this config's graph does not have
        opts: dict[str, Any] = {"name": name, **options.serve_options()}
        if name == owner:
            opts["user_config"] = router_user_config(cfg)
        out.append(opts)
    return out


def tier_args(cfg: DokaConfig, model: str, *, inline: bool = True, config_path: str | None = None) -> dict[str, Any]:
    """`app.graph:tier_app_builder`'s args: inline, only the model's name and `vllm:` section (so
    a change elsewhere in the config leaves the engine running); else the config file and name."""
    if not inline:
        return {"config_path": config_path, "model": model}
    entry = cfg.model(model)
    assert entry is not None and entry.vllm is not None
    return {"entry": {"model_name": model, "provider": "vllm",
                      "vllm": entry.vllm.model_dump(mode="json", exclude_unset=True)}}


def serve_config(cfg: DokaConfig, *, inline: bool = True, config_path: str | None = None) -> dict[str, Any]:
    """The Serve config: the gateway application (`app.graph:app_builder`) first, then one
    application per vLLM tier (`app.graph:tier_app_builder`, no route prefix: only the ingress
    calls it), so one tier whose engine fails to start fails its own application, not the gateway.

    inline=True embeds the whole config as `args.config`, so a cluster needs no config file;
    otherwise `args.config_path` names a file that every node can read.
    """
    if inline:
        args: dict[str, Any] = {"config": config_dict(cfg)}
    else:
        if not config_path:
            raise ValueError("serve_config(inline=False) needs config_path")
        args = {"config_path": config_path}
    app = {
        "name": cfg.server.app_name,
        "route_prefix": cfg.server.route_prefix,
        "import_path": IMPORT_PATH,
        "args": args,
        "deployments": deployment_options(cfg),
    }
    tiers = [{"name": where["app"], "route_prefix": None, "import_path": TIER_BUILDER,
              "args": tier_args(cfg, model, inline=inline, config_path=config_path)}
             for model, where in tier_apps(cfg).items()]
    return {"applications": [app, *tiers]}
