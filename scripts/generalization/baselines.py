import sys; sys.path.insert(0,"scripts/generalization")
from common import *
X=np.load(E+"X_minilm-l6-v2-static+stats_tr.npy"); Xt=np.load(E+"X_minilm-l6-v2-static+stats_te.npy")
run(fam("difficulty"), X, Xt, "difficulty static+stats (baseline)")
for a in (30,300):
    run(fam("difficulty", alpha=a), X, Xt, f"difficulty a={a}")
run(fam("knn"), X, Xt, "knn")
run(fam("mlp"), X, Xt, "mlp")
