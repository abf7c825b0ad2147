"""tickertune: per-ticker hyperparameter tuning with Optuna, tracked in MLflow.

Heavy libraries (xgboost, torch, mlflow, optuna) are imported lazily by the modules
that need them, so importing this package and `tickertune --help` stay instant.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
