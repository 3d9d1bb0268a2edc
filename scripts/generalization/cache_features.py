import sys, time, numpy as np
from training.dataset import load_jsonl
from training.loto import tasks_of
from router.featurizer import get_featurizer
tr = load_jsonl(".doka/data/routerbench/train.jsonl"); te = load_jsonl(".doka/data/routerbench/test.jsonl")
np.save(".doka/exp/Ytr.npy", tr.scores); np.save(".doka/exp/Yte.npy", te.scores)
np.save(".doka/exp/ttr.npy", tasks_of(tr)); np.save(".doka/exp/tte.npy", tasks_of(te))
print(tr.labels)
for fid in sys.argv[1:]:
    f = get_featurizer(fid); t0 = time.time()
    for name, ds in (("tr", tr), ("te", te)):
        X = np.vstack([f.embed(ds.prompts[i:i+32]) for i in range(0, len(ds), 32)])
        np.save(f".doka/exp/X_{fid}_{name}.npy", X)
    print(fid, X.shape, time.time() - t0, flush=True)
