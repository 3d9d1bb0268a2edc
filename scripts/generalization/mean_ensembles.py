import sys; sys.path.insert(0,"scripts/generalization")
from common import *
X=np.load(E+"X_minilm-l6-v2-static+stats_tr.npy"); Xt=np.load(E+"X_minilm-l6-v2-static+stats_te.npy")
def meanP(names):
    def sc(Xa,Ya,Xb):
        P=0
        for n in names:
            f=FAMILIES[n]; P=P+f.predict(f.fit(Xa,Ya,f.defaults,False),Xb)
        return P[:,S]-P[:,W]
    return sc
run(meanP(["difficulty","mlp","knn"]),X,Xt,"meanP diff+mlp+knn")
run(meanP(["difficulty","mlp"]),X,Xt,"meanP diff+mlp")
run(meanP(["mlp","knn"]),X,Xt,"meanP mlp+knn")
run(meanP(["difficulty","mlp","knn","logreg","mf"]),X,Xt,"meanP diff+mlp+knn+logreg+mf")
