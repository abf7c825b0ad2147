"""Across tickers: one generic configuration, how well it transfers, and groups of tickers.

- `generic_params` aggregates the per-ticker best params (results/best_params/<T>.json)
  into results/best_params/generic.json: the median (or mean) of numeric params, the most
  common value of categoricals.
- `transfer_table` fits each ticker once with its own best params and once with the
  generic ones and scores both with `tickertune.evaluation.evaluate`, the one evaluation
  function every printed score uses.
- `return_profile` and `cluster` describe each ticker's daily returns and group tickers
  with a seeded k-means, so one representative per group can be tuned.

Heavy libraries (xgboost, torch) load only when a model is used.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from tickertune.errors import ConfigError, NotFoundError
from tickertune.results import best_params_path, read_best_params

AGGREGATES = ("median", "mean")
GENERIC_FILE = "generic.json"
TRANSFER_COLUMNS = ("ticker", "own_logloss", "generic_logloss", "difference",
                    "baseline_logloss", "generic_verdict")
PROFILE_COLUMNS = ("ann_volatility", "autocorr_1", "abs_autocorr_1", "skew", "kurtosis",
                   "mean_corr")
TRADING_DAYS = 252
# Never carried from one ticker's best params to another fit: the seed is the caller's,
# the device the machine's.
_NOT_TRANSFERRED = ("seed", "device")


# --------------------------------------------------------------------------- generic params


def generic_path(results_dir: Path) -> Path:
    """Where the generic configuration lives: results_dir/best_params/generic.json."""
    return Path(results_dir) / "best_params" / GENERIC_FILE


def generic_params(tickers: Sequence[str], results_dir: Path, agg: str = "median") -> dict[str, Any]:
    """Aggregate the tickers' best params into one generic configuration per model.

    For each model present in at least one ticker's best-params file (a multi-objective
    entry contributes its Pareto point with the lowest validation log loss), each param is
    aggregated over the tickers whose entry has it:

    - categoricals (strings, bools, None, or params the model's search space declares
      "categorical", such as the transformer's window or d_model) take the most common
      value; a tie goes to the value seen first in the order of `tickers`;
    - numbers take the median or the mean (`agg`); the result is rounded (half up) to an
      int when the search space declares the param "int", or, for params outside the
      search space (fixed settings), when every input was an int.

    Params of a conditional branch the generic configuration does not take (e.g. the
    transformer's `step_size` when the generic scheduler is not "step") are dropped.

    Writes results_dir/best_params/generic.json atomically and returns its content:
    {"tickers", "agg", "updated_at", "models": {model: {"params", "n_tickers", "sources"}}},
    where sources maps each contributing ticker to its best validation value.
    """
    if agg not in AGGREGATES:
        raise ConfigError(f"--agg {agg!r} is not an aggregate; use {' or '.join(AGGREGATES)}")
    names = _normalise_tickers(tickers)

    docs: dict[str, dict[str, Any]] = {}
    for t in names:
        doc = read_best_params(results_dir, t)
        if doc is None:
            raise NotFoundError(
                f"no best params for {t} ({best_params_path(results_dir, t)}); "
                f"run `tickertune tune {t}` first"
            )
        docs[t] = doc

    model_names: list[str] = []
    for t in names:
        for m in docs[t].get("models", {}):
            if m not in model_names:
                model_names.append(m)

    models: dict[str, Any] = {}
    for m in model_names:
        entries = {t: docs[t]["models"][m] for t in names if m in docs[t].get("models", {})}
        resolved = {t: _entry_params_value(e) for t, e in entries.items()}
        models[m] = {
            "params": _aggregate_model(m, {t: pv[0] for t, pv in resolved.items()}, agg),
            "n_tickers": len(entries),
            "sources": {t: pv[1] for t, pv in resolved.items()},
        }

    out = {
        "tickers": names,
        "agg": agg,
        "updated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "models": models,
    }
    _write_json_atomic(generic_path(results_dir), out)
    return out


def _entry_params_value(entry: dict[str, Any]) -> tuple[dict[str, Any], float | None]:
    """(params, best validation value) of one model's best-params entry.

    A multi-objective study stores a Pareto front instead of one best trial; its point
    with the lowest validation log loss (the first objective) stands for the ticker."""
    if "params" not in entry and entry.get("pareto_front"):
        point = min(entry["pareto_front"], key=lambda p: p["values"][0])
        return dict(point.get("params", {})), point["values"][0]
    return dict(entry.get("params", {})), entry.get("best_value")


def _normalise_tickers(tickers: Sequence[str]) -> list[str]:
    """Upper-case, strip, drop repeats (first kept); at least one ticker."""
    if isinstance(tickers, str):
        tickers = [tickers]
    names: list[str] = []
    for t in tickers:
        t = str(t).strip().upper()
        if t and t not in names:
            names.append(t)
    if not names:
        raise ConfigError("no tickers given")
    return names


def _search_space(model: str) -> dict[str, tuple]:
    """The model's declared params (kind and range); empty for a model we do not know."""
    from tickertune.models import get_model
    from tickertune.tuning import search_space

    try:
        return search_space(get_model(model, device="cpu"))
    except (ConfigError, ImportError):
        return {}


def _is_categorical_value(v: Any) -> bool:
    return v is None or isinstance(v, (str, bool)) or not isinstance(v, (int, float))


def _mode(values: list[Any]) -> Any:
    """Most common value; ties go to the value that appears first in `values`."""
    counts: dict[str, int] = {}
    first: dict[str, Any] = {}
    for v in values:
        key = json.dumps(v, sort_keys=True)  # hashable and keeps 1 and True apart
        counts[key] = counts.get(key, 0) + 1
        first.setdefault(key, v)
    best = max(counts.values())
    return next(first[k] for k in first if counts[k] == best)  # dicts keep insertion order


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _aggregate_param(values: list[Any], decl: tuple | None, agg: str) -> Any:
    kind = decl[0] if decl else None
    if kind == "categorical" or any(_is_categorical_value(v) for v in values):
        return _mode(values)
    arr = np.asarray(values, dtype=np.float64)
    value = float(np.median(arr) if agg == "median" else np.mean(arr))
    if kind == "int" or (kind is None and all(isinstance(v, int) for v in values)):
        return _round_half_up(value)
    return value


class _ReplaySpace:
    """A ParamSpace that answers with given values and records which names were asked:
    replaying a model's `suggest_params` tells which conditional params are active."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values
        self.asked: set[str] = set()

    def _answer(self, name: str, default: Any) -> Any:
        self.asked.add(name)
        return self.values.get(name, default)

    def suggest_float(self, name: str, low: float, high: float, **kw: Any) -> float:
        return self._answer(name, low)

    def suggest_int(self, name: str, low: int, high: int, **kw: Any) -> int:
        return self._answer(name, low)

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self._answer(name, list(choices)[0])


def _aggregate_model(model: str, per_ticker: dict[str, dict[str, Any]], agg: str) -> dict[str, Any]:
    """Aggregate one model's params over tickers (ticker order = dict order)."""
    decls = _search_space(model)
    order: list[str] = []
    for params in per_ticker.values():
        for k in params:
            if k not in order and k not in _NOT_TRANSFERRED:
                order.append(k)
    out = {k: _aggregate_param([p[k] for p in per_ticker.values() if k in p], decls.get(k), agg)
           for k in order}
    if decls:  # drop params of conditional branches the generic configuration does not take
        from tickertune.models import get_model

        replay = _ReplaySpace(out)
        get_model(model, device="cpu").suggest_params(replay)
        out = {k: v for k, v in out.items() if k in replay.asked or k not in decls}
    return out


def _write_json_atomic(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- transfer table


def _no_op_reporter(step: int, metrics: dict[str, float]) -> None:
    """Fits here are not pruned or tracked."""


def transfer_table(
    tickers: Sequence[str],
    results_dir: Path,
    generic: dict[str, Any],
    model: str = "xgb",
    seed: int = 42,
    start: str | None = None,
    end: str | None = None,
    data: str = "sample",
    n_boot: int = 200,
    device: str = "auto",
) -> pd.DataFrame:
    """Own-best versus generic params, ticker by ticker, on the validation segment.

    For each ticker: load its bars, build the features, split chronologically, prepare
    the model once, then fit once with the ticker's own best params and once with the
    generic params of `model` (each merged over `model.fixed_params(seed)`; stored seeds
    and devices are not carried over). Both fits' validation probabilities are scored by
    `tickertune.evaluation.evaluate` against the validation labels, with the baselines
    fitted on the training labels (`n_boot` bootstrap resamples, seeded).

    Scores are measured on the VALIDATION segment, the one the params were tuned on:
    own-best params have had that advantage, and the test segment stays untouched.

    Columns: ticker, own_logloss, generic_logloss, difference (generic - own; positive:
    the generic params are worse), baseline_logloss (the training up-rate as forecast)
    and generic_verdict (the evaluation verdict of the generic fit).
    """
    from tickertune.data import load_bars
    from tickertune.evaluation import evaluate
    from tickertune.features import build_features
    from tickertune.models import get_model
    from tickertune.splits import chronological_split

    names = _normalise_tickers(tickers)
    gen_models = generic.get("models") if isinstance(generic, dict) else None
    if not isinstance(gen_models, dict) or model not in gen_models:
        raise ConfigError(f"the generic configuration has no {model} params; "
                          f"run generic-params on tickers tuned with --model {model}")
    generic_own = _transferable(gen_models[model].get("params", {}))

    rows = []
    for t in names:
        doc = read_best_params(results_dir, t)
        if doc is None or model not in doc.get("models", {}):
            raise NotFoundError(f"no {model} best params for {t}; run "
                                f"`tickertune tune {t} --model {model}` first")
        own = _transferable(_entry_params_value(doc["models"][model])[0])

        bars = load_bars(t, data, start, end)
        split = chronological_split(build_features(bars.frame), source=bars.source)
        m = get_model(model, device=device)
        prepared = m.prepare(split)
        fixed = m.fixed_params(seed)
        y_val, y_train = split.y(split.val), split.y(split.train)

        scores = {}
        for which, params in (("own", own), ("generic", generic_own)):
            fit = m.fit({**fixed, **params}, prepared, _no_op_reporter)
            scores[which] = evaluate(y_val, fit.extra["val_proba"], y_train,
                                     label=f"{t} {model} {which} params (validation)",
                                     n_boot=n_boot, seed=seed)
        own_ll = float(scores["own"].table.iloc[0]["logloss"])
        gen_ll = float(scores["generic"].table.iloc[0]["logloss"])
        rows.append({
            "ticker": t,
            "own_logloss": own_ll,
            "generic_logloss": gen_ll,
            "difference": gen_ll - own_ll,
            "baseline_logloss": float(scores["generic"].table.iloc[1]["logloss"]),
            "generic_verdict": scores["generic"].verdict,
        })
    return pd.DataFrame(rows, columns=list(TRANSFER_COLUMNS))


def _transferable(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k not in _NOT_TRANSFERRED}


# --------------------------------------------------------------------------- clustering


def return_profile(
    tickers: Sequence[str],
    start: str | None = None,
    end: str | None = None,
    data: str = "sample",
) -> pd.DataFrame:
    """Return behaviour of each ticker from its daily log returns (bundled sample by default).

    Columns (index = ticker): ann_volatility (std * sqrt(252)), autocorr_1 (lag-1
    autocorrelation of returns), abs_autocorr_1 (lag-1 autocorrelation of absolute
    returns: volatility clustering), skew, kurtosis (excess), mean_corr (mean correlation
    of its returns with each other ticker's, on their common dates; NaN for one ticker).
    """
    from tickertune.data import load_bars

    names = _normalise_tickers(tickers)
    returns = {}
    for t in names:
        close = load_bars(t, data, start, end).frame["close"]
        returns[t] = np.log(close).diff().dropna()
    wide = pd.DataFrame(returns)  # aligned on the union of dates; NaN where a ticker has none
    corr = wide.corr(min_periods=2)  # pairwise: each pair on its common dates

    rows = []
    for t in names:
        r = returns[t]
        others = [corr.loc[t, o] for o in names if o != t]
        rows.append({
            "ticker": t,
            "ann_volatility": float(r.std() * math.sqrt(TRADING_DAYS)),
            "autocorr_1": float(r.autocorr(1)),
            "abs_autocorr_1": float(r.abs().autocorr(1)),
            "skew": float(r.skew()),
            "kurtosis": float(r.kurt()),
            "mean_corr": float(np.nanmean(others)) if others and not np.all(np.isnan(others))
            else float("nan"),
        })
    return pd.DataFrame(rows).set_index("ticker")[list(PROFILE_COLUMNS)]


@dataclass(frozen=True)
class Cluster:
    """A group of tickers with similar return behaviour.

    members: tickers in the order given; representative: the member closest to the
    centroid (the one to tune for the group); centroid: feature -> value in standardised
    units (0 = the average ticker, 1 = one standard deviation across tickers)."""

    members: list[str]
    representative: str
    centroid: dict[str, float]


def standardise(profile: pd.DataFrame) -> pd.DataFrame:
    """Z-scores per column; a constant or undefined column becomes 0."""
    X = profile.astype(np.float64)
    std = X.std(ddof=0).replace(0.0, np.nan)
    return ((X - X.mean()) / std).fillna(0.0)


def cluster(
    tickers: Sequence[str],
    k: int = 2,
    seed: int = 0,
    start: str | None = None,
    end: str | None = None,
    data: str = "sample",
    n_init: int = 10,
) -> list[Cluster]:
    """Group tickers by return behaviour with a seeded k-means on standardised profiles.

    Deterministic for a given seed: k-means++ initialisation from `numpy.random
    .default_rng(seed)`, `n_init` restarts, the lowest within-cluster sum of squares wins
    (ties: the earliest restart). Clusters are ordered by their first member in the order
    of `tickers`. k must be 1..len(tickers).
    """
    names = _normalise_tickers(tickers)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(names):
        raise ConfigError(f"--k {k!r}: choose a whole number from 1 to {len(names)} "
                          f"(the number of tickers)")
    Z = standardise(return_profile(names, start, end, data))
    X = Z.to_numpy()
    labels, centroids = kmeans(X, int(k), seed=seed, n_init=n_init)

    clusters = []
    for c in sorted(set(labels.tolist()), key=lambda c: int(np.flatnonzero(labels == c)[0])):
        idx = np.flatnonzero(labels == c)
        dist = np.linalg.norm(X[idx] - centroids[c], axis=1)
        rep = names[int(idx[int(np.argmin(dist))])]  # argmin: ties go to the first member
        clusters.append(Cluster(members=[names[i] for i in idx], representative=rep,
                                centroid={col: float(v) for col, v in zip(Z.columns, centroids[c])}))
    return clusters


def kmeans(X: np.ndarray, k: int, seed: int = 0, n_init: int = 10,
           max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with k-means++ starts; returns (labels, centroids) of the best restart."""
    X = np.asarray(X, dtype=np.float64)
    n = len(X)
    if not 1 <= k <= n:
        raise ConfigError(f"k={k} must be between 1 and the number of points ({n})")
    rng = np.random.default_rng(seed)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for _ in range(max(1, n_init)):
        centroids = _kmeans_pp(X, k, rng)
        labels = np.full(n, -1)
        for _ in range(max_iter):
            d2 = ((X[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
            new = d2.argmin(axis=1)
            for c in range(k):  # an empty cluster takes the point farthest from its centre
                if not np.any(new == c):  # among clusters that can spare one (k <= n)
                    sizes = np.bincount(new, minlength=k)
                    spare = np.where(sizes[new] > 1, d2[np.arange(n), new], -1.0)
                    new[int(spare.argmax())] = c
            if np.array_equal(new, labels):
                break
            labels = new
            centroids = np.stack([X[labels == c].mean(axis=0) for c in range(k)])
        inertia = float(((X - centroids[labels]) ** 2).sum())
        if best is None or inertia < best[0] - 1e-12:
            best = (inertia, labels.copy(), centroids.copy())
    assert best is not None
    return best[1], best[2]


def _kmeans_pp(X: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++: first centre uniform, each next one with probability ~ squared distance."""
    n = len(X)
    chosen = [int(rng.integers(n))]
    for _ in range(1, k):
        d2 = ((X[:, None, :] - X[chosen][None, :, :]) ** 2).sum(axis=2).min(axis=1)
        total = d2.sum()
        if total > 0:
            chosen.append(int(rng.choice(n, p=d2 / total)))
        else:  # every point sits on a chosen centre: take any point not chosen yet
            rest = [i for i in range(n) if i not in chosen]
            chosen.append(int(rng.choice(rest)))
    return X[chosen].copy()
