"""Import RouterBench's wide CSVs (one correctness column and one `|total_cost` column per model)
into doka's JSONL dataset format, one file per split (`train.jsonl`, `test.jsonl`). Each model's
answer (`<model>|model_response`) is kept as the record's `responses`, which routers ignore and
`doka router eval-cascade` reads."""

from __future__ import annotations

import ast
import csv
from pathlib import Path

import numpy as np

from training.dataset import Dataset, DatasetError, Record, from_records, write_jsonl

# `../shared` beside the clone (README): the shared data folder of this project
DEFAULT_ROUTERBENCH_DIR = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "routerbench")
_SPLITS = ("train", "test")


def _label(column: str) -> str:
    """`mistralai/mixtral-8x7b-chat` -> `mixtral-8x7b-chat` (the names doka configs use)."""
    return column.rsplit("/", 1)[-1]


def _prompt(raw: str) -> str:
    """RouterBench stores prompts (and answers) as a Python list literal of turns; join them."""
    raw = raw.strip()
    if raw.startswith("["):
        try:
            turns = ast.literal_eval(raw)
            if isinstance(turns, (list, tuple)):
                return "\n".join(str(t) for t in turns)
        except (ValueError, SyntaxError):
            pass
    return raw


def read_csv(path: Path) -> tuple[list[Record], int]:
    """Records of one CSV, and how many rows were dropped for missing scores."""
    csv.field_size_limit(1 << 30)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        cost_cols = {c[: -len("|total_cost")] for c in cols if c.endswith("|total_cost")}
        model_cols = [c for c in cols if c in cost_cols]
        if not model_cols or "prompt" not in cols:
            raise DatasetError(f"{path}: not a RouterBench CSV (need prompt and <model>, <model>|total_cost columns)")
        records, dropped, seen = [], 0, set()
        for row in reader:
            try:
                scores = {_label(c): float(row[c]) for c in model_cols}
            except (TypeError, ValueError):
                dropped += 1
                continue
            if any(np.isnan(v) for v in scores.values()):
                dropped += 1
                continue
            costs = {}
            for c in model_cols:
                try:
                    costs[_label(c)] = float(row[f"{c}|total_cost"])
                except (TypeError, ValueError):
                    pass
            responses = {_label(c): _prompt(row[f"{c}|model_response"]) for c in model_cols
                         if row.get(f"{c}|model_response")}
            rid = row.get("sample_id") or row.get("") or str(len(records))
            if rid in seen:
                dropped += 1
                continue
            seen.add(rid)
            extra = {"responses": responses} if responses else {}
            records.append(Record(id=rid, prompt=_prompt(row["prompt"]), scores=scores, costs=costs or None,
                                  task=row.get("eval_name"), **extra))
    return records, dropped


def import_routerbench(src: str | Path = DEFAULT_ROUTERBENCH_DIR, out: str | Path = ".doka/data/routerbench") -> dict[str, dict]:
    """Convert every `<task>_<split>.csv` under `src`; writes `<out>/<split>.jsonl`."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise DatasetError(f"RouterBench directory {src} not found")
    summary: dict[str, dict] = {}
    for split in _SPLITS:
        files = sorted(src.glob(f"*_{split}.csv"))
        if not files:
            continue
        records: list[Record] = []
        dropped = 0
        for f in files:
            recs, d = read_csv(f)
            records += recs
            dropped += d
        ds = from_records(records)
        path = write_jsonl(ds, out / f"{split}.jsonl")
        summary[split] = {"path": str(path), "records": len(ds), "dropped": dropped, "models": ds.labels,
                          "files": [f.name for f in files]}
    if not summary:
        raise DatasetError(f"no *_train.csv or *_test.csv files under {src}")
    return summary


def load_split(ds_dir: str | Path, split: str) -> Dataset:
    from training.dataset import load_jsonl

    return load_jsonl(Path(ds_dir) / f"{split}.jsonl")


def make_seed(train_jsonl: str | Path, out: str | Path, size: int = 200, seed: int = 0) -> Path:
    """The in-repo seed set: `size` prompts of the train split, stratified by task (deterministic)."""
    from training.dataset import load_jsonl

    ds = load_jsonl(train_jsonl)
    tasks = np.array([str(e.get("task", "")) for e in ds.extra] if ds.extra else [""] * len(ds))
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for task in sorted(set(tasks)):
        idx = np.flatnonzero(tasks == task)
        k = max(1, int(round(size * len(idx) / len(ds))))
        chosen += rng.choice(idx, size=min(k, len(idx)), replace=False).tolist()
    return write_jsonl(ds.subset(np.sort(chosen[:size] if len(chosen) > size else chosen)), out)
