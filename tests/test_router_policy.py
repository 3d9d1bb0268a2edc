import numpy as np
import pytest

from router.policy import choose, choose_batch


def test_cost_weight_zero_picks_best_quality_and_ties_go_cheaper():
    q = np.array([0.6, 0.9, 0.9])
    c = np.array([1.0, 10.0, 5.0])
    assert choose(q, c, 0.0)[0] == 2


def test_cost_weight_trades_quality_for_cost():
    q = np.array([0.70, 0.90])
    c = np.array([1.0, 10.0])  # normalised: 0.1 and 1.0
    assert choose(q, c, 0.1)[0] == 1  # 0.69 vs 0.80
    idx, score = choose(q, c, 1.0)  # 0.60 vs -0.10
    assert idx == 0 and score == pytest.approx(0.6)


def test_allowed_mask_and_bad_input():
    q = np.array([0.9, 0.5])
    c = np.array([1.0, 1.0])
    assert choose(q, c, 0.0, allowed=np.array([False, True]))[0] == 1
    with pytest.raises(ValueError):
        choose(q, c, 0.0, allowed=np.array([False, False]))
    with pytest.raises(ValueError):
        choose(q, np.array([1.0]), 0.0)


def test_batch_matches_single():
    rng = np.random.default_rng(0)
    Q, c = rng.random((50, 4)), rng.random(4)
    for w in (0.0, 0.3, 5.0):
        assert choose_batch(Q, c, w).tolist() == [choose(row, c, w)[0] for row in Q]


def test_the_per_request_fast_path_matches_the_array_rule():
    from router.policy import _choose_array

    rng = np.random.default_rng(7)
    for _ in range(2000):
        n = int(rng.integers(1, 6))
        q = rng.choice([0.2, 0.5, 0.5, 0.9], n) if rng.random() < 0.3 else rng.random(n)  # ties too
        c = rng.choice([0.0, 1e-6, 2e-6, np.nan], n) if rng.random() < 0.5 else rng.random(n)
        w = float(rng.choice([0.0, 0.3, 1.0, 5.0]))
        (i, score), (j, expected) = choose(q, c, w), _choose_array(q, c, w)
        assert i == j and abs(score - expected) < 1e-12
