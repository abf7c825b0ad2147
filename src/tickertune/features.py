"""Past-only features and the next-day direction target.

Every feature at row t is a function of bars 0..t only (rolling windows and
recursive EWMs look backwards), which `tests/test_features.py` proves by perturbing
the future. `LOOKBACK` is the longest window; the first LOOKBACK-1 rows are warm-up
and are dropped, and the splits use it as the minimum gap between segments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

LOOKBACK = 50  # rows: the longest window below (close / SMA-50)


@dataclass(frozen=True)
class FeatureSet:
    """Features and target aligned on the same dates (warm-up and last row removed)."""

    X: pd.DataFrame  # float64, index = dates
    y: np.ndarray  # int8: 1 when the next close is above this close
    lookback: int

    @property
    def dates(self) -> pd.DatetimeIndex:
        return self.X.index  # type: ignore[return-value]

    @property
    def names(self) -> list[str]:
        return list(self.X.columns)


def compute_features(bars: pd.DataFrame) -> pd.DataFrame:
    """All features for every row of `bars` (NaN where a window is not yet full)."""
    o, h, l, c = (bars[k].astype(np.float64) for k in ("open", "high", "low", "close"))
    v = bars["volume"].astype(np.float64)
    r = np.log(c).diff()  # 1-day log return ending at t
    f: dict[str, pd.Series] = {}

    f["ret_1"] = r
    for lag in (1, 2, 3, 4):
        f[f"ret_1_lag{lag}"] = r.shift(lag)
    for k in (2, 5, 10, 20):
        f[f"ret_{k}"] = np.log(c / c.shift(k))
    for w in (5, 10, 20):
        f[f"vol_{w}"] = r.rolling(w).std()
    f["vol_ratio_5_20"] = f["vol_5"] / f["vol_20"]

    # RSI-14 with Wilder's smoothing (recursive EWM, alpha = 1/14), scaled to [0, 1].
    gain = r.clip(lower=0).ewm(alpha=1 / 14, adjust=False).mean()
    loss = (-r.clip(upper=0)).ewm(alpha=1 / 14, adjust=False).mean()
    f["rsi_14"] = gain / (gain + loss).replace(0.0, np.nan)

    ema12 = c.ewm(span=12, adjust=False).mean()
    ema26 = c.ewm(span=26, adjust=False).mean()
    macd = (ema12 - ema26) / c
    signal = macd.ewm(span=9, adjust=False).mean()
    f["macd"], f["macd_signal"], f["macd_hist"] = macd, signal, macd - signal

    rng = (h - l) / c
    f["hl_range"] = rng
    f["hl_range_5"] = rng.rolling(5).mean()
    f["body"] = (c - o) / o
    f["gap"] = np.log(o / c.shift(1))
    span = (h - l).replace(0.0, np.nan)
    f["close_pos"] = ((c - l) / span).fillna(0.5)

    logv = np.log1p(v)
    f["volume_z_20"] = (logv - logv.rolling(20).mean()) / logv.rolling(20).std().replace(0.0, np.nan)
    f["volume_chg_5"] = logv - logv.rolling(5).mean()

    for w in (10, 20, 50):
        f[f"close_sma_{w}"] = c / c.rolling(w).mean() - 1.0
    f["drawdown_50"] = c / c.rolling(50).max() - 1.0

    out = pd.DataFrame(f, index=bars.index)
    return out.replace([np.inf, -np.inf], np.nan)


FeatureFn = Callable[[pd.DataFrame], pd.DataFrame]


def feature_matrix(bars: pd.DataFrame, fn: FeatureFn = compute_features) -> pd.DataFrame:
    """Features of every row that has a full look-back (what a model sees, train or serve).

    The last row is kept: at serving time it is the one that forecasts tomorrow. `fn`
    replaces the feature function (the audit uses it to plant a leaky feature)."""
    X = fn(bars)
    # A flat volume window can leave a NaN z-score after warm-up; zero is "average volume".
    X = X.fillna({"volume_z_20": 0.0, "rsi_14": 0.5})
    keep = np.ones(len(X), dtype=bool)
    keep[: LOOKBACK - 1] = False
    keep &= ~X.isna().any(axis=1).to_numpy()
    return X[keep]


def build_features(bars: pd.DataFrame, fn: FeatureFn = compute_features) -> FeatureSet:
    """Features plus target; drops the warm-up rows and the last row (no next close)."""
    X = feature_matrix(bars, fn)
    close = bars["close"].to_numpy(dtype=np.float64)
    up = pd.Series(np.r_[close[1:] > close[:-1], False].astype(np.int8), index=bars.index)
    X = X[X.index < bars.index[-1]]
    return FeatureSet(X=X, y=up.loc[X.index].to_numpy(dtype=np.int8), lookback=LOOKBACK)
