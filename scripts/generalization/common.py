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
def cpt50(score, Y):
    k=~np.isnan(Y[:,S])&~np.isnan(Y[:,W])
    return two_model_report(score[k], Y[k,S], Y[k,W])["router"]["cpt50"]
def run_t(scorer, Xtr, Xte, name=""):
    """Like run, but scorer(Xa, Ya, ta, Xb) also gets the training rows' task labels
    (third pass: within-task fitting). Prints CPT(50%) of the test folds and in distribution too."""
    inner=[apgr(scorer(Xtr[ttr!=t],Ytr[ttr!=t],ttr[ttr!=t],Xtr[ttr==t]), Ytr[ttr==t]) for t in TASKS]
    sc_out=[scorer(Xtr[ttr!=t],Ytr[ttr!=t],ttr[ttr!=t],Xte[tte==t]) for t in TASKS]
    outer=[apgr(s, Yte[tte==t]) for s,t in zip(sc_out,TASKS)]
    c_out=[cpt50(s, Yte[tte==t]) for s,t in zip(sc_out,TASKS)]
    s_in=scorer(Xtr,Ytr,ttr,Xte); ind=apgr(s_in,Yte); c_in=cpt50(s_in,Yte)
    f=lambda v: "nan" if v is None else f"{v:.0f}%"
    print(f"{name:46s} inner {' '.join(f'{a:.3f}' for a in inner)} min {min(inner):.4f} | test {' '.join(f'{a:.3f}' for a in outer)} min {min(outer):.3f} cpt {'/'.join(f(c) for c in c_out)} | ind {ind:.3f} cpt {f(c_in)}", flush=True)
    return min(inner), outer, ind
