"""Where each component of the graph runs: the one predicate every layer asks.

The graph (app/graph.py), the Serve config and the RayService render (app/serve_config.py,
kuberay/), and the ingress itself all decide from these functions, so a config that moves the
router or the egress into deployments of their own changes all of them together. Ray-free.
"""

from __future__ import annotations

from typing import Literal

from app.config import DokaConfig
from deployments.egress_paths import uses_router_path

# Serve deployment names of the graph, keyed by the config's `deployments:` section.
DEPLOYMENT_NAMES: dict[str, str] = {"ingress": "Ingress", "router": "Router", "egress": "Egress",
                                    "egress_translated": "EgressTranslated"}

RouterHome = Literal["Ingress", "Router"]
EgressHome = Literal["Ingress", "Egress", "EgressTranslated"]


def router_home_for(placement: str) -> RouterHome:
    """The deployment that runs the router (and takes its user_config) for a `router.placement`."""
    return "Router" if placement == "deployment" else "Ingress"


def router_home(cfg: DokaConfig) -> RouterHome:
    return router_home_for(cfg.router.placement)


def egress_homes(cfg: DokaConfig) -> dict[str, EgressHome]:
    """model_name -> the Serve deployment that calls its provider, for every external model:
    models on LiteLLM's Router path go to EgressTranslated when `deployments.egress_translated`
    is set, the others to the Egress deployment (`egress.placement: deployment`) or the ingress."""
    homes: dict[str, EgressHome] = {}
    for m in cfg.model_list:
        if m.provider != "litellm":
            continue
        if cfg.deployments.egress_translated is not None and uses_router_path(m.litellm_params):
            homes[m.model_name] = "EgressTranslated"
        else:
            homes[m.model_name] = "Egress" if cfg.egress.placement == "deployment" else "Ingress"
    return homes


def graph_deployments(cfg: DokaConfig) -> set[str]:
    """The doka deployments (of DEPLOYMENT_NAMES) this config's graph has."""
    return {"Ingress", router_home(cfg), *egress_homes(cfg).values()}
