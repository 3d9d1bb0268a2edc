"""`doka router eval-cascade`: would a cascade pay off on this data?

A cascade (`cascades:` in the config) answers with its weak model when a verifier model, asked the
same prompt, answers alike, and asks the strong model otherwise. Whether that beats a router
depends on the traffic: short answers (multiple choice, labels, a stated result) agree often and
tell right from wrong, code and open prose never match. A dataset whose records carry each
model's answer (`responses`, as `doka router import-routerbench` writes them) says which, offline,
with the gateway's own agreement rule (`deployments.cascade.agree`).

Reported: the share escalated, the quality of weak alone, strong alone and the cascade, the share
of the weak-to-strong gap the cascade recovers (a random router with the same share of strong
calls recovers that share on average, so `lift_over_random` is what agreement buys) and its
bootstrap standard error, USD per 1,000 prompts, and with `--artifact`, a learned router sending
the same share to the strong model, for comparison; when that artifact has a novelty gate
(`gated`), `novel_cascade`: the share of prompts it calls familiar and the cascade on the novel
rest, which is what `router.novel_cascade` would send through the cascade.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from deployments.cascade import Compare, agree
from training.dataset import Dataset, DatasetError, load_jsonl


def _chat(text: str) -> dict[str, Any]:
    return {"object": "chat.completion", "choices": [{"message": {"role": "assistant", "content": text}}]}


def _responses(ds: Dataset) -> list[dict[str, str]]:
    """Each record's `responses` ({model: answer text})."""
    out = []
    for extra in ds.extra or [{} for _ in range(len(ds))]:
        got = extra.get("responses") or {}
        if not isinstance(got, dict):
            raise DatasetError("`responses` must map a model name to its answer text")
        out.append({m: str(t) for m, t in got.items() if t is not None})
    return out


def _gap_recovered(q: np.ndarray, w: np.ndarray, s: np.ndarray) -> float | None:
    gap = float(s.mean() - w.mean())
    return None if abs(gap) < 1e-12 else float((q.mean() - w.mean()) / gap)


