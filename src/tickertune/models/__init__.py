"""The tunable models, looked up by name. Each import is lazy: xgboost and torch load
only when their model is used."""

from __future__ import annotations

from tickertune.errors import ConfigError

MODEL_NAMES = ("xgb", "transformer")


def get_model(name: str, device: str = "auto"):  # -> Model
    """Return a fresh model object for `name` ('xgb' or 'transformer')."""
    if name == "xgb":
        from tickertune.models.xgb import XGBoostModel

        return XGBoostModel()
    if name == "transformer":
        from tickertune.models.transformer import TransformerModel

        return TransformerModel(device=device)
    raise ConfigError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")
