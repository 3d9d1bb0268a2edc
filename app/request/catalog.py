"""Which names this gateway answers to, what each may reach, and what `/v1/models` says.

Built once per replica from the config and the tiers that have a backend: the public names
(models, chains, cascades, `auto`), `auto`'s candidates, the cascades whose three models are
all served, each name's mode (chat or embedding) and the extra client parameters an operator
allowed on anything the name can reach.
"""

from __future__ import annotations

from typing import Any

from app.config import CascadeConfig, DokaConfig
from app.errors import OpenAIError, bad_request, unknown_model


class Catalog:
    def __init__(self, cfg: DokaConfig, served: set[str], down: dict[str, str],
                 caps: dict[str, dict]) -> None:
        """`served`: models with a backend in this replica; `down`: tiers left out at start
        (still known names: asked by name, they fall back along their chain)."""
        self.cfg, self.caps = cfg, caps
        self.auto = cfg.server.auto_model
        self.candidates = [m for m in cfg.auto_candidates() if m in served]
        self.cascades: dict[str, CascadeConfig] = {n: c for n, c in cfg.cascades.items()
                                                 if {c.weak, c.verifier, c.strong} <= served}
        # `router.novel_cascade`: auto prompts a gated artifact calls novel go through this cascade
        self.novel = cfg.router.novel_cascade if cfg.router.novel_cascade in self.cascades else None
        self.public = [n for n in cfg.public_names() if n == self.auto or n in cfg.fallbacks
                       or n in served or n in self.cascades or n in down]
        self.public_set = set(self.public)
        self.mode_of = {n: cfg.model(cfg.chain_for(n)[0]).model_info.mode  # type: ignore[union-attr]
                        for n in self.public if n != self.auto}
        self.client_params = self._client_params_by_name()

    def check(self, requested: str, kind: str) -> None:
        """404 for a name this gateway does not serve; 400 for the wrong endpoint's mode."""
        if requested not in self.public_set:
            raise unknown_model(requested, self.public)
        if self.mode_of.get(requested, "chat") != ("embedding" if kind == "embedding" else "chat"):
            raise self._wrong_mode(requested, kind)

    def cascading(self, requested: str) -> bool:
        """Whether this name may call three models (a cascade, or `auto` with a novel cascade)."""
        return requested in self.cascades or (requested == self.auto and self.novel is not None)

    def _client_params_by_name(self) -> dict[str, frozenset[str]]:
        """Per public name, the extra body parameters an operator allowed (`model_info.
        allow_client_params`) on any model that name can reach; the egress passes each model
        only its own, so a fallback tier never gets what its operator did not allow."""
        out: dict[str, frozenset[str]] = {}
        for name in self.public:
            reach = set(self.candidates) if name == self.auto else set(self.cfg.chain_for(name))
            if name == self.auto:
                for c in self.candidates:
                    reach.update(self.cfg.chain_for(c))
            if name in self.cascades:
                reach.update((self.cascades[name].weak, self.cascades[name].verifier))
            names = {p for m in reach if (e := self.cfg.model(m)) is not None for p in e.model_info.allow_client_params}
            if names:
                out[name] = frozenset(names)
        return out

    def _wrong_mode(self, requested: str, kind: str) -> OpenAIError:
        """A 400 for a chat request to an embedding model, or an embedding request to a chat model."""
        embedders = sorted(n for n, m in self.mode_of.items() if m == "embedding")
        if kind == "embedding":
            what = "routes chat requests only" if requested == self.auto else "is a chat model"
            return bad_request(f"{requested!r} {what}; /v1/embeddings needs an embedding model: "
                               f"{', '.join(embedders) or 'none configured'}", param="model", code="model_not_supported")
        return bad_request(f"{requested!r} is an embedding model; call it on /v1/embeddings, or name a chat model",
                           param="model", code="model_not_supported")

    def model_list(self, strategy: str) -> dict[str, Any]:
        """The `/v1/models` body: every public name with what it is (`doka`: model, chain, cascade, router)."""
        cfg = self.cfg
        data = []
        for name in self.public:
            entry = cfg.model(name)
            info: dict[str, Any] = {"id": name, "object": "model", "created": 0, "owned_by": "doka"}
            if name == self.auto:
                info["doka"] = {"kind": "router", "strategy": strategy, "candidates": self.candidates,
                                "novel_cascade": self.novel}
            elif name in self.cascades:
                c = self.cascades[name]
                info["doka"] = {"kind": "cascade", "weak": c.weak, "verifier": c.verifier, "strong": c.strong,
                                "fallbacks": cfg.chain_for(name)[1:]}
            elif entry is None:
                info["doka"] = {"kind": "chain", "models": cfg.fallbacks[name]}
            else:
                mi = entry.model_info
                info["doka"] = {"kind": "model", "mode": mi.mode, "provider": entry.provider, "tier": mi.tier,
                                "parallel": mi.parallel, "timeout": mi.timeout,
                                "fallbacks": cfg.chain_for(name)[1:]}
                if name in self.caps:
                    info["doka"]["capabilities"] = self.caps[name]
                if mi.limits is not None:  # the provider's limits (the counts: /metrics)
                    info["doka"]["limits"] = mi.limits.model_dump(exclude_none=True)
                if mi.queue_limit is not None:  # the load itself: /health/readiness and /metrics
                    info["doka"]["queue_limit"] = mi.queue_limit
            data.append(info)
        return {"object": "list", "data": data}
