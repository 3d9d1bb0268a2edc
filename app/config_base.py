"""What every part of the config shares: strict models, the config error, and secrets
resolved from the environment (`os.environ/NAME`) only when used."""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict

ENV_PREFIX = "os.environ/"


class ConfigError(ValueError):
    """A config file that cannot be used; the message says where and why."""


def resolve_secret(value: Any) -> Any:
    """Resolve `os.environ/NAME` references; other values pass through unchanged."""
    if isinstance(value, str) and value.startswith(ENV_PREFIX):
        name = value[len(ENV_PREFIX):]
        if name not in os.environ:
            raise ConfigError(f"environment variable {name!r} is referenced by the config but not set")
        return os.environ[name]
    if isinstance(value, dict):
        return {k: resolve_secret(v) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_secret(v) for v in value]
    return value


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
