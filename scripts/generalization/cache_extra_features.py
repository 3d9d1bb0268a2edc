import re, numpy as np
from training.dataset import load_jsonl
from router.featurizer import get_featurizer, prompt_stats
tr = load_jsonl(".doka/data/routerbench/train.jsonl"); te = load_jsonl(".doka/data/routerbench/test.jsonl")
f = get_featurizer("minilm-l6-v2-static")
def last_block(t):
    blocks=[b for b in re.split(r"\n\s*\n", t or "") if b.strip()]
    return blocks[-1] if blocks else (t or "")
NUM=re.compile(r"\d+(?:\.\d+)?")
def extra(texts):
    out=[]
    for t in texts:
        lb=last_block(t); blocks=[b for b in re.split(r"\n\s*\n", t) if b.strip()]
        L=len(t); words=t.split(); lw=lb.split()
        out.append([np.log1p(len(blocks)),            # few-shot blocks
                    np.log1p(len(lb)), np.log1p(len(lw)),
                    len(lb)/max(L,1),
                    len(re.findall(r"(?m)^\(?[A-H][\).:]", lb)),  # options in final question
                    float(bool(re.search(r"(?i)\b(only|without explanation|single choice|letter)\b", lb))),
                    float(bool(re.search(r"(?i)answer:\s*$", t))),
                    float(bool(re.search(r"(?i)\b(python|function|code|program|implement|class|list|string|array)\b", lb))),
                    float(bool(re.search(r"(?i)\b(how many|calculate|compute|sum|total|percent|solve|equation|probability)\b", lb))),
                    np.log1p(len(NUM.findall(lb))),
                    float(bool(re.search(r"[\\$]|\^|\bsqrt\b", lb))),
                    float(bool(re.search(r"_", lb))),  # fill in the blank
                    np.mean([len(w) for w in lw]) if lw else 0.0,
                    sum(c.isupper() for c in lb)/max(len(lb),1),
                    sum((not c.isalnum()) and (not c.isspace()) for c in lb)/max(len(lb),1),
                    float(lb.strip().endswith("?")),
                    *[float(a<=len(t)<b) for a,b in ((0,200),(200,1000),(1000,3000),(3000,10**9))],
                    ])
    return np.array(out, dtype=np.float32)
for name, ds in (("tr", tr), ("te", te)):
    lbs=[last_block(p) for p in ds.prompts]
    np.save(f".doka/exp/X_last_{name}.npy", np.vstack([f.embed(lbs[i:i+64]) for i in range(0,len(lbs),64)]))
    np.save(f".doka/exp/X_laststats_{name}.npy", prompt_stats(lbs))
    np.save(f".doka/exp/X_extra_{name}.npy", extra(ds.prompts))
print("ok")
