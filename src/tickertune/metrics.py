"""Classification metrics and the honest baselines, in plain numpy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_EPS = 1e-15


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities `p` for labels `y`."""
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    y = np.asarray(y, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def accuracy(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> float:
    """Share of days whose direction is predicted right (p > threshold means up)."""
    return float(np.mean((np.asarray(p) > threshold) == (np.asarray(y) == 1)))


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tie-averaged ranks); NaN if one class."""
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p), dtype=np.float64)
    sorted_p = np.asarray(p)[order]
    # Average ranks over ties so constant predictions score exactly 0.5.
    _, first, counts = np.unique(sorted_p, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """log loss, accuracy and AUC of probabilities `p`."""
    return {"logloss": log_loss(y, p), "accuracy": accuracy(y, p), "auc": roc_auc(y, p)}


@dataclass(frozen=True)
class Baselines:
    """What a model must beat: the training up-rate as a constant forecast."""

    up_rate: float  # share of up days in the training segment
    logloss: float  # log loss of always predicting `up_rate`
    accuracy: float  # accuracy of always predicting the training majority class

    def as_dict(self, prefix: str = "baseline_") -> dict[str, float]:
        return {f"{prefix}logloss": self.logloss, f"{prefix}accuracy": self.accuracy}


def baselines(y_train: np.ndarray, y_eval: np.ndarray) -> Baselines:
    """Prior-rate log loss and majority-class accuracy on `y_eval`, fitted on `y_train`."""
    rate = float(np.mean(y_train))
    majority = 1 if rate >= 0.5 else 0
    return Baselines(
        up_rate=rate,
        logloss=log_loss(y_eval, np.full(len(y_eval), rate)),
        accuracy=float(np.mean(np.asarray(y_eval) == majority)),
    )
