import sys; sys.path.insert(0,"scripts/generalization")
from common import *
X=np.load(E+"X_minilm-l6-v2-static+stats_tr.npy"); Xt=np.load(E+"X_minilm-l6-v2-static+stats_te.npy")
F=np.load(E+"X_minilm-l6-v2@t128_tr.npy"); Ft=np.load(E+"X_minilm-l6-v2@t128_te.npy")
FS=np.hstack([F,X[:,384:]]); FSt=np.hstack([Ft,Xt[:,384:]])
for a in (30,100,300):
    run(fam("difficulty",alpha=a), FS, FSt, f"difficulty full128+stats a={a}")
run(fam("difficulty"), F, Ft, "difficulty full128 (no stats)")
B=np.hstack([X,F]); Bt=np.hstack([Xt,Ft])
run(fam("difficulty"), B, Bt, "difficulty static+stats+full128")
run(fam("mlp"), FS, FSt, "mlp full128+stats")
run(fam("knn"), FS, FSt, "knn full128+stats")
