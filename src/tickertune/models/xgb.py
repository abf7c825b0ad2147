"""Gradient-boosted trees (XGBoost) on the feature rows. Imported only when used."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb

from tickertune.metrics import classification_metrics
from tickertune.device import train_threads
from tickertune.models.base import FitResult, ParamSpace, Reporter
from tickertune.splits import Split

EARLY_STOPPING_ROUNDS = 30
MAX_ROUNDS = 600


@dataclass
class PreparedXGB:
    """DMatrices built once per study and shared (read-only) by every trial."""

    dtrain: Any
    dval: Any
    y_val: np.ndarray


class XGBoostModel:
    """XGBoost classifier; reports validation log loss after every boosting round."""

    name = "xgb"
    step_unit = "round"
    monitor = "val_logloss"
    min_resource = 10
    max_resource = MAX_ROUNDS
    fixed_choices = {"tree_method": ("hist", "approx", "exact")}  # not objective, eval_metric

    def suggest_params(self, space: ParamSpace) -> dict[str, Any]:
        return {
            "n_estimators": space.suggest_int("n_estimators", 50, MAX_ROUNDS, step=50),
            "learning_rate": space.suggest_float("learning_rate", 0.005, 0.3, log=True),
            "max_depth": space.suggest_int("max_depth", 2, 8),
            "subsample": space.suggest_float("subsample", 0.5, 1.0),
            "colsample_bytree": space.suggest_float("colsample_bytree", 0.4, 1.0),
            "gamma": space.suggest_float("gamma", 1e-8, 5.0, log=True),
            "min_child_weight": space.suggest_float("min_child_weight", 1.0, 50.0, log=True),
            "reg_alpha": space.suggest_float("reg_alpha", 1e-8, 10.0, log=True),
            "reg_lambda": space.suggest_float("reg_lambda", 1e-8, 10.0, log=True),
        }

    def fixed_params(self, seed: int) -> dict[str, Any]:
        return {
            "objective": "binary:logistic",
            "eval_metric": "logloss",
            "tree_method": "hist",
            "early_stopping_rounds": EARLY_STOPPING_ROUNDS,
            # One core is left to the tuner and the tracking writer (on 2 cores: ~5% slower
            # untracked, but tracked trials no longer fight the writer for the CPU); parallel
            # workers share the cores (device.train_threads).
            "nthread": train_threads(),
            "seed": seed,
        }

    def prepare(self, split: Split) -> PreparedXGB:
        names = split.features.names
        dtrain = xgb.DMatrix(split.X(split.train), label=split.y(split.train), feature_names=names)
        dval = xgb.DMatrix(split.X(split.val), label=split.y(split.val), feature_names=names)
        return PreparedXGB(dtrain=dtrain, dval=dval, y_val=split.y(split.val))

    def fit(self, params: dict[str, Any], prepared: PreparedXGB, reporter: Reporter) -> FitResult:
        p = dict(params)
        rounds = int(p.pop("n_estimators"))
        early = int(p.pop("early_stopping_rounds"))
        booster = xgb.train(
            {**p, "verbosity": 0},
            prepared.dtrain,
            num_boost_round=rounds,
            evals=[(prepared.dval, "validation")],
            early_stopping_rounds=early,
            callbacks=[_ReportEachRound(reporter)],
            verbose_eval=False,
        )
        best = int(booster.best_iteration)
        prob = booster.predict(prepared.dval, iteration_range=(0, best + 1))
        m = classification_metrics(prepared.y_val, prob)
        n_rounds = int(booster.num_boosted_rounds())
        metrics = {
            "val_logloss": m["logloss"],
            "val_accuracy": m["accuracy"],
            "val_auc": m["auc"],
            "best_iteration": float(best + 1),
            "n_rounds": float(n_rounds),
        }
        return FitResult(value=m["logloss"], metrics=metrics, steps=n_rounds, model=booster,
                         extra={"val_proba": prob.astype(np.float64)})

    def export(self, fit: FitResult, prepared: PreparedXGB, out_dir: Path) -> dict[str, Any]:
        """Write the booster into `out_dir`; return what `Predictor` needs to use it."""
        fit.model.save_model(str(out_dir / "model.ubj"))
        return {"weights": "model.ubj", "best_iteration": int(fit.metrics["best_iteration"])}


class Predictor:
    """A saved booster that scores feature rows (see tickertune.predictor)."""

    def __init__(self, model_dir: Path, pipeline: dict[str, Any]) -> None:
        self.booster = xgb.Booster()
        self.booster.load_model(str(Path(model_dir) / pipeline["weights"]))
        self.features = list(pipeline["features"])
        self.best_iteration = int(pipeline["best_iteration"])

    def predict_proba(self, X: pd.DataFrame) -> pd.Series:
        d = xgb.DMatrix(X[self.features].to_numpy(dtype=np.float64), feature_names=self.features)
        p = self.booster.predict(d, iteration_range=(0, self.best_iteration))
        return pd.Series(p.astype(np.float64), index=X.index, name="p_up")


class _ReportEachRound(xgb.callback.TrainingCallback):
    """Adapter from xgboost's callback protocol to our reporter (step = rounds so far)."""

    def __init__(self, reporter: Reporter) -> None:
        super().__init__()
        self._reporter = reporter

    def after_iteration(self, model: Any, epoch: int, evals_log: dict) -> bool:
        self._reporter(epoch + 1, {"val_logloss": float(evals_log["validation"]["logloss"][-1])})
        return False
