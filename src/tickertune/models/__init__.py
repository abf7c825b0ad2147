"""The tunable models, looked up by name. Each import is lazy: xgboost and torch load
only when their model is used."""

from __future__ import annotations

from tickertune.errors import ConfigError

MODEL_NAMES = ("xgb",)


def get_model(name: str):  # -> Model
    """Return a fresh model object for `name` ('xgb')."""
    if name == "xgb":
        from tickertune.models.xgb import XGBoostModel

        return XGBoostModel()
    raise ConfigError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")
