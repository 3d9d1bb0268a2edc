import sys; sys.path.insert(0,"scripts/generalization")
from common import *
from sklearn.linear_model import Ridge
from router.family_base import impute_missing
X=np.load(E+"X_minilm-l6-v2-static+stats_tr.npy"); Xt=np.load(E+"X_minilm-l6-v2-static+stats_te.npy")
def irt(k, a=100, demean=False):
    def sc(Xa,Ya,Xb, ta=None):
        Yi=impute_missing(Ya); mu=Yi.mean(0); C=Yi-mu
        if demean is not False:
            for t in set(ta):
                C[ta==t]-=C[ta==t].mean(0)
        U,s,Vt=np.linalg.svd(C,full_matrices=False); F=U[:,:k]*s[:k]
        r=Ridge(alpha=a).fit(Xa,F); Fa=r.predict(Xa).reshape(len(Xa),-1); Fb=r.predict(Xb).reshape(len(Xb),-1)
        # per-model least squares of Y on predicted factors
        A=np.hstack([Fa,np.ones((len(Fa),1))]); B=np.linalg.lstsq(A,Yi,rcond=None)[0]
        P=np.hstack([Fb,np.ones((len(Fb),1))])@B
        return P[:,S]-P[:,W]
    return sc
def with_tasks(sc):
    # pass training task labels through
    def run2(name):
        inner=[apgr(sc(X[ttr!=t],Ytr[ttr!=t],X[ttr==t],ttr[ttr!=t]),Ytr[ttr==t]) for t in TASKS]
        outer=[apgr(sc(X[ttr!=t],Ytr[ttr!=t],Xt[tte==t],ttr[ttr!=t]),Yte[tte==t]) for t in TASKS]
        ind=apgr(sc(X,Ytr,Xt,ttr),Yte)
        print(f"{name:50s} inner {' '.join(f'{a:.3f}' for a in inner)} min {min(inner):.3f} | test {' '.join(f'{a:.3f}' for a in outer)} min {min(outer):.3f} | ind {ind:.3f}", flush=True)
    return run2
for k in (1,2,3,5):
    with_tasks(irt(k))(f"irt k={k}")
for k in (1,2,3):
    with_tasks(irt(k,demean=True))(f"irt k={k} task-demeaned")
