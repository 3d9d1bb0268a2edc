"""Ninth pass (docs/benchmarks.md): the structure of a multiple-choice question as an untrained
difficulty prior. Every feature has a direction fixed before any score was seen (hard -> gpt-4):

- options close to each other (mean pairwise cosine of the option embeddings): hard;
- the stem points at one option (cosine margin between the best and second option): easy;
- option length spread (std / mean of the options' character lengths): easy (one odd option out);
- negation or exception in the stem ("not", "except", "least", "false", "incorrect"): hard;
- every option a number (a computation): hard.

Scored as routers inside each multiple-choice task (ARC, Winogrande; MBPP has no options), on the
train rows, then measured on the test rows; nothing is fitted.

    PYTHONPATH=$PWD:$PWD/scripts/generalization python scripts/generalization/mc_structure.py   # ~1 min
"""
import re

import numpy as np

from common import S, W, apgr
from router.featurizer import get_featurizer
from training.dataset import load_jsonl
from training.loto import tasks_of

_OPTION = re.compile(r"^([A-H])\) (.*)$", re.MULTILINE)
_NEG = re.compile(r"\b(not|except|least|false|incorrect|never)\b", re.IGNORECASE)
_NUM = re.compile(r"^[-+]?[\d.,/]+\s*\S{0,6}$")
enc = get_featurizer("minilm-l6-v2")


def final_question(prompt: str) -> tuple[str, list[str]]:
    """The last few-shot block: its stem and options (RouterBench: 'stem\\nA) x\\nB) y\\nPrint only...')."""
    block = prompt.rstrip().split("\n\n")[-1]
    opts = [m.group(2).strip() for m in _OPTION.finditer(block)]
    first = _OPTION.search(block)
    stem = block[:first.start()].strip() if first else block
    return stem, opts


def features(prompts: list[str]) -> dict[str, np.ndarray]:
    parsed = [final_question(p) for p in prompts]
    stems = enc.embed([s for s, _ in parsed])
    close, margin, spread, neg, num = [], [], [], [], []
    for (stem, opts), e in zip(parsed, stems):
        O = enc.embed(opts) if opts else np.zeros((0, enc.dim))
        if len(opts) >= 2:
            G = O @ O.T
            close.append(G[np.triu_indices(len(opts), 1)].mean())
            sims = np.sort(O @ e)[::-1]
            margin.append(sims[0] - sims[1])
            lens = np.array([len(o) for o in opts], float)
            spread.append(lens.std() / max(lens.mean(), 1))
        else:
            close.append(np.nan); margin.append(np.nan); spread.append(np.nan)
        neg.append(float(bool(_NEG.search(stem))))
        num.append(float(bool(opts) and all(_NUM.match(o) for o in opts)))
    # every value oriented so that higher means "harder -> send to gpt-4"
    return {"options close": np.array(close), "stem margin (negated)": -np.array(margin),
            "length spread (negated)": -np.array(spread), "negation": np.array(neg),
            "numeric options": np.array(num)}


def z(v: np.ndarray) -> np.ndarray:
    return (v - np.nanmean(v)) / (np.nanstd(v) or 1.0)


for split in ("train", "test"):
    ds = load_jsonl(f".doka/data/routerbench/{split}.jsonl")
    tasks = tasks_of(ds)
    for task in ("arc-challenge", "winogrande"):
        keep = tasks == task
        F = features([p for p, k in zip(ds.prompts, keep) if k])
        Y = ds.scores[keep]
        jitter = np.random.default_rng(0).normal(0, 1e-9, keep.sum())  # break ties of binary features
        row = {name: apgr(np.nan_to_num(v) + jitter, Y) for name, v in F.items()}
        row["z-sum of the three continuous"] = apgr(
            z(F["options close"]) + z(F["stem margin (negated)"]) + z(F["length spread (negated)"]), Y)
        print(f"{split:5s} {task:14s} n={keep.sum():4d} " + " | ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
