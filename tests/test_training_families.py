"""Every family, trained on a small slice of the shipped data, beats the random router on APGR."""

import numpy as np
import pytest

from router.families import FAMILIES, FamilyError, familiar, get_family
from router.featurizer import get_featurizer
from training.embeddings import embed_texts
from training.metrics import random_router_metrics, two_model_report
from training.train import fit_state, resolve_params

from .router_test_data import routerbench_slices

# gpt-4 vs claude-v2: a pair whose quality gap differs by prompt type, so a router has signal
STRONG, WEAK = "gpt-4-1106-preview", "claude-v2"


@pytest.fixture(scope="module", params=["minilm-l6-v2-static", "minilm-l6-v2"])
def slices(request, tmp_path_factory):
    train, test = routerbench_slices(tmp_path_factory.mktemp("rb"), n_train=1000, n_test=300)
    feat = get_featurizer(request.param)
    return (train, embed_texts(train.prompts, feat, progress=False)), (test, embed_texts(test.prompts, feat, progress=False))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_beats_random_apgr(slices, family):
    (train, Xtr), (test, Xte) = slices
    fam = get_family(family)
    state = fit_state(family, Xtr, train.scores, resolve_params(fam, None), progress=False)
    P = fam.predict(state, Xte)
    assert P.shape == (len(test), len(train.labels)) and P.min() >= 0 and P.max() <= 1
    js, jw = test.label_index(STRONG), test.label_index(WEAK)
    rep = two_model_report(P[:, js] - P[:, jw], test.scores[:, js], test.scores[:, jw])
    rnd = random_router_metrics(test.scores[:, js], test.scores[:, jw])
    assert rep["router"]["apgr"] is not None and rep["router"]["cpt50"] is not None
    assert rep["router"]["apgr"] > rnd["apgr"] + 0.01, (family, rep["router"], rnd)


def test_families_handle_missing_scores():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 8)).astype(np.float32)
    Y = (rng.random((30, 3)) < 0.5).astype(float)
    Y[::4, 1] = np.nan
    Y[:, 2] = 1.0  # constant label: nothing to learn
    for name, fam in FAMILIES.items():
        state = fit_state(name, X, Y, resolve_params(fam, None), progress=False)
        P = fam.predict(state, X)
        assert P.shape == (30, 3) and not np.isnan(P).any(), name


def test_logreg_fast_path_is_predict_proba(slices):
    """The router's numpy path for logistic regression gives sklearn's own probabilities."""
    (train, Xtr), (_, Xte) = slices
    fam = get_family("logreg")
    state = fit_state("logreg", Xtr, train.scores, resolve_params(fam, None), progress=False)
    ref = np.column_stack([
        np.full(len(Xte), state["constants"][j]) if est is None else est.predict_proba(Xte)[:, 1]
        for j, est in enumerate(state["models"])
    ])
    assert np.abs(fam.predict(state, Xte) - np.clip(ref, 0, 1)).max() < 1e-6  # float32 input rounding


def test_ensemble_is_the_mean_of_its_members_and_rejects_bad_members(slices):
    """An ensemble artifact predicts exactly its members' mean; a nested or unknown member is refused."""
    from router.families import FamilyError

    (train, Xtr), (_, Xte) = slices
    fam = get_family("ensemble")
    state = fit_state("ensemble", Xtr, train.scores, resolve_params(fam, {"members": ["difficulty", "knn"]}), progress=False)
    ref = np.mean([get_family(m).predict(fit_state(m, Xtr, train.scores, resolve_params(get_family(m), None), progress=False), Xte)
                   for m in ("difficulty", "knn")], axis=0)
    assert np.abs(fam.predict(state, Xte) - ref).max() < 1e-9
    for bad in (["ensemble"], ["nope"], []):
        with pytest.raises(FamilyError, match="ensemble members"):
            fit_state("ensemble", Xtr[:50], train.scores[:50], {"members": bad}, progress=False)


def test_gated_is_the_ensemble_on_familiar_prompts_and_difficulty_on_the_rest(slices):
    """Its numpy members reproduce the sklearn ensemble; prompts unlike the training data
    (random directions here; unseen tasks in test_training_generalization) get difficulty's."""
    (train, Xtr), (_, Xte) = slices
    fit = lambda name: fit_state(name, Xtr, train.scores, resolve_params(get_family(name), None), progress=False)  # noqa: E731
    gated, ensemble = fit("gated"), fit("ensemble")
    near = familiar(gated, Xte)
    assert near.mean() > 0.8  # the test split of the same tasks: the in-distribution path is taken
    P = get_family("gated").predict(gated, Xte)
    diff = np.abs(P[near] - get_family("ensemble").predict(ensemble, Xte[near])).max(axis=1)
    # equal but where the 40th neighbour is a tie (duplicate prompts): then one of 40 swaps, 1/120
    assert (diff < 1e-5).mean() > 0.97 and diff.max() <= 1 / (3 * 40) + 1e-5
    far = np.random.default_rng(0).normal(size=Xte.shape).astype(np.float32) * Xtr.std(axis=0) * 3 + Xtr.mean(axis=0)
    assert not familiar(gated, far).any()
    difficulty = get_family("difficulty").predict(ensemble["members"]["difficulty"], far)
    assert np.abs(get_family("gated").predict(gated, far) - difficulty).max() < 1e-9
    assert all(isinstance(v, np.ndarray) for k, v in gated.items() if k != "family")  # npz: no sklearn to route


