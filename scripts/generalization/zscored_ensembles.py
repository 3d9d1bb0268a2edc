import sys; sys.path.insert(0,"scripts/generalization")
from common import *
X=np.load(E+"X_minilm-l6-v2-static+stats_tr.npy"); Xt=np.load(E+"X_minilm-l6-v2-static+stats_te.npy")
def ens(parts, w=None):
    def sc(Xa,Ya,Xb):
        tot=0
        for i,(n,p) in enumerate(parts):
            f=FAMILIES[n]; st=f.fit(Xa,Ya,{**f.defaults,**p},False)
            Pa=f.predict(st,Xa); ga=Pa[:,S]-Pa[:,W]; Pb=f.predict(st,Xb); gb=Pb[:,S]-Pb[:,W]
            tot=tot+(w[i] if w else 1)*(gb-ga.mean())/(ga.std()+1e-9)
        return tot
    return sc
run(ens([("difficulty",{}),("mlp",{})]),X,Xt,"ens diff+mlp")
run(ens([("difficulty",{}),("knn",{})]),X,Xt,"ens diff+knn")
run(ens([("difficulty",{}),("svm",{})]),X,Xt,"ens diff+svm")
run(ens([("difficulty",{}),("mlp",{}),("knn",{})]),X,Xt,"ens diff+mlp+knn")
run(ens([("difficulty",{}),("mlp",{})],[2,1]),X,Xt,"ens 2diff+mlp")
# alt targets: ridge on weak model's own score (P weak fails)
from sklearn.linear_model import Ridge
def ridge_target(fn, a=100):
    def sc(Xa,Ya,Xb):
        y=fn(Ya); k=~np.isnan(y); return -Ridge(alpha=a).fit(Xa[k],y[k]).predict(Xb)
    return sc
run(ridge_target(lambda Y: Y[:,W]),X,Xt,"ridge -> weak score")
run(ridge_target(lambda Y: np.nanmean(np.delete(Y,S,axis=1),1)),X,Xt,"ridge -> mean excl strong")
run(ridge_target(lambda Y: np.nanmean(Y,1)),X,Xt,"ridge -> mean (=difficulty rank)")
