"""Every family, trained on a small slice of the shipped data, beats the random router on APGR."""

import numpy as np
import pytest

from router.families import FAMILIES, familiar, get_family
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

