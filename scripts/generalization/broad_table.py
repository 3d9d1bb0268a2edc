"""The broad protocol's summary table (docs/benchmarks.md, "Broad protocol"): one row per
`label=RESULTS.json:PROTOCOL/DESIGN`, with median, mean, worst, how many tasks of 200+ prompts
have a 95% interval below 0.5, the paired gain over the reference run (mean ± SE over the tasks
both scored, its 95% interval, wins) and the median over the gpt-4 vs mixtral tasks.

    python scripts/generalization/broad_table.py --reference A/results.json:task/shipped_difficulty_routerbench_only \
        "static+stats: contrastive=B/results.json:task/contrastive" ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from training.broad import paired_difference, summary
from training.broad_data import STRONG, WEAK


def _rows(spec: str) -> list[dict]:
    path, key = spec.rsplit(":", 1)
    return json.loads(Path(path).read_text())[key]["folds"]


def table_row(label: str, rows: list[dict], reference: list[dict] | None) -> str:
    s = summary(rows)
    gm = [r["apgr"] for r in rows if r["pair"] == f"{STRONG} vs {WEAK}" and r["apgr"] is not None]
    if reference is None or rows is reference:
        gain = "-"
    else:
        d = paired_difference(rows, reference)
        gain = (f"{d['mean_gain']:+.3f} ± {d['se']:.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] "
                f"({d['wins']}/{d['tasks']})")
    return (f"| {label} | {s['median']:.3f} | {s['mean']:.3f} | {s['worst']:.3f} | {len(s['tasks_200_ci_below_0.5'])} "
            f"| {gain} | " + (f"{np.median(gm):.3f} ({len(gm)})" if gm else "n/a") + " |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", required=True, help="RESULTS.json:PROTOCOL/DESIGN of the shipped default")
    ap.add_argument("runs", nargs="+", help="LABEL=RESULTS.json:PROTOCOL/DESIGN")
    args = ap.parse_args(argv)
    ref = _rows(args.reference)
    print("| featurizer: design | median | mean | worst | 200+ prompts CI < 0.5 | gain over default, mean ± SE "
          "[95%] (wins/tasks) | median on the gpt-4 vs mixtral tasks (n) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for spec in args.runs:
        label, rest = spec.split("=", 1)
        rows = _rows(rest)
        print(table_row(label, rows, None if rest == args.reference else ref))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
