"""The learned-routing benchmark of docs/benchmarks.md: every family trained on a train split,
evaluated on a test split (two-model APGR/CPT and multi-model AIQ), then leave-one-task-out
(train on the train split of all tasks but one, evaluate on the test split of that one; every
rotation). Prints two markdown tables; each APGR carries its spread (± the router's bootstrap SE over
prompt resamples, the random router's std over seeds).

    python -m training.benchmark broad --data .doka/data/combined_all.jsonl   # 33+ tasks (training/broad.py)
    python -m training.benchmark --train .doka/data/routerbench/train.jsonl \
        --test .doka/data/routerbench/test.jsonl --out .doka/bench/routing
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from router.artifact import ensure_local_key  # noqa: E402
from router.families import FAMILIES  # noqa: E402
from router.runtime import LearnedRouter  # noqa: E402
from router.featurizer import ROUTING_FEATURIZER_ID  # noqa: E402
from training.dataset import load_jsonl  # noqa: E402
from training.evaluate import evaluate, plot  # noqa: E402
from training.loto import leave_one_task_out  # noqa: E402
from training.train import train  # noqa: E402


def _f(x, fmt="{:.3f}"):
    return "n/a" if x is None else fmt.format(x)


def _apgr(r: dict) -> str:
    """APGR with its spread: the router's bootstrap SE, or a random router's std over seeds."""
    spread = r.get("apgr_se", r.get("apgr_std"))
    return _f(r["apgr"]) + ("" if spread is None else f" ± {spread:.3f}")


def main(argv: list[str] | None = None) -> int:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["broad"]:  # the many-task protocol: python -m training.benchmark broad --help
        from training.broad import main as broad_main

        return broad_main(argv[1:])
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", default=".doka/data/routerbench/train.jsonl")
    ap.add_argument("--test", default=".doka/data/routerbench/test.jsonl")
    ap.add_argument("--out", default=".doka/bench/routing")
    ap.add_argument("--strong", default="gpt-4-1106-preview")
    ap.add_argument("--weak", default="mixtral-8x7b-chat")
    ap.add_argument("--families", nargs="*", default=list(FAMILIES))
    ap.add_argument("--featurizer", default=ROUTING_FEATURIZER_ID, help="featurizer id every family is trained on")
    ap.add_argument("--no-loto", action="store_true", help="skip the leave-one-task-out rotations")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    key = os.environ.get("DOKA_SIGNING_KEY") or ensure_local_key()
    rows, results = [], {}
    for fam in args.families:
        t0 = time.time()
        path = train(args.train, fam, out / f"artifact-{fam}", signing_key=key, holdout=0.0, progress=False,
                     featurizer_id=args.featurizer)
        secs = time.time() - t0
        router = LearnedRouter.from_path(path, key)
        two = evaluate(router, args.test, strong=args.strong, weak=args.weak, progress=False)
        multi = evaluate(router, args.test, progress=False)
        plot(two, out / f"{fam}-pair.png")
        plot(multi, out / f"{fam}-aiq.png")
        results[fam] = {"two_model": two, "multi_model": multi, "train_seconds": secs}
        r = two["router"]
        rows.append(f"| {fam} | {_apgr(r)} | {_f(r['cpt50'], '{:.1f}%')} | {_f(r['cpt80'], '{:.1f}%')} | "
                    f"{_f(multi['router']['aiq'], '{:.4f}')} | {_f(multi['router']['max_quality'])} | {secs:.1f} |")
        print(rows[-1], flush=True)
    two, multi = results[args.families[0]]["two_model"], results[args.families[0]]["multi_model"]
    rnd, orc = two["random"], two["oracle"]
    rows.append(f"| random | {_apgr(rnd)} | {_f(rnd['cpt50'], '{:.1f}%')} | {_f(rnd['cpt80'], '{:.1f}%')} | "
                f"(point q={multi['random']['quality']:.3f}) | {multi['random']['quality']:.3f} | - |")
    rows.append(f"| zero router (single-model hull) | - | - | - | {multi['zero_router_aiq']:.4f} | "
                f"{multi['best_single_model']['quality']:.3f} | - |")
    rows.append(f"| oracle | {_f(orc['apgr'])} | {_f(orc['cpt50'], '{:.1f}%')} | {_f(orc['cpt80'], '{:.1f}%')} | "
                f"{multi['oracle']['aiq']:.4f} | {multi['oracle']['quality']:.3f} | - |")
    header = ("| router | APGR | CPT(50%) | CPT(80%) | AIQ (11 models) | max quality | train s |\n"
              "| --- | --- | --- | --- | --- | --- | --- |")
    table = header + "\n" + "\n".join(rows)
    best = multi["best_single_model"]
    extra = (f"\nn_test={two['n']}; {args.strong} quality {two['strong_quality']:.3f}, {args.weak} "
             f"{two['weak_quality']:.3f}; best single model {best['model']} quality {best['quality']:.3f} at "
             f"${best['cost']:.5f}/prompt; oracle quality {multi['oracle']['quality']:.3f} at ${multi['oracle']['cost']:.5f}.")
    if not args.no_loto:
        loto_table = loto(args, out, key, results)
        extra += "\n\nLeave-one-task-out (two-model APGR ± SE / CPT(50%) on the held-out task's test split):\n\n" + loto_table
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "table.md").write_text(table + extra + "\n")
    print(table + extra)
    return 0


def loto(args: argparse.Namespace, out: Path, key: str | bytes, results: dict) -> str:
    """Every family on every leave-one-task-out rotation; a markdown table (APGR, CPT(50%))."""
    folds = leave_one_task_out(load_jsonl(args.train), load_jsonl(args.test))
    rows = []
    for fam in args.families:
        cells, apgrs = [], []
        for fold in folds:
            path = train(fold.train, fam, out / f"loto-{fold.task}-{fam}", signing_key=key, holdout=0.0,
                         progress=False, featurizer_id=args.featurizer)
            rep = evaluate(LearnedRouter.from_path(path, key), fold.test, strong=args.strong, weak=args.weak, progress=False)
            results[fam].setdefault("loto", {})[fold.task] = rep
            r = rep["router"]
            apgrs.append(r["apgr"] if r["apgr"] is not None else float("nan"))
            cells.append(f"{_apgr(r)} / {_f(r['cpt50'], '{:.1f}%')}")
        rows.append(f"| {fam} | " + " | ".join(cells) + f" | {min(apgrs):.3f} |")
        print(rows[-1], flush=True)
    rnd = [evaluate_random(fold, args) for fold in folds]
    rows.append("| random | " + " | ".join(f"{_apgr(r)} / {_f(r['cpt50'], '{:.1f}%')}" for r in rnd)
                + f" | {min(r['apgr'] for r in rnd):.3f} |")
    header = ("| router | " + " | ".join(f"held out: {f.task} (n={len(f.test)})" for f in folds) + " | min APGR |\n"
              "| --- | " + " | ".join("---" for _ in folds) + " | --- |")
    return header + "\n" + "\n".join(rows)


def evaluate_random(fold, args) -> dict:
    from training.metrics import random_router_metrics

    ds = fold.test
    js, jw = ds.label_index(args.strong), ds.label_index(args.weak)
    return random_router_metrics(ds.scores[:, js], ds.scores[:, jw])


if __name__ == "__main__":
    raise SystemExit(main())
