"""The one doka config file: a pydantic model of the YAML that drives the local run,
the tests and the RayService manifest.

The model list follows LiteLLM's `model_list` shape so existing LiteLLM proxy configs
mostly carry over. Secrets are never stored in the file: any string value of the form
`os.environ/NAME` is resolved from the environment when it is used (`resolve_secret`).

This module ties the file together (`DokaConfig`, cross-section checks, lookups, loading); the
parts are in app/config_base.py (strict models, secrets), app/config_models.py (the model list)
and app/config_sections.py (deployments, router, egress, server, accounts, batches, observability,
cascades, console). Everything is importable from here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from app.config_base import ENV_PREFIX, ConfigError, StrictModel, resolve_secret
from app.config_models import SELF_HOSTED_PREFIXES, ModelEntry, ModelInfo, ProviderLimits, VLLMParams
from app.config_sections import (
    AccountsConfig, BatchesConfig, CascadeConfig, ConsoleConfig, DeploymentOptions, DeploymentsConfig,
    EgressConfig, MlflowTracingConfig, ObservabilityConfig, OIDCConfig, RouterConfig, ServerConfig,
)

__all__ = [
    "ENV_PREFIX", "SELF_HOSTED_PREFIXES", "DEFAULT_CONFIG_PATH", "AccountsConfig", "BatchesConfig", "CascadeConfig",
    "ConfigError", "ConsoleConfig", "DeploymentOptions", "DeploymentsConfig", "DokaConfig", "EgressConfig",
    "MlflowTracingConfig", "ModelEntry", "ModelInfo", "ObservabilityConfig", "OIDCConfig", "ProviderLimits",
    "RouterConfig", "ServerConfig", "StrictModel", "VLLMParams", "load_config", "parse_config", "resolve_secret",
]


@dataclass(frozen=True)
class _Lookups:
    by_name: dict[str, ModelEntry]
    chains: dict[str, tuple[str, ...]]
    public: tuple[str, ...]  # model, chain and cascade names (the auto name is read live from `server`)
    auto: tuple[str, ...]


class DokaConfig(StrictModel):
    server: ServerConfig = Field(default_factory=ServerConfig)
    model_list: list[ModelEntry] = Field(min_length=1)
    fallbacks: dict[str, list[str]] = Field(
        default_factory=dict, description="named fallback chains, tried in order"
    )
    cascades: dict[str, CascadeConfig] = Field(
        default_factory=dict, description="named cascades (weak + verifier, strong on disagreement)"
    )
    router: RouterConfig = Field(default_factory=RouterConfig)
    egress: EgressConfig = Field(default_factory=EgressConfig)
    deployments: DeploymentsConfig = Field(default_factory=DeploymentsConfig)
    accounts: AccountsConfig = Field(default_factory=AccountsConfig)
    batches: BatchesConfig = Field(default_factory=BatchesConfig)
    observability: ObservabilityConfig = Field(default_factory=ObservabilityConfig)
    console: ConsoleConfig = Field(default_factory=ConsoleConfig)

    @field_validator("model_list")
    @classmethod
    def _unique_names(cls, models: list[ModelEntry]) -> list[ModelEntry]:
        seen: set[str] = set()
        for m in models:
            if m.model_name in seen:
                raise ValueError(f"model_name {m.model_name!r} appears twice")
            seen.add(m.model_name)
        return models

    @model_validator(mode="after")
    def _check_references(self) -> "DokaConfig":
        names = {m.model_name for m in self.model_list}
        if self.server.auto_model in names:
            raise ValueError(f"server.auto_model {self.server.auto_model!r} clashes with a model_name")
        for chain_name, chain in self.fallbacks.items():
            if chain_name in names:
                raise ValueError(f"fallback chain {chain_name!r} clashes with a model_name")
            if not chain:
                raise ValueError(f"fallback chain {chain_name!r} is empty")
            for m in chain:
                if m not in names:
                    raise ValueError(f"fallback chain {chain_name!r} names unknown model {m!r}")
        chat = {m.model_name for m in self.model_list if m.model_info.mode == "chat"}
        for name, c in self.cascades.items():
            if name in names or name in self.fallbacks or name == self.server.auto_model:
                raise ValueError(f"cascade {name!r} clashes with a model, chain or the auto name")
            for role in ("weak", "verifier", "strong"):
                if getattr(c, role) not in chat:
                    raise ValueError(f"cascade {name!r}: {role} {getattr(c, role)!r} is not a chat model of model_list")
            if len({c.weak, c.verifier, c.strong}) < 3:
                raise ValueError(f"cascade {name!r}: weak, verifier and strong must be three different models")
        limited = [m.model_name for m in self.model_list if m.model_info.limits is not None]
        if limited and not self.accounts.require_keys:
            raise ValueError(f"model_info.limits on {', '.join(limited)} needs accounts.require_keys: true "
                             "(provider limits are counted by the accounts core all ingress replicas share)")
        novel = self.router.novel_cascade
        if novel is not None and novel not in self.cascades:
            raise ValueError(f"router.novel_cascade {novel!r} is not a cascade; cascades: "
                             f"{', '.join(self.cascades) or 'none'}")
        return self

    @cached_property
    def lookups(self) -> "_Lookups":
        """Hot-path tables, built on first use (`model`, `chain_for` were linear scans per request).

        A plain instance attribute once built (a pydantic private attribute costs ~1.7 us a read,
        more than the scan it replaces). Built from `model_list` and `fallbacks`, which nothing
        changes after load; call `reindex()` after editing them in place.
        """
        by_name = {m.model_name: m for m in self.model_list}
        chains: dict[str, tuple[str, ...]] = {name: tuple(chain) for name, chain in self.fallbacks.items()}
        for m in self.model_list:  # a model: itself, then the rest of the first chain that holds it
            chain = next((c for c in self.fallbacks.values() if m.model_name in c), None)
            chains[m.model_name] = tuple(chain[chain.index(m.model_name):]) if chain else (m.model_name,)
        for name, c in self.cascades.items():  # escalation: the strong model and its fallbacks
            chains[name] = chains[c.strong]
        return _Lookups(by_name, chains, (*by_name, *self.fallbacks, *self.cascades),
                        tuple(m.model_name for m in self.model_list
                              if not m.model_info.parallel and m.model_info.mode == "chat"))

    def reindex(self) -> None:
        """Forget the lookup tables (after changing `model_list` or `fallbacks` in place)."""
        self.__dict__.pop("lookups", None)

    # ---- lookups used on the hot path (cheap, no I/O) ----
    def model(self, name: str) -> ModelEntry | None:
        return self.lookups.by_name.get(name)

    def public_names(self) -> list[str]:
        """Names a client may send as `model`: every model, chain and cascade, and the auto name."""
        return [self.server.auto_model, *self.lookups.public]

    def auto_candidates(self) -> list[str]:
        return list(self.lookups.auto)

    def chain_for(self, name: str) -> list[str]:
        """The ordered models to try for a requested name.

        A chain name gives that chain; a cascade, its strong model's (what it escalates to). A
        model name gives the model, then the rest of the first chain that contains it (so
        `vllm-qwen` falls back along `vllm-qwen -> ...`).
        """
        chain = self.lookups.chains.get(name)
        return list(chain) if chain is not None else [name]

    def data_path(self, *parts: str) -> Path:
        return Path(os.path.expanduser(self.server.data_dir)).joinpath(*parts)


def load_config(path: str | os.PathLike[str]) -> DokaConfig:
    """Read and validate a config file; raises ConfigError naming the file and field."""
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"config file {p} not found") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {e}") from e
    return parse_config(raw, source=str(p))


def parse_config(raw: Any, source: str = "<config>") -> DokaConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping")
    try:
        return DokaConfig.model_validate(raw)
    except ValidationError as e:
        lines = [f"{source}: invalid config"]
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
            lines.append(f"  {loc}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from e


DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "config" / "default.yaml"