def evaluate_cascade(data: str | Path | Dataset, *, weak: str, verifier: str, strong: str, compare: Compare = "text",
                     aliases: dict[str, str] | None = None, router: Any = None, bootstrap: int = 200,
                     seed: int = 0, task: str | None = None) -> dict[str, Any]:
    """The cascade's report on `data` (see the module docstring); `router` a LearnedRouter or None;
    `task` keeps only that task's records."""
    from training.embeddings import embed_texts
    from training.evaluate import apply_aliases, only_task, router_columns

    ds = only_task(apply_aliases(load_jsonl(data) if not isinstance(data, Dataset) else data, aliases), task)
    if len({weak, verifier, strong}) != 3:
        raise DatasetError("weak, verifier and strong must be three different models")
    jw, js = ds.label_index(weak), ds.label_index(strong)  # a clear error naming the dataset's models
    answers = _responses(ds)
    keep = np.array([not np.isnan(ds.scores[i, js]) and not np.isnan(ds.scores[i, jw])
                     and weak in a and verifier in a for i, a in enumerate(answers)])
    if keep.sum() < 2:
        known = sorted({m for a in answers for m in a})
        raise DatasetError(f"fewer than 2 prompts have scores for {strong!r} and {weak!r} and answers from {weak!r} "
                           f"and {verifier!r}; the data has answers from {known or 'no model'} "
                           "(re-import RouterBench CSVs with `doka router import-routerbench` to get them)")
    idx = np.flatnonzero(keep)
    agreed = np.array([agree(_chat(answers[i][weak]), _chat(answers[i][verifier]), compare) for i in idx])
    w, s = ds.scores[idx, jw], ds.scores[idx, js]
    q = np.where(agreed, w, s)
    escalated = float(1.0 - agreed.mean())
    rng = np.random.default_rng(seed)
    boots = [_gap_recovered(q[b], w[b], s[b]) for b in (rng.integers(0, len(idx), len(idx)) for _ in range(bootstrap))]
    boots = [b for b in boots if b is not None]
    recovered = _gap_recovered(q, w, s)
    report: dict[str, Any] = {
        "mode": "cascade", "weak": weak, "verifier": verifier, "strong": strong, "compare": compare,
        "task": task, "data_sha256": ds.source_hash, "prompts": int(len(idx)), "dropped": int((~keep).sum()),
        "escalated_share": escalated,
        "quality": {"weak": float(w.mean()), "strong": float(s.mean()), "cascade": float(q.mean())},
        "weak_right_when": {"agreed": float(w[agreed].mean()) if agreed.any() else None,
                            "escalated": float(w[~agreed].mean()) if (~agreed).any() else None},
        "gap_recovered": recovered,
        "gap_recovered_se": float(np.std(boots)) if boots else None,
        "lift_over_random": None if recovered is None else recovered - escalated,
    }
    report["usd_per_1k_prompts"] = None  # unless the data has all three models' costs
    if verifier in ds.labels:
        cw, cv, cs = (ds.costs[idx, ds.label_index(m)] for m in (weak, verifier, strong))
        if not np.isnan(cw + cv + cs).any():
            paid = cw + cv + np.where(agreed, 0.0, cs)
            report["usd_per_1k_prompts"] = {"weak": 1e3 * float(cw.mean()), "strong": 1e3 * float(cs.mean()),
                                            "cascade": 1e3 * float(paid.mean())}
    if router is not None:
        ps, pw = router_columns(router, strong, weak)
        P, familiar = router.predict_embeddings_with_gate(
            embed_texts(ds.subset(idx).prompts, router.featurizer, progress=False))
        gap = P[:, ps] - P[:, pw]
        k = int(round(escalated * len(idx)))
        to_strong = np.zeros(len(idx), dtype=bool)
        to_strong[np.argsort(-gap, kind="stable")[:k]] = True
        qr = np.where(to_strong, s, w)
        report["router_at_same_strong_share"] = {"artifact": router.version, "family": router.metadata["family"],
                                                 "quality": float(qr.mean()), "gap_recovered": _gap_recovered(qr, w, s)}
        if familiar is not None:  # a gated artifact: what `router.novel_cascade` would send to the cascade
            novel = ~familiar
            part: dict[str, Any] = {"familiar_share": float(familiar.mean()), "novel_prompts": int(novel.sum()),
                                    "escalated_share": None, "quality": None, "gap_recovered": None}
            if novel.any():
                part.update(escalated_share=float(1.0 - agreed[novel].mean()),
                            quality={"weak": float(w[novel].mean()), "strong": float(s[novel].mean()),
                                     "cascade": float(q[novel].mean())},
                            gap_recovered=_gap_recovered(q[novel], w[novel], s[novel]))
            report["novel_cascade"] = part
    return report


def cascade_summary(report: dict[str, Any]) -> str:
    """One line for a terminal."""
    rec = report["gap_recovered"]
    line = (f"cascade {report['weak']} + {report['verifier']} -> {report['strong']} ({report['compare']}): "
            f"{report['prompts']} prompts, escalated {100 * report['escalated_share']:.1f}%, quality "
            f"{report['quality']['cascade']:.3f} (weak {report['quality']['weak']:.3f}, strong "
            f"{report['quality']['strong']:.3f})")
    if rec is not None:
        line += f", gap recovered {100 * rec:.0f}% ± {100 * (report['gap_recovered_se'] or 0):.0f}"
    if report.get("usd_per_1k_prompts"):
        c = report["usd_per_1k_prompts"]
        line += f", ${c['cascade']:.2f} per 1k prompts (strong alone ${c['strong']:.2f})"
    if report.get("router_at_same_strong_share") and report["router_at_same_strong_share"]["gap_recovered"] is not None:
        line += f"; router at the same share recovers {100 * report['router_at_same_strong_share']['gap_recovered']:.0f}%"
    if report.get("novel_cascade"):
        n = report["novel_cascade"]
        line += f"; the artifact calls {100 * (1 - n['familiar_share']):.1f}% novel"
        if n["escalated_share"] is not None:
            line += f" (cascade there: escalated {100 * n['escalated_share']:.1f}%"
            line += f", gap recovered {100 * n['gap_recovered']:.0f}%)" if n["gap_recovered"] is not None else ")"
    return line
