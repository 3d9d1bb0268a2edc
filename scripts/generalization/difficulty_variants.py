import sys; sys.path.insert(0,"scripts/generalization")
from common import *
X=np.load(E+"X_minilm-l6-v2-static+stats_tr.npy"); Xt=np.load(E+"X_minilm-l6-v2-static+stats_te.npy")
for sh in (0, 100):
    run(fam("difficulty", shrink=sh), X, Xt, f"difficulty shrink={sh}")
# difficulty with ridge target = logit-ish / per-model IRT: fit ease on the 'discriminating' models only
from router.families_irt import fit_difficulty
def diff_subset(models):
    def sc(Xa,Ya,Xb):
        Yb=Ya.copy(); Yb[:,[j for j in range(11) if j not in models]]=np.nan
        Yb[:, [S,W]] = Ya[:, [S,W]]  # slopes still fitted for the pair
        st=fit_difficulty(Xa,Yb,{"alpha":100,"shrink":20},False)
        P=FAMILIES["difficulty"].predict(st,Xb); return P[:,S]-P[:,W]
    return sc
run(diff_subset([S,W]), X, Xt, "difficulty ease from pair only")
