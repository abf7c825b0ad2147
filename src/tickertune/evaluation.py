"""One honest evaluation: scores beside the baselines, with intervals that respect time.

Daily direction is close to a coin toss, so a point estimate alone misleads. `evaluate`
scores a model's test-segment probabilities (log loss, accuracy, AUC, Brier) beside the
two baselines (the training up-rate as a constant forecast; the training majority
class), and puts a paired block-bootstrap 95% interval on the model's log-loss gain
over the up-rate baseline and its accuracy gain over the majority class. Blocks of
consecutive days keep the serial dependence of returns; the same resampled days score
model and baseline (paired). The verdict sentence follows from the interval alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tickertune.metrics import roc_auc

_EPS = 1e-15
N_BOOT = 1000


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap percentile interval."""

    estimate: float
    low: float
    high: float
    level: float = 0.95

    def contains_zero(self) -> bool:
        return self.low <= 0.0 <= self.high

    def __str__(self) -> str:
        return f"{self.estimate:+.4f} (95% interval {self.low:+.4f} to {self.high:+.4f})"


@dataclass
class Evaluation:
    """Scores of one model and both baselines on one segment, with intervals and verdict."""

    label: str
    table: pd.DataFrame  # model, logloss, accuracy, auc, brier: the model, then the baselines
    logloss_gain: Interval  # baseline log loss - model log loss (positive: the model is better)
    accuracy_gain: Interval  # model accuracy - majority-class accuracy
    verdict: str
    n: int
    block: int
    n_boot: int
    seed: int
    spread: dict[str, float] = field(default_factory=dict)

    def metrics(self, prefix: str = "test_") -> dict[str, float]:
        """Flat metrics for MLflow: scores, baselines and interval bounds."""
        row = self.table.iloc[0]
        out = {f"{prefix}{k}": float(row[k]) for k in ("logloss", "accuracy", "auc", "brier")}
        prior, majority = self.table.iloc[1], self.table.iloc[2]
        out.update({f"{prefix}baseline_prior_logloss": float(prior["logloss"]),
                    f"{prefix}baseline_prior_brier": float(prior["brier"]),
                    f"{prefix}baseline_majority_accuracy": float(majority["accuracy"])})
        for name, iv in (("logloss_gain", self.logloss_gain), ("accuracy_gain", self.accuracy_gain)):
            out.update({f"{prefix}{name}": iv.estimate, f"{prefix}{name}_low": iv.low,
                        f"{prefix}{name}_high": iv.high})
        return {k: v for k, v in out.items() if math.isfinite(v)}


