"""Predict from raw daily bars with a saved model directory (no MLflow needed).

A model directory holds `pipeline.json` (model kind, feature names, look-back, and the
kind's own fields: scaler and window for the transformer, best iteration for XGBoost)
and the weights. `BarsPredictor` runs the same feature pipeline as training, so a
model fed the bars it was trained on reproduces its training-time probabilities.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pandas as pd

from tickertune.data import bars_from_frame
from tickertune.errors import DataError
from tickertune.features import feature_matrix

PIPELINE_FILE = "pipeline.json"


class BarsPredictor:
    """Up-probabilities for daily bars from a model directory."""

    def __init__(self, model_dir: str | Path) -> None:
        self.model_dir = Path(model_dir)
        self.pipeline: dict[str, Any] = json.loads((self.model_dir / PIPELINE_FILE).read_text())
        # Relative to this package: inside a registered model it is `tickertune_bundle`.
        module = importlib.import_module(f"{__package__}.models.{self.pipeline['kind']}")
        self._model = module.Predictor(self.model_dir, self.pipeline)

    @property
    def min_bars(self) -> int:
        """Bars needed before the first probability: look-back plus window, less one."""
        return int(self.pipeline["lookback"]) + int(self.pipeline.get("window", 1)) - 1

    def predict_proba(self, bars: pd.DataFrame) -> pd.Series:
        """P(next close > close) for each bar that has enough history, indexed by date.

        Pass the full history you have: recursive indicators (RSI, MACD) start from the
        first bar given, so a longer history gives values closer to the training ones."""
        frame = bars_from_frame(bars)
        if len(frame) < self.min_bars:
            raise DataError(f"input bars: {len(frame)} bars, at least {self.min_bars} needed for one "
                            f"probability (look-back {self.pipeline['lookback']}"
                            f"{', window ' + str(self.pipeline['window']) if 'window' in self.pipeline else ''})")
        X = feature_matrix(frame)
        return self._model.predict_proba(X)
