"""The best-params file of a ticker: results/best_params/<TICKER>.json.

One entry per model (best params, value, trial number, study name, trial count,
timestamp); entries of other models are kept when one model is re-tuned. Written
atomically, so a reader never sees half a file.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def best_params_path(results_dir: Path, ticker: str) -> Path:
    return Path(results_dir) / "best_params" / f"{ticker.upper()}.json"


def read_best_params(results_dir: Path, ticker: str) -> dict[str, Any] | None:
    """The parsed file, or None when the ticker was never tuned here."""
    path = best_params_path(results_dir, ticker)
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def write_best_params(results_dir: Path, ticker: str, entries: dict[str, dict[str, Any]]) -> Path:
    """Merge `entries` (model -> best entry) into the ticker's file and write it atomically."""
    path = best_params_path(results_dir, ticker)
    doc = read_best_params(results_dir, ticker) or {}
    models = dict(doc.get("models", {}))
    models.update(entries)
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    doc = {"ticker": ticker.upper(), "updated_at": now, "models": models}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2, sort_keys=False)
        fh.write("\n")
    os.replace(tmp, path)
    return path


def best_entry(study: Any, metric: str = "val_logloss") -> dict[str, Any] | None:
    """The best-params entry of an Optuna study, or None if no trial completed."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not complete:
        return None
    if len(study.directions) > 1:  # no single best: the Pareto front
        return {
            "study_name": study.study_name,
            "metric": ["val_logloss", "train_seconds"],
            "pareto_front": [{"trial": t.number, "values": list(t.values), "params": _params(t),
                              "mlflow_run_id": t.user_attrs.get("mlflow_run_id")}
                             for t in sorted(study.best_trials, key=lambda t: t.values[0])],
            "n_trials": len(study.get_trials(deepcopy=False)),
            "n_complete": len(complete),
            "data_fingerprint": study.user_attrs.get("data_fingerprint"),
            "updated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
    best = study.best_trial
    params = _params(best)
    return {
        "study_name": study.study_name,
        "metric": metric,
        "best_value": best.value,
        "best_trial": best.number,
        "params": params,
        "n_trials": len(study.get_trials(deepcopy=False)),
        "n_complete": len(complete),
        "mlflow_run_id": best.user_attrs.get("mlflow_run_id"),
        "data_fingerprint": study.user_attrs.get("data_fingerprint"),
        "updated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _params(trial: Any) -> dict[str, Any]:
    """A trial's sampled params plus the ones fixed with --set."""
    params = dict(trial.params)
    fixed = trial.user_attrs.get("fixed_params")
    if fixed:
        params.update(json.loads(fixed))
    return params
