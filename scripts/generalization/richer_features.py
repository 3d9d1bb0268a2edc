import sys; sys.path.insert(0,"scripts/generalization")
from common import *
L=lambda n: (np.load(E+f"X_{n}_tr.npy"), np.load(E+f"X_{n}_te.npy"))
X,Xt=L("minilm-l6-v2-static+stats"); emb,embt=X[:,:384],Xt[:,:384]; st,stt=X[:,384:],Xt[:,384:]
la,lat=L("last"); ls,lst=L("laststats"); ex,ext=L("extra")
def z(a,b,s=0.3):
    m,sd=a.mean(0),a.std(0)+1e-6; return (a-m)/sd*s,(b-m)/sd*s
ls,lst=z(ls,lst); ex,ext=z(ex,ext)
C=lambda *p: (np.hstack([q[0] for q in p]), np.hstack([q[1] for q in p]))
cands={
 "emb+stats+extra": C((emb,embt),(st,stt),(ex,ext)),
 "last+stats": C((la,lat),(st,stt)),
 "emb+last+stats": C((emb,embt),(la,lat),(st,stt)),
 "emb+last+stats+laststats": C((emb,embt),(la,lat),(st,stt),(ls,lst)),
 "emb+last+stats+extra": C((emb,embt),(la,lat),(st,stt),(ex,ext)),
 "stats+extra only": C((st,stt),(ex,ext)),
}
for n,(a,b) in cands.items():
    for al in (100,):
        run(fam("difficulty", alpha=al), a, b, f"diff {n} a={al}")
