import numpy as np, re
from training.metrics import two_model_report
from router.families import FAMILIES
E=".doka/exp/"
Ytr=np.load(E+"Ytr.npy"); Yte=np.load(E+"Yte.npy"); ttr=np.load(E+"ttr.npy"); tte=np.load(E+"tte.npy")
S,W=7,10
TASKS=sorted(set(ttr))
def apgr(score, Y):
    k=~np.isnan(Y[:,S])&~np.isnan(Y[:,W])
    return two_model_report(score[k], Y[k,S], Y[k,W])["router"]["apgr"]
def fitpred(fam, Xa, Ya, Xb, params=None):
    f=FAMILIES[fam]; p={**f.defaults, **(params or {})}
    st=f.fit(Xa, Ya, p, False); P=f.predict(st, Xb); return P[:,S]-P[:,W]
def run(scorer, Xtr, Xte, name=""):
    """scorer(Xa,Ya,Xb)->score. inner LOTO (train split only), test LOTO, in-dist."""
    inner=[apgr(scorer(Xtr[ttr!=t],Ytr[ttr!=t],Xtr[ttr==t]), Ytr[ttr==t]) for t in TASKS]
    outer=[apgr(scorer(Xtr[ttr!=t],Ytr[ttr!=t],Xte[tte==t]), Yte[tte==t]) for t in TASKS]
    ind=apgr(scorer(Xtr,Ytr,Xte),Yte)
    print(f"{name:50s} inner {' '.join(f'{a:.3f}' for a in inner)} min {min(inner):.3f} | test {' '.join(f'{a:.3f}' for a in outer)} min {min(outer):.3f} | ind {ind:.3f}", flush=True)
    return min(inner), outer, ind
def fam(name, **params):
    return lambda Xa,Ya,Xb: fitpred(name, Xa, Ya, Xb, params)
