"""Small slices of the shipped RouterBench data (or the in-repo seed set) for router tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.dataset import Dataset, load_jsonl
from training.routerbench import DEFAULT_ROUTERBENCH_DIR, import_routerbench

SEED = Path(__file__).resolve().parent.parent / "training" / "seed" / "routerbench_seed.jsonl"


def routerbench_slices(tmp_dir: Path, n_train: int = 360, n_test: int = 240) -> tuple[Dataset, Dataset]:
    """(train slice, test slice): from the shared RouterBench splits when present, else the seed set."""
    if Path(DEFAULT_ROUTERBENCH_DIR).is_dir():
        import_routerbench(DEFAULT_ROUTERBENCH_DIR, tmp_dir)
        train, test = load_jsonl(tmp_dir / "train.jsonl"), load_jsonl(tmp_dir / "test.jsonl")
    else:
        full = load_jsonl(SEED)
        cut = int(len(full) * 0.6)
        train, test = full.subset(np.arange(cut)), full.subset(np.arange(cut, len(full)))
    rng = np.random.default_rng(0)
    tr = np.sort(rng.permutation(len(train))[: min(n_train, len(train))])
    te = np.sort(rng.permutation(len(test))[: min(n_test, len(test))])
    return train.subset(tr), test.subset(te)


def tiny_dataset(n: int = 40, seed: int = 0) -> Dataset:
    """A synthetic two-topic dataset: model-b is good at code prompts, model-a at the rest."""
    from training.dataset import Record, from_records

    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n):
        code = i % 2 == 0
        prompt = (f"Write a python function number {i} that sorts a list" if code
                  else f"What is the capital of country number {i}?")
        recs.append(Record(id=f"p{i}", prompt=prompt,
                           scores={"model-a": float(not code), "model-b": float(code or rng.random() < 0.3)},
                           costs={"model-a": 0.001, "model-b": 0.01}))
    return from_records(recs)
