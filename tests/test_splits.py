"""Chronological splits with gaps, their baselines, and the plain-numpy metrics."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from tickertune.data import load_bars
from tickertune.errors import DataError
from tickertune.features import LOOKBACK, build_features
from tickertune.metrics import accuracy, baselines, classification_metrics, log_loss, roc_auc
from tickertune.splits import chronological_split, min_rows


@pytest.fixture(scope="module")
def aapl_bars():
    return load_bars("AAPL").frame


@pytest.fixture(scope="module")
def features(aapl_bars):
    return build_features(aapl_bars)


@pytest.fixture(scope="module")
def split(features):
    return chronological_split(features, source="sample AAPL.csv")


# --------------------------------------------------------------------------- segments


def test_segments_in_order_with_gaps(split, features):
    n = len(features.y)
    tr, va, te = split.train, split.val, split.test
    assert (tr.name, va.name, te.name) == ("train", "val", "test")
    assert tr.start == 0
    assert tr.start < tr.stop <= va.start < va.stop <= te.start < te.stop == n
    assert split.gap >= features.lookback == LOOKBACK
    assert va.start - tr.stop >= features.lookback
    assert te.start - va.stop >= features.lookback
    assert va.start - tr.stop == split.gap and te.start - va.stop == split.gap
    assert len(tr) + split.gap + len(va) + split.gap + len(te) == n
    # No row in two segments.
    rows = [set(range(s.start, s.stop)) for s in (tr, va, te)]
    assert not (rows[0] & rows[1]) and not (rows[1] & rows[2]) and not (rows[0] & rows[2])
    # Default fractions: 15 % validation and 15 % test of the rows outside the gaps.
    usable = n - 2 * split.gap
    assert len(va) == round(usable * 0.15) and len(te) == round(usable * 0.15)
    # Arrays come from the right rows.
    np.testing.assert_array_equal(split.y(va), features.y[va.start:va.stop])
    np.testing.assert_array_equal(split.X(te), features.X.to_numpy()[te.start:te.stop])
    assert split.X(tr).shape == (len(tr), len(features.names))


def test_gap_separates_windows_in_bars(split, features, aapl_bars):
    """In bar terms, the last training target and the first validation window do not meet."""
    pos = aapl_bars.index.get_indexer(features.dates)
    last_train_target_bar = pos[split.train.stop - 1] + 1
    first_val_window_bar = pos[split.val.start] - (features.lookback - 1)
    assert first_val_window_bar > last_train_target_bar
    last_val_target_bar = pos[split.val.stop - 1] + 1
    first_test_window_bar = pos[split.test.start] - (features.lookback - 1)
    assert first_test_window_bar > last_val_target_bar


def test_dates_ordered(split, features):
    d = split.dates()
    keys = ["train_start", "train_end", "val_start", "val_end", "test_start", "test_end"]
    assert list(d) == keys
    values = list(d.values())
    assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", v) for v in values)
    assert values == sorted(values) and len(set(values)) == len(values)
    idx = {"train_start": split.train.start, "train_end": split.train.stop - 1,
           "val_start": split.val.start, "val_end": split.val.stop - 1,
           "test_start": split.test.start, "test_end": split.test.stop - 1}
    for k, i in idx.items():
        assert d[k] == str(features.dates[i].date())
    assert d["train_start"] == "2013-03-14"  # the 50th bar of the sample
    assert d["test_end"] == "2023-09-20"  # the second-to-last bar


def test_gap_shorter_than_lookback_rejected(features):
    with pytest.raises(ValueError, match="shorter than the feature look-back"):
        chronological_split(features, gap=features.lookback - 1)


def test_larger_gap(features):
    s = chronological_split(features, gap=80)
    assert s.val.start - s.train.stop == 80 and s.test.start - s.val.stop == 80
    assert s.test.stop == len(features.y)


# --------------------------------------------------------------------------- baselines


@pytest.mark.parametrize("which", ["train", "val", "test"])
def test_baselines_by_hand(split, which):
    seg = getattr(split, which)
    y_train = split.y(split.train).astype(np.float64)
    y = split.y(seg).astype(np.float64)
    b = split.baselines(seg)

    rate = y_train.sum() / len(y_train)
    assert b.up_rate == pytest.approx(rate, rel=1e-15)
    assert 0.0 < b.up_rate < 1.0
    hand_loss = -np.mean(y * np.log(rate) + (1.0 - y) * np.log(1.0 - rate))
    assert b.logloss == pytest.approx(hand_loss, rel=1e-12)
    majority = 1.0 if rate >= 0.5 else 0.0
    hand_acc = np.count_nonzero(y == majority) / len(y)
    assert b.accuracy == pytest.approx(hand_acc, rel=1e-15)
    assert b.as_dict("baseline_val_") == {"baseline_val_logloss": b.logloss,
                                          "baseline_val_accuracy": b.accuracy}


def test_baselines_majority_down():
    b = baselines(np.array([0, 0, 0, 1]), np.array([0, 1, 1, 0, 0]))
    assert b.up_rate == 0.25
    assert b.accuracy == pytest.approx(3 / 5)
    assert b.logloss == pytest.approx(-(3 * np.log(0.75) + 2 * np.log(0.25)) / 5, rel=1e-12)


# --------------------------------------------------------------------------- too short


def test_too_few_rows(aapl_bars):
    fs = build_features(aapl_bars.iloc[:300])
    with pytest.raises(DataError, match="too few rows") as info:
        chronological_split(fs, source="my.csv")
    msg = str(info.value)
    assert msg.startswith("my.csv: too few rows: 300 bars, at least ")
    assert "widen --start/--end" in msg


def test_too_few_rows_from_a_narrow_date_window():
    bars = load_bars("AAPL", start="2023-01-01")
    with pytest.raises(DataError, match="too few rows"):
        chronological_split(build_features(bars.frame), source=bars.source)


def test_too_few_rows_counts_the_bars_given(aapl_bars):
    """The error's 'N bars' is the number of bars passed in (warm-up and last row included)."""
    for n in (300, 449, 479):
        fs = build_features(aapl_bars.iloc[:n])
        with pytest.raises(DataError, match=rf"too few rows: {n} bars, "):
            chronological_split(fs)


