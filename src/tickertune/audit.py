"""A leakage audit a reviewer would run: every check prints pass or fail.

1. past-only features: no feature at row t moves when prices after t change;
2. disjoint segments: no date shared between train, validation and test, and the gaps
   keep every bar that feeds a training row (its window or its next-day target) away
   from the bars that feed validation or test rows;
3. scaler from train only: the registered transformer's scaler equals one fitted on the
   training rows, and differs from one fitted with validation rows added;
4. test untouched: the study recorded the same split that the data gives now, its
   validation ends before the test segment starts, and the registered models' recorded
   validation probabilities lie inside the validation segment only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import json

import numpy as np
import pandas as pd

from tickertune.features import compute_features


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool | None  # None: skipped (nothing to check)
    detail: str

    def line(self) -> str:
        word = {True: "PASS", False: "FAIL", None: "SKIP"}[self.passed]
        return f"{word}  {self.name}: {self.detail}"


def perturb_after(bars: pd.DataFrame, t: int, seed: int = 0) -> pd.DataFrame:
    """Bars with every row after position t replaced by a different, valid path."""
    rng = np.random.default_rng(seed)
    out = bars.copy()
    n = len(out) - t - 1
    if n <= 0:
        return out
    factor = np.exp(np.cumsum(rng.normal(0, 0.03, n)))
    for col in ("open", "high", "low", "close"):
        out.iloc[t + 1:, out.columns.get_loc(col)] = out[col].to_numpy()[t + 1:] * factor
    out.iloc[t + 1:, out.columns.get_loc("volume")] = out["volume"].to_numpy()[t + 1:] * rng.uniform(0.5, 2, n)
    return out


def check_past_only(bars: pd.DataFrame, feature_fn: Callable[[pd.DataFrame], pd.DataFrame] = compute_features,
                    cuts: tuple[float, ...] = (0.25, 0.5, 0.75)) -> Check:
    base = feature_fn(bars)
    for i, frac in enumerate(cuts):
        t = int(len(bars) * frac)
        moved = feature_fn(perturb_after(bars, t, seed=i))
        a, b = base.iloc[: t + 1].to_numpy(), moved.iloc[: t + 1].to_numpy()
        same = np.isclose(a, b, rtol=1e-12, atol=0, equal_nan=True)
        if not same.all():
            col = base.columns[np.argwhere(~same)[0][1]]
            return Check("past-only features", False,
                         f"feature {col!r} at or before {bars.index[t].date()} changed when later prices changed")
    return Check("past-only features", True,
                 f"{base.shape[1]} features unchanged up to each of {len(cuts)} cut dates when later prices change")


def check_disjoint(split: Any) -> Check:
    d = split.features.dates
    seg = {s.name: set(d[s.rows]) for s in (split.train, split.val, split.test)}
    shared = (seg["train"] & seg["val"]) | (seg["train"] & seg["test"]) | (seg["val"] & seg["test"])
    if shared:
        return Check("disjoint segments", False, f"{len(shared)} dates shared, first {min(shared).date()}")
    gaps = [split.val.start - split.train.stop, split.test.start - split.val.stop]
    lookback = split.features.lookback
    if min(gaps) < lookback:
        return Check("disjoint segments", False, f"gap of {min(gaps)} rows is shorter than the look-back {lookback}")
    return Check("disjoint segments", True,
                 f"train {d[split.train.start].date()}..{d[split.train.stop - 1].date()}, "
                 f"val {d[split.val.start].date()}..{d[split.val.stop - 1].date()}, "
                 f"test {d[split.test.start].date()}..{d[split.test.stop - 1].date()}; gaps {gaps} rows "
                 f">= look-back {lookback}")


def check_scaler(split: Any, pipeline: dict[str, Any] | None) -> Check:
    if pipeline is None or "scaler" not in pipeline:
        return Check("scaler from train only", None, "no registered transformer to check")
    from tickertune.models.transformer import Scaler

    X = split.features.X.to_numpy(np.float64)
    train = Scaler.fit(X[split.train.rows])
    wider = Scaler.fit(X[: split.val.stop])
    saved = Scaler.from_dict(pipeline["scaler"])
    if not (np.allclose(saved.mean, train.mean, rtol=1e-12) and np.allclose(saved.std, train.std, rtol=1e-12)):
        return Check("scaler from train only", False, "the registered scaler differs from one fitted on train rows")
    if np.allclose(saved.mean, wider.mean, rtol=1e-9):
        return Check("scaler from train only", False, "the registered scaler also matches train+validation rows")
    return Check("scaler from train only", True,
                 f"rank-1 transformer scaler equals the fit on the {len(split.train)} training rows")


def check_test_untouched(split: Any, recorded: dict[str, Any], val_dates: list[pd.DatetimeIndex]) -> Check:
    now = split.dates()
    diff = {k: (recorded.get(k), v) for k, v in now.items() if recorded.get(k) != v}
    if diff:
        return Check("test segment untouched", False, f"the study recorded another split: {diff}")
    test_start = pd.Timestamp(now["test_start"])
    if pd.Timestamp(now["val_end"]) >= test_start:
        return Check("test segment untouched", False, "validation ends after the test segment starts")
    for dates in val_dates:
        if len(dates) and (dates.max() >= test_start or dates.min() < pd.Timestamp(now["val_start"])):
            return Check("test segment untouched", False,
                         f"a registered model was selected on dates outside validation ({dates.min().date()}..{dates.max().date()})")
    return Check("test segment untouched", True,
                 f"every trial used the recorded split (validation ends {now['val_end']}, test starts "
                 f"{now['test_start']}); {len(val_dates)} registered models were selected on validation dates only")


def run_audit(ticker: str, storage_url: str, feature_fn: Callable[[pd.DataFrame], pd.DataFrame] = compute_features,
              tracking: bool = True) -> list[Check]:
    """All four checks for `ticker`'s studies in `storage_url` (and its registered models)."""
    import optuna

    from tickertune.data import load_bars
    from tickertune.errors import NotFoundError
    from tickertune.splits import chronological_split
    from tickertune.storage import make_storage

    ticker = ticker.upper()
    if storage_url.startswith("sqlite:///") and not Path(storage_url[10:]).is_file():
        raise NotFoundError(f"no study database at {storage_url[10:]}; run: tickertune tune {ticker}")
    storage = make_storage(storage_url)
    studies = {}
    for model in ("xgb", "transformer"):
        try:
            studies[model] = optuna.load_study(study_name=f"{model}_tuning_{ticker}", storage=storage)
        except KeyError:
            pass
    if not studies:
        raise NotFoundError(f"no study of {ticker} in {storage_url}; run: tickertune tune {ticker}")
    attrs = next(iter(studies.values())).user_attrs
    bars = load_bars(ticker, attrs.get("data_spec", "sample"), attrs.get("start") or None, attrs.get("end") or None)
    from tickertune.features import build_features

    fs = build_features(bars.frame, feature_fn)
    split = chronological_split(fs, source=bars.source)

    pipelines, val_dates = {}, []
    if tracking:
        from tickertune.ensemble import load_model

        for model in studies:
            try:
                loaded = load_model(ticker, model, "rank-1")
            except NotFoundError:
                continue
            pipelines[model] = json.loads((loaded.model_dir / "pipeline.json").read_text())
            val_dates.append(pd.DatetimeIndex(pd.read_csv(loaded.model_dir / "val_predictions.csv",
                                                          parse_dates=["date"])["date"]))
    checks = [check_past_only(bars.frame, feature_fn), check_disjoint(split),
              check_scaler(split, pipelines.get("transformer"))]
    checks.append(check_test_untouched(split, attrs, val_dates))
    return checks

