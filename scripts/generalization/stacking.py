import sys; sys.path.insert(0,"scripts/generalization")
from common import *
from scipy.optimize import nnls
X=np.load(E+"X_minilm-l6-v2-static+stats_tr.npy"); Xt=np.load(E+"X_minilm-l6-v2-static+stats_te.npy")
MEM=sys.argv[1].split(",")
def gaps(Xa,Ya,Xb):
    out=[]
    for n in MEM:
        f=FAMILIES[n]; st=f.fit(Xa,Ya,f.defaults,False); P=f.predict(st,Xb); out.append(P[:,S]-P[:,W])
    return np.column_stack(out)
def stack(Xa,Ya,Xb,ta):
    # out-of-task member predictions on the training rows -> non-negative weights
    G=np.zeros((len(Xa),len(MEM)))
    for t in set(ta):
        G[ta==t]=gaps(Xa[ta!=t],Ya[ta!=t],Xa[ta==t])
        G[ta==t]=(G[ta==t]-G[ta==t].mean(0))/(G[ta==t].std(0)+1e-9)
    y=Ya[:,S]-Ya[:,W]; k=~np.isnan(y)
    w,_=nnls(G[k], y[k]-y[k].mean())
    if w.sum()==0: w=np.ones(len(MEM))
    Ga=gaps(Xa,Ya,Xa); Gb=gaps(Xa,Ya,Xb); Gb=(Gb-Ga.mean(0))/(Ga.std(0)+1e-9)
    print("   w", np.round(w/w.sum(),2), file=sys.stderr)
    return Gb@w
inner=[]; 
for t in TASKS:
    m=ttr!=t
    if len(set(ttr[m]))<2: continue
    inner.append(apgr(stack(X[m],Ytr[m],X[ttr==t],ttr[m]),Ytr[ttr==t]))
outer=[apgr(stack(X[ttr!=t],Ytr[ttr!=t],Xt[tte==t],ttr[ttr!=t]),Yte[tte==t]) for t in TASKS]
ind=apgr(stack(X,Ytr,Xt,ttr),Yte)
print(f"LOTO-stack {MEM} inner {' '.join(f'{a:.3f}' for a in inner)} min {min(inner):.3f} | test {' '.join(f'{a:.3f}' for a in outer)} min {min(outer):.3f} | ind {ind:.3f}", flush=True)
