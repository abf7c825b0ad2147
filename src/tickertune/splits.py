"""Chronological train / validation / test segments separated by gaps.

The gap between segments is at least the feature look-back, so no bar that feeds a
training row (its window or its next-day target) feeds a validation or test row.
The test segment is held out of tuning entirely.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tickertune.errors import DataError
from tickertune.features import FeatureSet
from tickertune.metrics import Baselines, baselines

MIN_TRAIN, MIN_VAL, MIN_TEST = 200, 50, 50


@dataclass(frozen=True)
class Segment:
    """One contiguous block of feature rows: [start, stop)."""

    name: str
    start: int
    stop: int

    @property
    def rows(self) -> slice:
        return slice(self.start, self.stop)

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Split:
    """Train, validation and test segments of a FeatureSet, with their baselines."""

    features: FeatureSet
    train: Segment
    val: Segment
    test: Segment
    gap: int

    def X(self, seg: Segment) -> np.ndarray:
        return self.features.X.to_numpy(dtype=np.float64)[seg.rows]

    def y(self, seg: Segment) -> np.ndarray:
        return self.features.y[seg.rows]

    def baselines(self, seg: Segment) -> Baselines:
        """Prior-rate and majority-class baselines for `seg`, fitted on train."""
        return baselines(self.y(self.train), self.y(seg))

    def dates(self) -> dict[str, str]:
        """First and last date of each segment (ISO), recorded on the study and runs."""
        d = self.features.dates
        return {
            f"{s.name}_{edge}": str(d[i].date())
            for s in (self.train, self.val, self.test)
            for edge, i in (("start", s.start), ("end", s.stop - 1))
        }


def _sizes(usable: int, val_frac: float, test_frac: float) -> tuple[int, int, int]:
    n_test = int(round(usable * test_frac))
    n_val = int(round(usable * val_frac))
    return usable - n_val - n_test, n_val, n_test


def _fits(sizes: tuple[int, int, int]) -> bool:
    return sizes[0] >= MIN_TRAIN and sizes[1] >= MIN_VAL and sizes[2] >= MIN_TEST


def min_rows(lookback: int, gap: int | None = None, val_frac: float = 0.15,
             test_frac: float = 0.15) -> int:
    """Fewest bars that split: warm-up, last row, two gaps and segments at their minimum."""
    gap = lookback if gap is None else gap
    usable = MIN_TRAIN + MIN_VAL + MIN_TEST
    while not _fits(_sizes(usable, val_frac, test_frac)):
        usable += 1
    return usable + 2 * gap + lookback  # lookback = (lookback - 1) warm-up rows + the last row


def chronological_split(
    features: FeatureSet,
    val_frac: float = 0.15,
    test_frac: float = 0.15,
    gap: int | None = None,
    source: str = "data",
) -> Split:
    """Split rows in time order: train | gap | validation | gap | test."""
    gap = features.lookback if gap is None else gap
    if gap < features.lookback:
        raise ValueError(f"gap {gap} is shorter than the feature look-back {features.lookback}")
    n = len(features.y)
    n_train, n_val, n_test = _sizes(n - 2 * gap, val_frac, test_frac)
    if not _fits((n_train, n_val, n_test)):
        need = min_rows(features.lookback, gap, val_frac, test_frac)
        bars = n + features.lookback  # rows before warm-up and last-row removal
        raise DataError(
            f"{source}: too few rows: {bars} bars, at least {need} needed "
            f"(look-back {features.lookback}, gaps {gap}, train/val/test >= "
            f"{MIN_TRAIN}/{MIN_VAL}/{MIN_TEST}); widen --start/--end"
        )
    train = Segment("train", 0, n_train)
    val = Segment("val", n_train + gap, n_train + gap + n_val)
    test = Segment("test", val.stop + gap, val.stop + gap + n_test)
    return Split(features=features, train=train, val=val, test=test, gap=gap)


def walk_forward_folds(split: Split, k: int, source: str = "data") -> list[Split]:
    """`k` expanding-window folds before the test segment, in time order.

    Fold i trains on every row up to a gap before its validation block; the blocks are
    consecutive and end where the main validation segment ends, so the test segment (and
    the gap before it) stays out of every fold. Each fold keeps the main split's gap."""
    if k < 2:
        raise ValueError("walk-forward cross-validation needs at least 2 folds")
    end, gap = split.val.stop, split.gap
    block = min(len(split.val), (end - gap - MIN_TRAIN) // k)
    if block < MIN_VAL:
        raise DataError(
            f"{source}: too few rows for {k} walk-forward folds: each validation block would have "
            f"{max(block, 0)} rows (at least {MIN_VAL}); use fewer --cv-folds or widen --start/--end"
        )
    folds = []
    for i in range(k):
        v_start = end - (k - i) * block
        folds.append(Split(features=split.features, train=Segment("train", 0, v_start - gap),
                           val=Segment("val", v_start, v_start + block), test=split.test, gap=gap))
    return folds
