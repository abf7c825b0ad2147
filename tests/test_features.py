"""Features use the past only, and the target is the next day's direction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tickertune.data import load_bars
from tickertune.features import LOOKBACK, build_features, compute_features

SIX = ("AAPL", "AMZN", "GOOG", "META", "NFLX", "NVDA")


@pytest.fixture(scope="module")
def aapl() -> pd.DataFrame:
    return load_bars("AAPL").frame


def _perturb_after(bars: pd.DataFrame, t: int, seed: int) -> pd.DataFrame:
    """Replace every price and volume after row t with different, still valid values."""
    rng = np.random.default_rng(seed)
    out = bars.copy()
    n = len(bars) - (t + 1)
    tail = out.iloc[t + 1:]
    new = {c: tail[c].to_numpy() * rng.uniform(0.6, 1.6, n) for c in ("open", "high", "low", "close")}
    stacked = np.vstack([new["open"], new["high"], new["low"], new["close"]])
    new["high"] = stacked.max(axis=0) * rng.uniform(1.0, 1.02, n)  # keep high >= low
    new["low"] = stacked.min(axis=0) * rng.uniform(0.98, 1.0, n)
    new["volume"] = np.round(tail["volume"].to_numpy() * rng.uniform(0.2, 3.0, n))
    for c, v in new.items():
        out.iloc[t + 1:, out.columns.get_loc(c)] = v
    return out


@pytest.mark.parametrize("t", [LOOKBACK - 1, 300, 1000, 2000, 2697])
def test_features_use_only_the_past(aapl, t):
    changed = _perturb_after(aapl, t, seed=t)
    # The perturbation leaves rows <= t alone and changes every row after t.
    pd.testing.assert_frame_equal(changed.iloc[: t + 1], aapl.iloc[: t + 1], check_exact=True)
    assert (changed.iloc[t + 1:]["close"].to_numpy() != aapl.iloc[t + 1:]["close"].to_numpy()).all()
    assert (changed["high"] >= changed["low"]).all()

    before = compute_features(aapl)
    after = compute_features(changed)
    assert list(before.columns) == list(after.columns)
    assert before.iloc[: t + 1].notna().any().all()  # every feature has real values to compare

    for col in before.columns:
        np.testing.assert_allclose(
            after[col].to_numpy()[: t + 1], before[col].to_numpy()[: t + 1],
            rtol=1e-12, atol=0, equal_nan=True, err_msg=f"{col} at rows <= {t} saw the future",
        )
    # ...and the test can fail: the future does reach row t+1.
    a, b = before.iloc[t + 1].to_numpy(), after.iloc[t + 1].to_numpy()
    differs = ~np.isclose(a, b, rtol=1e-9, atol=0, equal_nan=True)
    assert differs.sum() >= 5, list(before.columns[differs])


def test_compute_features_on_a_prefix_equals_the_full_run(aapl):
    """Same claim from the other side: truncating the future changes nothing before it."""
    full = compute_features(aapl)
    for t in (120, 777, 1900):
        part = compute_features(aapl.iloc[: t + 1])
        pd.testing.assert_frame_equal(part, full.iloc[: t + 1], rtol=1e-12, atol=0)


@pytest.mark.parametrize("ticker", SIX)
def test_target_and_alignment(ticker):
    bars = load_bars(ticker).frame
    fs = build_features(bars)
    close = bars["close"].to_numpy()

    assert fs.lookback == LOOKBACK
    assert len(fs.X) == len(fs.y)
    assert fs.y.dtype == np.int8
    assert set(np.unique(fs.y)) == {0, 1}
    assert fs.X.dtypes.eq(np.float64).all()
    assert not fs.X.isna().any().any()
    assert np.isfinite(fs.X.to_numpy()).all()
    assert fs.names == list(fs.X.columns)
    assert fs.dates.equals(fs.X.index)

    assert fs.dates[0] == bars.index[LOOKBACK - 1]
    assert fs.dates[-1] == bars.index[-2]
    assert fs.dates.is_monotonic_increasing and fs.dates.is_unique

    pos = bars.index.get_indexer(fs.dates)
    assert (pos >= 0).all()
    expected = (close[pos + 1] > close[pos]).astype(np.int8)
    np.testing.assert_array_equal(fs.y, expected)
    # Clean sample data: nothing dropped between warm-up and the last row.
    assert len(fs.y) == len(bars) - (LOOKBACK - 1) - 1


def test_target_is_strictly_up_flat_day_is_zero(aapl):
    bars = aapl.iloc[:200].copy()
    bars.iloc[150, bars.columns.get_loc("close")] = bars["close"].iloc[149]  # flat day
    bars.iloc[150, bars.columns.get_loc("high")] = max(bars["high"].iloc[150], bars["close"].iloc[150])
    bars.iloc[150, bars.columns.get_loc("low")] = min(bars["low"].iloc[150], bars["close"].iloc[150])
    fs = build_features(bars)
    i = fs.dates.get_loc(bars.index[149])
    assert fs.y[i] == 0


def test_flat_volume_does_not_drop_rows(aapl):
    """A constant-volume stretch gives an undefined z-score; it is filled, not dropped."""
    bars = aapl.iloc[:300].copy()
    bars.iloc[100:160, bars.columns.get_loc("volume")] = 1_000_000.0
    fs = build_features(bars)
    assert len(fs.y) == len(bars) - LOOKBACK
    assert not fs.X.isna().any().any()
    assert (fs.X.loc[bars.index[140], "volume_z_20"]) == 0.0
