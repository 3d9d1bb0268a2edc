"""Every family trained on RouterBench (as `doka router train` does), scored pooled on the gpt-4 vs
mixtral chat sources here (arenabench, alpacaeval): do they stand in for the held-out chat set?
(docs/benchmarks.md, fourth pass). Train the artifacts first:

    for f in difficulty task_difficulty knn mlp svm logreg mf ensemble gated; do
      doka router train --family $f --data .doka/data/routerbench/train.jsonl --out /tmp/constchk/$f --quiet; done
    python scripts/generalization/rb_families_chat.py
"""

import numpy as np
from router.runtime import LearnedRouter
from training.dataset import load_jsonl
from training.broad import column
from training.metrics import two_model_report
ds = load_jsonl(".doka/data/combined_all.jsonl")
src = column(ds, "source")
S, W = "gpt-4-1106-preview", "mixtral-8x7b-chat"
js, jw = ds.labels.index(S), ds.labels.index(W)
both = ~np.isnan(ds.scores[:, js]) & ~np.isnan(ds.scores[:, jw])
for fam in ["difficulty", "task_difficulty", "knn", "mlp", "svm", "logreg", "mf", "ensemble", "gated"]:
    r = LearnedRouter.from_path(f"/tmp/constchk/{fam}")  # the key `doka router train` signed with
    a, b = r.labels.index(S), r.labels.index(W)
    out = []
    for held in ["arenabench", "alpacaeval"]:
        rows = np.flatnonzero((src == held) & both)
        P = r.predict([ds.prompts[i] for i in rows])
        rep = two_model_report(P[:, a] - P[:, b], ds.scores[rows, js], ds.scores[rows, jw], bootstrap=100)["router"]
        out.append(f"{held} {rep['apgr']:.3f} ± {rep['apgr_se']:.3f}")
    print(f"{fam:16s}", " | ".join(out), flush=True)
