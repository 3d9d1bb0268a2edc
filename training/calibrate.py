"""`doka router calibrate`: the cost weight that sends a chosen share of traffic to the strong model.

A raw cost weight means little to a new user (and differs between artifacts); a share of strong
calls on their own traffic does. Between a strong and a weak candidate the policy
(`router.policy`) picks the strong one iff

    q_strong - q_weak > cost_weight * (c_strong - c_weak) / c_strong,

so the weight for a share s is the (1 - s) quantile of the predicted gap over that normalised
cost gap, taken half-way between two neighbouring gaps so the share is hit as exactly as the
sample allows. The achieved share is then measured with the policy itself.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from router.policy import choose_batch
from router.runtime import LearnedRouter
from training.dataset import DatasetError
from training.embeddings import embed_texts
from training.evaluate import router_columns


TOLERANCE = 0.03  # the achieved share is within 3 points of the target, or the result says why not


def read_prompts(path: str | Path) -> list[str]:
    """Prompts of a traffic sample: JSONL lines with a `prompt` (the dataset format qualifies)."""
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"traffic sample {p} not found")
    prompts = []
    for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{p}:{lineno}: not valid JSON ({e.msg})") from e
        if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str):
            raise DatasetError(f"{p}:{lineno}: needs a string `prompt`")
        prompts.append(rec["prompt"])
    if len(prompts) < 2:
        raise DatasetError(f"traffic sample {p} needs at least 2 prompts")
    return prompts


def strong_share(gap: np.ndarray, cost_strong: float, cost_weak: float, cost_weight: float) -> float:
    """Share of prompts the policy sends to the strong model at this weight."""
    q = np.stack([np.zeros_like(gap), -gap], axis=1)  # only the difference matters to the policy
    return float((choose_batch(q, np.array([cost_strong, cost_weak]), cost_weight) == 0).mean())


def calibrate(
    router: LearnedRouter, prompts: list[str], strong: str, weak: str, target_share: float, progress: bool = False
) -> dict[str, Any]:
    """The cost weight giving `target_share` strong calls on `prompts`, and the share it gives."""
    if not 0.0 <= target_share <= 1.0:
        raise DatasetError(f"--target-strong-share must be within [0, 1], got {target_share}")
    ps, pw = router_columns(router, strong, weak)
    c_s, c_w = router.label_costs([strong, weak])
    if not (np.isfinite(c_s) and np.isfinite(c_w)) or c_s <= c_w:
        raise DatasetError(f"the artifact's costs must make {strong!r} dearer than {weak!r} (got {c_s} and {c_w} USD/call)")
    P = router.predict_embeddings(embed_texts(prompts, router.featurizer, progress=progress))
    gap = P[:, ps] - P[:, pw]
    norm = (c_s - c_w) / c_s
    # Thresholds between neighbouring *distinct* gaps (ties move together: a knn router's few
    # distinct scores make some shares unreachable); the one whose share is nearest the target.
    distinct = np.unique(gap)[::-1]
    cuts = np.concatenate([[distinct[0] + 1e-6], 0.5 * (distinct[:-1] + distinct[1:]), [distinct[-1] - 1e-6]])
    shares = np.array([(gap > t).mean() for t in cuts])
    threshold = float(max(cuts[int(np.argmin(np.abs(shares - target_share)))], 0.0))
    weight = round(max(0.0, threshold / norm), 6)
    achieved = strong_share(gap, c_s, c_w, weight)
    out = {"artifact": router.version, "strong": strong, "weak": weak, "n": len(gap),
           "target_strong_share": target_share, "cost_weight": weight, "strong_share": achieved,
           "distinct_scores": int(len(distinct))}
    if abs(achieved - target_share) > TOLERANCE:
        if (gap > 0).mean() < target_share:
            out["note"] = (f"cannot reach {target_share:.3f}: the router prefers {strong!r} on only "
                           f"{100 * (gap > 0).mean():.1f}% of the sample even at cost weight 0; a larger share "
                           "needs a different router")
        else:
            out["note"] = (f"cannot reach {target_share:.3f} within {TOLERANCE:.2f}: the router gives only "
                           f"{len(distinct)} distinct score gaps on these {len(gap)} prompts (ties move together), "
                           f"so the nearest share is {achieved:.3f}; a larger traffic sample or a smoother "
                           "router family (mlp, logreg) gets closer")
    return out


def write_cost_weight(config_path: str | Path, weight: float) -> Path:
    """Set `router.cost_weight` in a doka YAML config in place (other lines and comments kept)."""
    from app.config import load_config

    p = Path(config_path)
    lines = p.read_text().splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if re.match(r"^router:\s*(#.*)?$", ln)), None)
    if start is None:
        lines += ["\nrouter:\n", f"  cost_weight: {weight}\n"]
    else:
        end = next((i for i in range(start + 1, len(lines)) if re.match(r"^\S", lines[i])), len(lines))
        hit = next((i for i in range(start + 1, end) if re.match(r"^\s+cost_weight:", lines[i])), None)
        if hit is None:
            lines.insert(start + 1, f"  cost_weight: {weight}  # doka router calibrate\n")
        else:
            indent = re.match(r"^(\s+)", lines[hit]).group(1)
            lines[hit] = f"{indent}cost_weight: {weight}  # doka router calibrate\n"
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text("".join(lines))
    try:
        load_config(tmp)
    except Exception:
        tmp.unlink()
        raise
    tmp.replace(p)
    return p