def test_min_rows_is_exact(aapl_bars):
    need = min_rows(LOOKBACK)
    assert need == 480  # 300 usable rows leave a 45-row test segment; 330 do not
    chronological_split(build_features(aapl_bars.iloc[:need]))
    with pytest.raises(DataError, match=rf"too few rows: {need - 1} bars, at least {need} needed"):
        chronological_split(build_features(aapl_bars.iloc[: need - 1]))


# --------------------------------------------------------------------------- metrics


def _auc_pairs(y: np.ndarray, p: np.ndarray) -> float:
    pos, neg = p[y == 1], p[y == 0]
    score = 0.0
    for a, b in itertools.product(pos, neg):
        score += 1.0 if a > b else 0.5 if a == b else 0.0
    return score / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(6))
def test_roc_auc_matches_pairwise(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 120))
    y = rng.integers(0, 2, n)
    y[0], y[1] = 0, 1  # both classes
    levels = int(rng.integers(3, 12))  # few levels -> many ties
    p = rng.integers(0, levels, n) / levels + 0.3 * y * rng.random(n)  # some signal
    p = np.round(p, 1)
    assert len(np.unique(p)) < n  # there really are ties
    assert roc_auc(y, p) == pytest.approx(_auc_pairs(y, p), abs=1e-12)
    # Continuous scores (no ties) too, and plain lists.
    q = rng.random(n)
    assert roc_auc(list(y), list(q)) == pytest.approx(_auc_pairs(y, q), abs=1e-12)


def test_roc_auc_known_values():
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert roc_auc(y, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)


@pytest.mark.parametrize("c", [0.0, 0.37, 0.5, 1.0])
def test_constant_prediction_auc_is_half(c):
    y = np.random.default_rng(1).integers(0, 2, 101)
    assert roc_auc(y, np.full(len(y), c)) == 0.5


def test_roc_auc_single_class_is_nan():
    assert np.isnan(roc_auc(np.ones(5, dtype=int), np.linspace(0, 1, 5)))
    assert np.isnan(roc_auc(np.zeros(5, dtype=int), np.linspace(0, 1, 5)))


def test_log_loss_by_hand():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 500)
    p = rng.uniform(0.01, 0.99, 500)
    hand = -sum(np.log(pi) if yi == 1 else np.log(1 - pi) for yi, pi in zip(y, p)) / len(y)
    assert log_loss(y, p) == pytest.approx(hand, rel=1e-12)
    assert log_loss([1, 0], [0.5, 0.5]) == pytest.approx(np.log(2), rel=1e-15)
    # Certain and right costs ~0; certain and wrong is large but finite (clipped).
    assert log_loss([1, 0], [1.0, 0.0]) == pytest.approx(0.0, abs=1e-12)
    assert np.isfinite(log_loss([1, 0], [0.0, 1.0]))
    assert log_loss([1, 0], [0.0, 1.0]) > 30


def test_accuracy_and_classification_metrics():
    y = np.array([1, 0, 1, 0, 1])
    p = np.array([0.9, 0.4, 0.5, 0.6, 0.51])  # 0.5 is not "up"
    assert accuracy(y, p) == pytest.approx(3 / 5)
    m = classification_metrics(y, p)
    assert set(m) == {"logloss", "accuracy", "auc"}
    assert m["accuracy"] == accuracy(y, p)
    assert m["logloss"] == log_loss(y, p)
    assert m["auc"] == pytest.approx(_auc_pairs(y, p))
