"""Metric code against values computed by hand on tiny datasets."""

import numpy as np
import pytest

from training.metrics import (
    aiq, apgr, bootstrap_apgr, cpt, curve_metrics, decision_curve, random_router_metrics, threshold_curve, two_model_report, upper_hull,
)

QS = np.array([1.0, 1.0, 0.0, 1.0])  # strong model: mean 0.75
QW = np.array([0.0, 1.0, 1.0, 0.0])  # weak model: mean 0.50


def test_oracle_curve_by_hand_has_apgr_above_one():
    points = threshold_curve(QS - QW, QS, QW, num_thresholds=4)
    assert sorted(points) == [(0.0, 0.5), (0.5, 1.0), (0.5, 1.0), (0.75, 1.0), (1.0, 0.75)]
    value, why = apgr(points, 0.75, 0.5)
    assert why is None and value == pytest.approx(1.375)  # (0.84375 - 0.5) / 0.25
    assert cpt(points, 0.75, 0.5, 0.5)[0] == pytest.approx(12.5)
    assert cpt(points, 0.75, 0.5, 0.8)[0] == pytest.approx(20.0)


def test_random_router_is_about_half():
    rng = np.random.default_rng(1)
    qs = (rng.random(3000) < 0.8).astype(float)
    qw = (rng.random(3000) < 0.5).astype(float)
    rep = random_router_metrics(qs, qw, seeds=10)
    assert rep["apgr"] == pytest.approx(0.5, abs=0.03)
    assert rep["cpt50"] == pytest.approx(50.0, abs=5)


def test_always_weak_router_has_undefined_cpt_and_says_so():
    never = [np.zeros(4, dtype=bool)] * 3
    m = curve_metrics(decision_curve(never, QS, QW), 0.75, 0.5)
    assert m["cpt50"] is None and m["cpt80"] is None and m["apgr"] is None
    assert "never reaches 50% PGR" in m["undefined"]["cpt50"]
    assert "undefined" in m["undefined"]["apgr"]


def test_two_model_report_contains_router_random_oracle():
    rep = two_model_report(QS - QW, QS, QW, num_thresholds=4)
    assert rep["router"]["apgr"] == pytest.approx(1.375)
    assert rep["oracle"]["apgr"] == pytest.approx(1.375)
    assert set(rep["random"]) >= {"apgr", "cpt50", "cpt80"}


def _pair(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.random(n) < 0.85).astype(float), (rng.random(n) < 0.7).astype(float)


def test_bootstrap_spread_is_the_sampling_noise_and_shrinks_with_more_prompts():
    qs, qw = _pair(400, 2)
    noise = np.random.default_rng(3).random(400)
    small = bootstrap_apgr(noise, qs, qw, resamples=300)
    lo, hi = small["apgr_ci95"]
    assert lo < 0.5 < hi  # a router that knows nothing is not told apart from random
    # the spread over prompt resamples is of the size of the random router's spread over seeds
    floor = random_router_metrics(qs, qw, seeds=40)["apgr_std"]
    assert floor > 0.01 and 0.5 * floor < small["apgr_se"] < 2 * floor
    qs4, qw4 = _pair(6400, 4)
    big = bootstrap_apgr(np.random.default_rng(5).random(6400), qs4, qw4, resamples=300)
    assert big["apgr_se"] < small["apgr_se"] / 2  # 16x the prompts: ~1/4 the error
    oracle = bootstrap_apgr(qs - qw, qs, qw, resamples=100)
    assert oracle["apgr_ci95"][0] > hi  # a router that knows the answers is


def test_two_model_report_adds_the_spread_only_when_asked():
    qs, qw = _pair(200, 6)
    assert "apgr_se" not in two_model_report(qs - qw, qs, qw)["router"]
    rep = two_model_report(qs - qw, qs, qw, bootstrap=50)["router"]
    assert rep["resamples"] == 50 and rep["apgr_se"] > 0 and rep["apgr_ci95"][0] <= rep["apgr"] <= rep["apgr_ci95"][1]


def test_aiq_is_area_under_non_decreasing_hull():
    pts = [(1.0, 0.5), (2.0, 0.9), (3.0, 0.8), (1.5, 0.6)]  # (1.5, 0.6) lies under the chord
    hx, hy = upper_hull(pts)
    assert hx.tolist() == [1.0, 2.0] and hy.tolist() == [0.5, 0.9]
    assert aiq(pts, 1.0, 3.0) == pytest.approx((0.7 + 0.9) / 2, abs=1e-4)
