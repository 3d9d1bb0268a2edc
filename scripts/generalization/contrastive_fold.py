"""One leave-one-task-out fold of the contrastive design (docs/benchmarks.md, "Broad protocol,
third pass"): fit time with and without the sample-sample loss, and APGR (gpt-4-1106-preview vs
mixtral-8x7b-chat) on the held-out task next to the same score in-sample on the training rows;
then how far the sample-sample loss's k-means clusters are the tasks themselves (adjusted mutual
information with task and source, and the median share of a task's prompts in its largest cluster).

    python scripts/generalization/contrastive_fold.py --data .doka/data/combined_all.jsonl --task winogrande
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from training.broad_contrastive import ContrastiveConfig, fit_contrastive_once
from training.broad_data import STRONG, WEAK, canonical_task, column, held_out_folds
from training.dataset import load_jsonl
from training.embeddings import embed_texts
from training.metrics import two_model_report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=".doka/data/combined_all.jsonl")
    ap.add_argument("--task", default="winogrande")
    ap.add_argument("--featurizer", default="minilm-l6-v2@t64")
    args = ap.parse_args()
    ds = load_jsonl(args.data)
    X = embed_texts(ds.prompts, args.featurizer, progress=False).astype(np.float64)
    fold = next(f for f in held_out_folds(ds, "task") if f.name == args.task)
    js, jw = ds.labels.index(STRONG), ds.labels.index(WEAK)

    def both(rows):
        return rows[~np.isnan(ds.scores[rows, js]) & ~np.isnan(ds.scores[rows, jw])]

    for ss in (0.0, 1.0):
        t = time.perf_counter()
        fit = fit_contrastive_once(X, ds, fold.train, ContrastiveConfig(ss_weight=ss))
        took = time.perf_counter() - t
        score = fit.pair_score(STRONG, WEAK)
        out = []
        for name, rows in (("held out", both(fold.test)), ("in-sample", both(fold.train))):
            r = two_model_report(score(X[rows]), ds.scores[rows, js], ds.scores[rows, jw], bootstrap=0)["router"]
            out.append(f"{name} {r['apgr']:.3f} (n={len(rows)})")
        print(f"ss_weight={ss}: fit {took:.1f} s; APGR " + ", ".join(out))
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.metrics import adjusted_mutual_info_score

    tasks = np.array([canonical_task(t) for t in column(ds, "task")])
    Xs = ((X - X.mean(axis=0)) / (X.std(axis=0) + 1e-6)).astype(np.float32)
    cl = MiniBatchKMeans(ContrastiveConfig().clusters, random_state=0, n_init=1, batch_size=2048).fit_predict(Xs)
    share = [np.bincount(cl[tasks == t]).max() / (tasks == t).sum() for t in set(tasks)]
    print(f"k-means clusters vs task: AMI {adjusted_mutual_info_score(tasks, cl):.3f}; vs source: AMI "
          f"{adjusted_mutual_info_score(column(ds, 'source'), cl):.3f}; median share of a task in its largest "
          f"cluster {np.median(share):.2f}")


if __name__ == "__main__":
    main()