def _logloss_terms(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return -(y * np.log(p) + (1 - y) * np.log1p(-p))


def default_block(n: int) -> int:
    """Block length ~ n^(1/3), the usual rate for block bootstraps (at least 2 days)."""
    return max(2, int(round(n ** (1 / 3))))


def block_bootstrap_indices(n: int, block: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) day indices from a circular moving-block bootstrap, seeded."""
    rng = np.random.default_rng(seed)
    n_blocks = -(-n // block)
    starts = rng.integers(0, n, size=(n_boot, n_blocks))
    idx = (starts[:, :, None] + np.arange(block)[None, None, :]) % n
    return idx.reshape(n_boot, -1)[:, :n]


def evaluate(y: np.ndarray, p: np.ndarray, y_train: np.ndarray, label: str = "model",
             n_boot: int = N_BOOT, block: int | None = None, seed: int = 0) -> Evaluation:
    """Score probabilities `p` for labels `y` beside the baselines fitted on `y_train`."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if len(y) != len(p) or len(y) < 10:
        raise ValueError(f"need at least 10 paired labels and probabilities (got {len(y)}, {len(p)})")
    rate = float(np.mean(y_train))
    majority = 1.0 if rate >= 0.5 else 0.0
    block = block or default_block(len(y))

    ll_model, ll_base = _logloss_terms(y, p), _logloss_terms(y, np.full(len(y), rate))
    hit_model = ((p > 0.5) == (y == 1)).astype(np.float64)
    hit_major = (y == majority).astype(np.float64)
    idx = block_bootstrap_indices(len(y), block, n_boot, seed)
    ll_gain = (ll_base[idx] - ll_model[idx]).mean(axis=1)
    acc_gain = (hit_model[idx] - hit_major[idx]).mean(axis=1)

    def interval(point: float, boot: np.ndarray) -> Interval:
        lo, hi = np.percentile(boot, [2.5, 97.5])
        return Interval(float(point), float(lo), float(hi))

    gain_ll = interval(float(ll_base.mean() - ll_model.mean()), ll_gain)
    gain_acc = interval(float(hit_model.mean() - hit_major.mean()), acc_gain)
    table = pd.DataFrame([
        {"model": label, "logloss": ll_model.mean(), "accuracy": hit_model.mean(),
         "auc": roc_auc(y, p), "brier": float(np.mean((p - y) ** 2))},
        {"model": f"baseline: train up-rate {rate:.3f}", "logloss": ll_base.mean(),
         "accuracy": float(np.mean((rate > 0.5) == (y == 1))), "auc": 0.5,
         "brier": float(np.mean((rate - y) ** 2))},
        {"model": f"baseline: always {'up' if majority else 'down'}", "logloss": float("nan"),
         "accuracy": hit_major.mean(), "auc": 0.5, "brier": float(np.mean((majority - y) ** 2))},
    ])
    q = np.percentile(p, [0, 5, 50, 95, 100])
    spread = {"min": q[0], "p05": q[1], "median": q[2], "p95": q[3], "max": q[4], "std": float(p.std())}
    return Evaluation(label=label, table=table, logloss_gain=gain_ll, accuracy_gain=gain_acc,
                      verdict=verdict(label, gain_ll, gain_acc), n=len(y), block=block,
                      n_boot=n_boot, seed=seed, spread={k: float(v) for k, v in spread.items()})


def verdict(label: str, logloss_gain: Interval, accuracy_gain: Interval) -> str:
    """One sentence that follows from the log-loss interval (accuracy added as context)."""
    if logloss_gain.contains_zero():
        return (f"{label}: no evidence of an edge over the baseline: log-loss gain "
                f"{logloss_gain} contains zero; accuracy gain over the majority class "
                f"{accuracy_gain}.")
    if logloss_gain.low > 0:
        return (f"{label}: an edge over the baseline: log-loss gain {logloss_gain}; "
                f"accuracy gain over the majority class {accuracy_gain}.")
    return (f"{label}: worse than the baseline: log-loss gain {logloss_gain} is below zero; "
            f"accuracy gain over the majority class {accuracy_gain}.")


def save_calibration_plots(y: np.ndarray, p: np.ndarray, out_dir: Path, prefix: str,
                           bins: int = 10) -> list[Path]:
    """Reliability diagram (predicted vs observed up-rate per bin) and prediction histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    edges = np.quantile(p, np.linspace(0, 1, bins + 1))
    edges = np.unique(edges)
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, max(len(edges) - 2, 0))
    xs, ys, ns = [], [], []
    for b in range(max(len(edges) - 1, 1)):
        m = which == b
        if m.any():
            xs.append(p[m].mean()), ys.append(y[m].mean()), ns.append(int(m.sum()))
    fig, ax = plt.subplots(figsize=(6, 6))
    lo, hi = min(min(xs), min(ys), 0.4), max(max(xs), max(ys), 0.6)
    ax.plot([lo, hi], [lo, hi], "--", color="grey", label="perfect calibration")
    ax.plot(xs, ys, "o-", label="model (equal-count bins)")
    for x_, y_, n_ in zip(xs, ys, ns):
        ax.annotate(str(n_), (x_, y_), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("mean predicted P(up)")
    ax.set_ylabel("observed up-rate")
    ax.set_title(f"Reliability: {prefix}")
    ax.legend()
    fig.tight_layout()
    rel = out_dir / f"{prefix}_reliability.png"
    fig.savefig(rel, dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(p, bins=40)
    ax.axvline(0.5, color="grey", ls="--")
    ax.set_xlabel("predicted P(up)")
    ax.set_ylabel("days")
    ax.set_title(f"Predictions: {prefix} (std {p.std():.4f})")
    fig.tight_layout()
    hist = out_dir / f"{prefix}_prediction_hist.png"
    fig.savefig(hist, dpi=100)
    plt.close(fig)
    return [rel, hist]


def format_table(ev: Evaluation, extra_rows: list[dict[str, Any]] | None = None) -> str:
    """The table as text, model rows first, baselines last, ending with the verdict."""
    rows = list(extra_rows or []) + ev.table.to_dict("records")
    seen, ordered = set(), []
    for r in rows:  # members first, then the evaluated model, then baselines; no repeats
        if r["model"] not in seen:
            seen.add(r["model"])
            ordered.append(r)
    baselines = [r for r in ordered if str(r["model"]).startswith("baseline")]
    ordered = [r for r in ordered if not str(r["model"]).startswith("baseline")] + baselines
    width = max(len(str(r["model"])) for r in ordered)
    fmt = lambda v: "-" if v != v else f"{v:.4f}"  # noqa: E731
    lines = [f"{'model':<{width}}  log loss  accuracy  AUC     Brier",
             f"{'-' * width}  --------  --------  ------  ------"]
    for r in ordered:
        lines.append(f"{str(r['model']):<{width}}  {fmt(r['logloss']):<8}  {fmt(r['accuracy']):<8}  "
                     f"{fmt(r['auc']):<6}  {fmt(r['brier'])}")
    lines.append("")
    lines.append(ev.verdict)
    return "\n".join(lines)