def test_a_gate_that_cannot_tell_its_own_prompts_apart_calls_every_prompt_novel():
    """Ten templated prompts: standardised, each is about as far from the others as from anything,
    so a similarity bar set on them would let any prompt through. The gate calls all novel then
    (difficulty's path; `router.novel_cascade` sends them to the cascade)."""
    feat = get_featurizer("minilm-l6-v2-static+stats")
    X = feat.embed([f"question {i}: A, B or C?" for i in range(1, 11)])
    Y = np.random.default_rng(0).random((10, 3))
    gated = fit_state("gated", X, Y, resolve_params(get_family("gated"), None), progress=False)
    assert gated["gate_tau"][0] == np.inf
    assert not familiar(gated, X).any()
    assert not familiar(gated, feat.embed(["Zur Mitteilung: der Vorstand tagt am Donnerstag im Saal 4."])).any()
    difficulty = fit_state("difficulty", X, Y, resolve_params(get_family("difficulty"), None), progress=False)
    assert np.abs(get_family("gated").predict(gated, X) - get_family("difficulty").predict(difficulty, X)).max() < 1e-9



def _two_scale_tasks(n: int = 400, d: int = 16, seed: int = 0):
    """Two tasks with labels of different kinds: task `a` 0/1, task `b` a judge-like score near
    the top of the scale whose prompts sit along another direction `u`. Within each task the
    ease is X @ w; across tasks `u` only marks the task (its level), not an easier prompt."""
    rng = np.random.default_rng(seed)
    w, u = np.eye(d)[0], np.eye(d)[1]
    X = rng.normal(size=(2 * n, d))
    groups = np.array(["a"] * n + ["b"] * n)
    X[groups == "b"] += 3.0 * u
    ease = X @ w
    Y = np.full((2 * n, 2), np.nan)
    a, b = groups == "a", groups == "b"
    Y[a, 0] = (ease[a] + rng.normal(0, 0.5, a.sum()) > -0.5).astype(float)  # strong
    Y[a, 1] = (ease[a] + rng.normal(0, 0.5, a.sum()) > 0.5).astype(float)   # weak
    Y[b, 0] = np.clip(0.9 + 0.02 * ease[b], 0, 1)
    Y[b, 1] = np.clip(0.85 + 0.05 * ease[b], 0, 1)
    return X, Y, groups, w, u


def test_task_difficulty_learns_within_task_ease_not_the_task_level():
    X, Y, groups, w, u = _two_scale_tasks()
    fam = get_family("task_difficulty")
    assert fam.grouped
    state = fit_state("task_difficulty", X, Y, dict(fam.defaults), progress=False, groups=groups)
    coef = state["coef"]
    assert coef @ w > 5 * abs(coef @ u)  # the ease direction, not the direction that marks task b
    plain = fit_state("difficulty", X, Y, dict(FAMILIES["difficulty"].defaults), progress=False)
    assert abs(plain["coef"] @ u) > abs(coef @ u)  # raw mean scores read task b's level as "easy"
    # held-out prompts: predictions follow their ease and are not constant
    Xt, _, gt, _, _ = _two_scale_tasks(seed=1)
    P = fam.predict(state, Xt)
    assert P.shape == (len(Xt), 2) and np.ptp(P[:, 0] - P[:, 1]) > 0.05
    assert np.corrcoef(Xt @ coef, Xt @ w)[0, 1] > 0.9


def test_task_difficulty_artifact_routes_through_the_engine(tmp_path):
    """`doka router train --family task_difficulty` on a dataset with `task` groups: the signed
    artifact (npz) loads, records its featurizer, and scores held-out prompts non-constantly."""
    from router.runtime import LearnedRouter
    from training.dataset import Record, from_records
    from training.train import train

    rng = np.random.default_rng(0)
    recs = []
    for i in range(240):
        task = ["math", "trivia", "code"][i % 3]
        hard = i % 2 == 0
        prompt = f"{task} question {i}: " + ("prove the general case for all n " * 4 if hard else "what is 2+2")
        s = {"model-a": float(rng.random() < (0.6 if hard else 0.95)), "model-b": float(rng.random() < (0.1 if hard else 0.9))}
        recs.append(Record(id=f"q{i}", prompt=prompt, scores=s, costs={"model-a": 0.01, "model-b": 0.001}, task=task))
    ds = from_records(recs)
    path = train(ds, "task_difficulty", tmp_path / "art", featurizer_id="hashing-256+stats", signing_key="k",
                 holdout=0.0, progress=False)
    assert (path / "model.npz").exists()
    router = LearnedRouter.from_path(path, "k")
    assert router.metadata["featurizer"]["id"] == "hashing-256+stats" == router.featurizer.id
    held = ["poetry question 1: prove the general case for all n " * 4, "poetry question 2: what is 2+2"]
    P = router.predict(held)
    gain = P[:, 0] - P[:, 1]
    assert gain[0] > gain[1] + 0.05  # the hard unseen prompt gets the strong model's larger gain


def test_difficulty_link_is_checked_and_linear_still_fits():
    X, Y, _, _, _ = _two_scale_tasks()
    fam = get_family("difficulty")
    with pytest.raises(FamilyError, match="link"):
        fam.fit(X, Y, {**fam.defaults, "link": "logistc"}, False)
    line = fam.fit(X, Y, {**fam.defaults, "link": "linear"}, False)
    assert "logit_slope" not in line  # the clipped line, as artifacts from before the logistic link
    curve = fam.fit(X, Y, dict(fam.defaults), False)
    P = fam.predict(curve, X)
    assert 0 < P.min() and P.max() < 1  # a logistic curve never saturates to exactly 0 or 1
