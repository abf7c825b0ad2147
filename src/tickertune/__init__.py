"""tickertune: per-ticker hyperparameter tuning with Optuna, tracked in MLflow.

Heavy libraries (xgboost, torch, mlflow, optuna) are imported lazily by the modules
that need them, so importing this package and `tickertune --help` stay instant.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_model", "load_ensemble"]


def load_model(ticker: str, model: str = "transformer", alias: str = "rank-1",
               tracking_uri: str | None = None):
    """Load `tickertune-<TICKER>-<model>@<alias>` from the MLflow registry.

    Returns an object with `predict_proba(bars_df) -> pandas.Series` of up-probabilities
    indexed by date (see tickertune.ensemble.LoadedModel)."""
    from tickertune.ensemble import load_model as _load

    return _load(ticker, model, alias, tracking_uri)


def load_ensemble(ticker: str, top_k: int = 3, include_xgb: bool = False,
                  tracking_uri: str | None = None):
    """The mean of the registered transformer checkpoints rank-1..k (and the best XGBoost).

    Returns an object with `predict_proba(bars_df)` and `.members`."""
    from tickertune.ensemble import load_ensemble as _load

    return _load(ticker, top_k, include_xgb, tracking_uri)
