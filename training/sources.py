"""Import the routing-more sources (../shared/data/routing-more/) beside RouterBench into one
doka dataset, with one adapter per source.

Every record keeps `task`, `source` (a short key), `label_type` (the source's wording) and
`licence`, and its costs (the source's `est_costs`). Labels of different kinds are put on one
[0, 1] scale here, by source (docs/routing.md, "Label scales"):

- 0/1 correctness, F1, probability of the right option (RouterBench, llmrouter, routerdc): as is.
- GPT-4 judge score 1-10 (arenabench): (s - 1) / 9.
- Win probability against gpt-4-1106-preview (alpacaeval): as is (the reference model is 0.5).

These [0, 1] values still mean different things per task (a 0.5 win rate is not a 0.5 accuracy),
so training targets are standardised per task (`training.broad_data.difficulty_target`), never mixed raw.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from training.dataset import DatasetError, Record, from_records, write_jsonl
from training.routerbench import DEFAULT_ROUTERBENCH_DIR, read_csv

DEFAULT_MORE_DIR = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "routing-more")

# RouterBench's model labels as doka spells them (routerbench._label): other sources' names that
# are these models with an org prefix map onto them, so "gpt-4 vs mixtral" means one column.
ROUTERBENCH_MODELS = {
    "WizardLM-13B-V1.2", "claude-instant-v1", "claude-v1", "claude-v2", "gpt-3.5-turbo-1106",
    "gpt-4-1106-preview", "code-llama-instruct-34b-chat", "llama-2-70b-chat", "mistral-7b-chat",
    "mixtral-8x7b-chat", "Yi-34B-Chat",
}


def model_name(raw: str) -> str:
    """`mistralai/mixtral-8x7b-chat` -> `mixtral-8x7b-chat` where that is a RouterBench model;
    every other name is kept as the source spells it."""
    short = raw.rsplit("/", 1)[-1]
    return short if short in ROUTERBENCH_MODELS else raw


def unit(x: float) -> float:
    return float(x)


def judge_1_10(x: float) -> float:
    """GPT-4 judge score 1..10 -> [0, 1]."""
    return (float(x) - 1.0) / 9.0


@dataclass(frozen=True)
class Source:
    key: str
    file: str  # under the routing-more folder; "" for RouterBench (CSV folder)
    licence: str
    scale: Callable[[float], float]
    scale_doc: str
    permitted: bool  # in the default (bootstrap) training set without an opt-in


SOURCES: dict[str, Source] = {
    "routerbench": Source("routerbench", "", "RouterBench (withmartian; licence per its dataset card)", unit, "0/1 correctness, as is", True),
    "arenabench": Source("arenabench", "arenabench_v1_gpt4judge.jsonl", "Apache-2.0", judge_1_10,
                         "GPT-4 judge 1-10 -> (s-1)/9", True),
    "llmrouter": Source("llmrouter", "llmrouter_dcrouter.jsonl", "MIT", unit, "0/1 or F1, as is", True),
    "alpacaeval": Source("alpacaeval", "alpacaeval2_vs_gpt4turbo.jsonl", "CC BY-NC 4.0 (non-commercial)", unit,
                         "P(win vs gpt-4-1106-preview), as is (reference = 0.5)", False),
    "routerdc": Source("routerdc", "routerdc_split2_model7.jsonl", "none stated (no licence file)", unit,
                       "0/1 correctness or P(right option), as is", False),
}


def adapt(source: Source, row: dict) -> Record:
    """One routing-more JSONL row -> a doka Record on the [0, 1] scale, with its provenance."""
    scores, costs = {}, {}
    for raw, v in (row.get("scores") or {}).items():
        if v is None:
            continue
        s = source.scale(v)
        if not (-1e-9 <= s <= 1 + 1e-9):
            raise DatasetError(f"{source.key} {row.get('id')}: {raw}={v} maps to {s}, outside [0, 1]")
        scores[model_name(raw)] = min(1.0, max(0.0, s))
    for raw, c in (row.get("est_costs") or {}).items():
        if c is not None:
            costs[model_name(raw)] = float(c)
    return Record(id=f"{source.key}:{row['id']}", prompt=row["prompt"], scores=scores, costs=costs or None,
                  task=f"{source.key}:{row['task']}", source=source.key, label_type=row.get("label_type", ""),
                  licence=source.licence)


def read_source(source: Source, more_dir: str | Path = DEFAULT_MORE_DIR,
                routerbench_dir: str | Path = DEFAULT_ROUTERBENCH_DIR) -> list[Record]:
    if source.key == "routerbench":
        out = []
        for f in sorted(Path(routerbench_dir).glob("*.csv")):
            split = "test" if f.stem.endswith("_test") else "train"
            for r in read_csv(f)[0]:
                extra = dict(r.model_extra or {})
                extra.pop("responses", None)
                extra.update(task=f"routerbench:{extra.get('task')}", source="routerbench",
                             label_type="0/1 correctness", licence=source.licence, split=split)
                out.append(Record(id=f"routerbench:{split}:{r.id}", prompt=r.prompt, scores=r.scores,
                                  costs=r.costs, **extra))
        return out
    path = Path(more_dir) / source.file
    if not path.exists():
        raise DatasetError(f"{path} not found (routing-more data: ../shared/data/routing-more)")
    with open(path) as f:
        return [adapt(source, json.loads(line)) for line in f if line.strip()]


def import_sources(out: str | Path = ".doka/data/combined.jsonl", include: list[str] | None = None,
                   more_dir: str | Path = DEFAULT_MORE_DIR,
                   routerbench_dir: str | Path = DEFAULT_ROUTERBENCH_DIR) -> dict:
    """Write one JSONL of the chosen sources (default: the permitted ones, see `SOURCES`)."""
    keys = include or [k for k, s in SOURCES.items() if s.permitted]
    unknown = [k for k in keys if k not in SOURCES]
    if unknown:
        raise DatasetError(f"unknown sources {unknown}; known: {sorted(SOURCES)}")
    records: list[Record] = []
    per: dict[str, int] = {}
    for k in keys:
        recs = read_source(SOURCES[k], more_dir, routerbench_dir)
        per[k] = len(recs)
        records += recs
    ds = from_records(records)
    path = write_jsonl(ds, out)
    return {"path": str(path), "records": len(ds), "per_source": per, "models": len(ds.labels),
            "licences": {k: SOURCES[k].licence for k in keys}}
