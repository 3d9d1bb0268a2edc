"""The routing dataset: JSONL, one prompt per line.

    {"id": "...", "prompt": "...", "scores": {"model-a": 0.0-1.0, ...}, "costs": {"model-a": usd, ...}}

`costs` is optional; gaps are filled from per-call prices (`--cost model=usd`) or the doka config's
per-token prices (`fill_costs`). Extra keys (e.g. `task`) are kept as metadata and ignored.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class DatasetError(ValueError):
    """A dataset file that cannot be used; the message names the file and line."""


class Record(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str | int
    prompt: str
    scores: dict[str, float] = Field(min_length=1)
    costs: dict[str, float] | None = None

    @field_validator("scores")
    @classmethod
    def _scores_in_range(cls, v: dict[str, float]) -> dict[str, float]:
        for model, s in v.items():
            if not (0.0 <= s <= 1.0):
                raise ValueError(f"score for {model!r} is {s}, must be within [0, 1]")
        return v

    @field_validator("costs")
    @classmethod
    def _costs_non_negative(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for model, c in (v or {}).items():
            if c < 0:
                raise ValueError(f"cost for {model!r} is {c}, must be >= 0")
        return v


@dataclass
class Dataset:
    """Prompts with a score (and cost) matrix over `labels`; NaN marks a missing value."""

    ids: list[str]
    prompts: list[str]
    labels: list[str]
    scores: np.ndarray  # [n, m] float, NaN = not scored
    costs: np.ndarray  # [n, m] float, NaN = unknown
    source_hash: str
    extra: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, idx: Iterable[int] | np.ndarray) -> "Dataset":
        idx = np.asarray(list(idx) if not isinstance(idx, np.ndarray) else idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return Dataset(
            ids=[self.ids[i] for i in idx],
            prompts=[self.prompts[i] for i in idx],
            labels=list(self.labels),
            scores=self.scores[idx],
            costs=self.costs[idx],
            source_hash=hashlib.sha256((self.source_hash + ",".join(map(str, idx))).encode()).hexdigest(),
            extra=[self.extra[i] for i in idx] if self.extra else [],
        )

    def label_index(self, name: str) -> int:
        try:
            return self.labels.index(name)
        except ValueError:
            raise DatasetError(f"model {name!r} is not in the dataset; it has {self.labels}") from None

    def to_records(self) -> list[dict[str, Any]]:
        out = []
        for i in range(len(self)):
            rec: dict[str, Any] = {"id": self.ids[i], "prompt": self.prompts[i]}
            rec["scores"] = {m: float(self.scores[i, j]) for j, m in enumerate(self.labels) if not np.isnan(self.scores[i, j])}
            costs = {m: float(self.costs[i, j]) for j, m in enumerate(self.labels) if not np.isnan(self.costs[i, j])}
            if costs:
                rec["costs"] = costs
            if self.extra:
                rec.update({k: v for k, v in self.extra[i].items() if k not in rec})
            out.append(rec)
        return out


def from_records(records: list[Record], source_hash: str | None = None) -> Dataset:
    labels = sorted({m for r in records for m in r.scores})
    col = {m: j for j, m in enumerate(labels)}
    n, m = len(records), len(labels)
    scores = np.full((n, m), np.nan)
    costs = np.full((n, m), np.nan)
    for i, r in enumerate(records):
        for name, s in r.scores.items():
            scores[i, col[name]] = s
        for name, c in (r.costs or {}).items():
            if name in col:
                costs[i, col[name]] = c
    if source_hash is None:
        blob = "\n".join(json.dumps(r.model_dump(), sort_keys=True) for r in records)
        source_hash = hashlib.sha256(blob.encode()).hexdigest()
    return Dataset(
        ids=[str(r.id) for r in records],
        prompts=[r.prompt for r in records],
        labels=labels,
        scores=scores,
        costs=costs,
        source_hash=source_hash,
        extra=[dict(r.model_extra or {}) for r in records],
    )


def load_jsonl(path: str | Path) -> Dataset:
    """Read and validate a dataset file; errors name the line and the field."""
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"dataset {p} not found")
    raw = p.read_bytes()
    records: list[Record] = []
    seen: set[str] = set()
    for lineno, line in enumerate(raw.decode("utf-8").split("\n"), start=1):  # not splitlines: prompts hold U+2028
        if not line.strip():
            continue
        try:
            rec = Record.model_validate(json.loads(line))
        except json.JSONDecodeError as e:
            raise DatasetError(f"{p}:{lineno}: not valid JSON ({e.msg})") from e
        except ValidationError as e:
            errs = "; ".join(f"{'.'.join(map(str, er['loc'])) or 'line'}: {er['msg']}" for er in e.errors())
            raise DatasetError(f"{p}:{lineno}: {errs}") from e
        if str(rec.id) in seen:
            raise DatasetError(f"{p}:{lineno}: duplicate id {rec.id!r}")
        seen.add(str(rec.id))
        records.append(rec)
    if not records:
        raise DatasetError(f"dataset {p} has no records")
    return from_records(records, source_hash=hashlib.sha256(raw).hexdigest())


def write_jsonl(ds: Dataset | list[dict[str, Any]], path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    rows = ds.to_records() if isinstance(ds, Dataset) else ds
    tmp = p.with_name(p.name + ".tmp")
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(p)
    return p


def parse_cost_flags(items: list[str] | None) -> dict[str, float]:
    """`--cost model=usd` flags -> {model: usd per call}."""
    out: dict[str, float] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            out[name] = float(value)
        except ValueError:
            raise DatasetError(f"--cost expects MODEL=USD_PER_CALL, got {item!r}") from None
        if out[name] < 0:
            raise DatasetError(f"--cost {item!r}: cost must be >= 0")
    return out


def config_prices(config_path: str | Path | None = None) -> dict[str, tuple[float, float]]:
    """Per-token (input, output) prices from a doka config, keyed by route_label and model_name."""
    from app.config import DEFAULT_CONFIG_PATH, load_config

    cfg = load_config(config_path or DEFAULT_CONFIG_PATH)
    out: dict[str, tuple[float, float]] = {}
    for m in cfg.model_list:
        info = m.model_info
        if info.input_cost_per_token is None and info.output_cost_per_token is None:
            continue
        price = (info.input_cost_per_token or 0.0, info.output_cost_per_token or 0.0)
        out[m.model_name] = price
        if info.route_label:
            out[info.route_label] = price
    return out


def fill_costs(
    ds: Dataset,
    per_call: dict[str, float] | None = None,
    per_token: dict[str, tuple[float, float]] | None = None,
    assumed_output_tokens: int = 256,
) -> list[str]:
    """Fill missing costs in place: per-call flags first, then per-token prices (prompt length
    / 4 tokens in, `assumed_output_tokens` out), then the label's mean known cost. Returns the
    labels that still have no cost at all (the caller decides whether that is an error)."""
    per_call = per_call or {}
    per_token = per_token or {}
    in_tokens = np.array([max(1, len(p) // 4) for p in ds.prompts], dtype=float)
    missing: list[str] = []
    for j, label in enumerate(ds.labels):
        col = ds.costs[:, j]
        gaps = np.isnan(col)
        if label in per_call:
            col[gaps] = per_call[label]
        elif label in per_token and gaps.any():
            pin, pout = per_token[label]
            col[gaps] = in_tokens[gaps] * pin + assumed_output_tokens * pout
        elif gaps.any() and (~gaps).any():
            col[gaps] = np.nanmean(col)
        if np.isnan(col).all():
            missing.append(label)
    return missing


def split(ds: Dataset, test_fraction: float = 0.25, seed: int = 0) -> tuple[Dataset, Dataset]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ds))
    cut = int(round(len(ds) * (1 - test_fraction)))
    return ds.subset(np.sort(order[:cut])), ds.subset(np.sort(order[cut:]))
