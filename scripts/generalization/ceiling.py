"""Fourth pass (docs/benchmarks.md): the ceiling of routing by difficulty.

Ranks each task's prompts by their *true* difficulty (an oracle no router has): the mean score of
the other 9 models (neither gpt-4 nor mixtral), of all 11, and "medium difficulty first" (closest
to c). If even these stay near 0.60, no predictor of difficulty can pass it there.

    PYTHONPATH=$PWD:$PWD/scripts/generalization python scripts/generalization/ceiling.py
"""
import numpy as np

from common import S, TASKS, W, Yte, Ytr, apgr, tte, ttr

others = [i for i in range(Ytr.shape[1]) if i not in (S, W)]
for split, Y, t in (("train", Ytr, ttr), ("test", Yte, tte)):
    for task in TASKS:
        y = Y[t == task]
        e_all, e_oth = np.nanmean(y, 1), np.nanmean(y[:, others], 1)
        hump = " ".join(f"c={c}: {apgr(-np.abs(e_oth - c), y):.3f}" for c in (0.3, 0.5, 0.7))
        print(f"{split:5s} {task:14s} hard first, 9 others {apgr(-e_oth, y):.3f} | all 11 {apgr(-e_all, y):.3f} | "
              f"medium first (9 others) {hump}")
