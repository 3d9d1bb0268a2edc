"""Metric code against values computed by hand on tiny datasets."""

import numpy as np
import pytest

from training.metrics import (
    aiq, apgr, cpt, curve_metrics, decision_curve, random_router_metrics, threshold_curve, two_model_report, upper_hull,
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


def test_aiq_is_area_under_non_decreasing_hull():
    pts = [(1.0, 0.5), (2.0, 0.9), (3.0, 0.8), (1.5, 0.6)]  # (1.5, 0.6) lies under the chord
    hx, hy = upper_hull(pts)
    assert hx.tolist() == [1.0, 2.0] and hy.tolist() == [0.5, 0.9]
    assert aiq(pts, 1.0, 3.0) == pytest.approx((0.7 + 0.9) / 2, abs=1e-4)
