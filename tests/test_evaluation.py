"""Honest evaluation: block-bootstrap intervals, verdicts, calibration and the leakage audit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.conftest import SHORT, run_cli
from tickertune.audit import check_past_only
from tickertune.data import load_bars
from tickertune.evaluation import block_bootstrap_indices, evaluate, save_calibration_plots
from tickertune.features import compute_features


def _logistic_fit(x: np.ndarray, y: np.ndarray, steps: int = 25) -> tuple[float, float]:
    """Newton's method for P(y=1) = sigmoid(a + b x): a tiny, honest 'model'."""
    a = b = 0.0
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(a + b * x)))
        w = p * (1 - p)
        g = np.array([np.sum(y - p), np.sum((y - p) * x)])
        h = np.array([[w.sum(), (w * x).sum()], [(w * x).sum(), (w * x * x).sum()]]) + 1e-9 * np.eye(2)
        a, b = np.array([a, b]) + np.linalg.solve(h, g)
    return a, b


def _walk_eval(seed: int, planted: float = 0.0, n_train: int = 600, n_test: int = 250):
    """Fit on a random walk's lagged return, evaluate on the following days."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test + 1
    r = rng.normal(0, 0.01, n)
    for t in range(1, n):  # planted > 0: tomorrow tends to reverse today's move
        r[t] -= planted * np.sign(r[t - 1]) * 0.01
    x, y = r[:-1], (r[1:] > 0).astype(float)
    a, b = _logistic_fit(x[:n_train] * 100, y[:n_train])
    p = 1 / (1 + np.exp(-(a + b * x[n_train:] * 100)))
    return evaluate(y[n_train:], p, y[:n_train], "logit", n_boot=300, seed=seed)


def test_planted_signal_has_an_edge_and_says_so():
    ev = _walk_eval(seed=1, planted=0.8)
    assert ev.logloss_gain.low > 0
    assert ev.verdict.startswith("logit: an edge over the baseline: log-loss gain +")
    assert "95% interval" in ev.verdict and "no evidence" not in ev.verdict


def test_random_walk_interval_contains_zero_at_least_90_of_100():
    contains = sum(_walk_eval(seed=s).logloss_gain.contains_zero() for s in range(100))
    assert contains >= 90


def test_random_walk_verdict_wording():
    ev = next(e for e in (_walk_eval(seed=s) for s in range(20)) if e.logloss_gain.contains_zero())
    assert ev.verdict.startswith("logit: no evidence of an edge over the baseline: log-loss gain ")
    assert "contains zero" in ev.verdict and "significant" not in ev.verdict


def test_bootstrap_is_reproducible_and_blocked():
    a = block_bootstrap_indices(100, 5, 50, seed=3)
    assert np.array_equal(a, block_bootstrap_indices(100, 5, 50, seed=3))
    assert not np.array_equal(a, block_bootstrap_indices(100, 5, 50, seed=4))
    assert a.shape == (50, 100)
    # consecutive days inside each block (circularly)
    assert np.all((a[:, 1:5] - a[:, 0:4]) % 100 == 1)
    e1, e2 = _walk_eval(seed=5), _walk_eval(seed=5)
    assert (e1.logloss_gain, e1.accuracy_gain) == (e2.logloss_gain, e2.accuracy_gain)


def test_scores_and_baselines_by_hand():
    rng = np.random.default_rng(0)
    y = (rng.random(200) < 0.55).astype(float)
    y_train = (rng.random(500) < 0.52).astype(float)
    p = np.clip(0.5 + 0.1 * rng.standard_normal(200), 0.05, 0.95)
    ev = evaluate(y, p, y_train, "m", n_boot=200)
    rate = y_train.mean()
    ll = lambda q: -np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))  # noqa: E731
    model, prior, major = ev.table.to_dict("records")
    assert model["logloss"] == pytest.approx(ll(p))
    assert model["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert prior["logloss"] == pytest.approx(ll(np.full(200, rate)))
    assert major["accuracy"] == pytest.approx(np.mean(y == (1.0 if rate >= 0.5 else 0.0)))
    assert ev.logloss_gain.estimate == pytest.approx(prior["logloss"] - model["logloss"])
    assert ev.logloss_gain.low <= ev.logloss_gain.estimate <= ev.logloss_gain.high


def test_calibration_plots_are_pngs(tmp_path):
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.5).astype(float)
    files = save_calibration_plots(y, rng.uniform(0.4, 0.6, 300), tmp_path, "m")
    assert [f.name for f in files] == ["m_reliability.png", "m_prediction_hist.png"]
    assert all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in files)


def test_audit_catches_a_leaky_feature():
    bars = load_bars("AAPL", start="2018-01-01").frame

    def leaky(b: pd.DataFrame) -> pd.DataFrame:
        return compute_features(b).assign(tomorrow=b["close"].shift(-1) / b["close"])

    bad = check_past_only(bars, leaky)
    assert bad.passed is False
    assert "'tomorrow'" in bad.detail
    good = check_past_only(bars)
    assert good.passed is True


def test_audit_and_evaluate_cli(workdir):
    r = run_cli(["tune", "AAPL", "--trials", "2", "--start", SHORT["start"], "--pruner", "none"], workdir)
    assert r.returncode == 0, r.stderr
    assert "test segment (194 days, never used for tuning), tickertune-AAPL-xgb@rank-1: " in r.stdout
    r = run_cli(["audit", "AAPL"], workdir)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert [ln.split()[0] for ln in lines[:4]] == ["PASS", "PASS", "SKIP", "PASS"]
    assert lines[-1] == "AAPL: 4 of 4 checks passed or skipped, 0 failed"
    r = run_cli(["evaluate", "AAPL", "--model", "xgb", "--n-boot", "200", "--seed", "1"], workdir)
    assert r.returncode == 0, r.stderr
    assert "tickertune-AAPL-xgb@rank-1" in r.stdout and "Brier" in r.stdout
    assert "paired block bootstrap, 200 resamples of 6-day blocks, seed 1" in r.stdout
    verdict = [ln for ln in r.stdout.splitlines() if ln.startswith("tickertune-AAPL-xgb@rank-1: ")]
    assert len(verdict) == 1 and "95% interval" in verdict[0]
    # Another date range gives another split: the study refuses to mix them.
    r = run_cli(["tune", "AAPL", "--trials", "1", "--start", "2019-01-01"], workdir)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("tickertune: error: study 'xgb_tuning_AAPL' was tuned on another split")
