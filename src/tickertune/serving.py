"""Registered models as MLflow pyfunc models that predict from raw daily bars.

`save_model_dir` writes a self-describing model directory (pipeline.json, weights,
the training-time validation probabilities); `log_bars_model` logs it as a pyfunc
model with a signature, an input example and explicit pip requirements (inferring
them costs 5-13 s a call). The pyfunc takes a DataFrame of bars and returns a
DataFrame of (date, p_up).

The model carries its own copy of tickertune's code as the package
`tickertune_bundle` (a models-from-code pyfunc; no pickled classes). The new name
matters: MLflow drops already-imported modules that share a name with a model's code,
so a bundle named `tickertune` would swap the running tickertune for the model's copy.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib.metadata
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from tickertune.features import LOOKBACK
from tickertune.predictor import PIPELINE_FILE, BarsPredictor

PACKAGE_DIR = Path(__file__).resolve().parent
BUNDLE = "tickertune_bundle"
_IMPORT = re.compile(r"^(\s*)(from|import) tickertune\b", re.M)
_MODEL_CODE = """import mlflow
from {bundle}.serving import {cls}

mlflow.models.set_model({cls}())
"""


class BarsModel(mlflow.pyfunc.PythonModel):
    """pyfunc: DataFrame of daily bars (date, open, high, low, close, volume) -> (date, p_up)."""

    def load_context(self, context: Any) -> None:
        self.predictor = BarsPredictor(context.artifacts["model_dir"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        p = self.predictor.predict_proba(model_input)
        return pd.DataFrame({"date": p.index, "p_up": p.to_numpy()})


class EnsembleModel(mlflow.pyfunc.PythonModel):
    """pyfunc: the mean up-probability of its members, on the dates all of them cover."""

    def load_context(self, context: Any) -> None:
        keys = sorted((k for k in context.artifacts if k.startswith("member_")), key=lambda k: int(k[7:]))
        self.members = [BarsPredictor(context.artifacts[k]) for k in keys]

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        p = mean_proba([m.predict_proba(model_input) for m in self.members])
        return pd.DataFrame({"date": p.index, "p_up": p.to_numpy()})


def mean_proba(members: list[pd.Series]) -> pd.Series:
    """Average member probabilities on the dates every member covers."""
    frame = pd.concat(members, axis=1, join="inner")
    return pd.Series(frame.to_numpy().mean(axis=1), index=frame.index, name="p_up")


def save_model_dir(out_dir: Path, kind: str, exported: dict[str, Any], meta: dict[str, Any],
                   val_dates: pd.DatetimeIndex, val_proba: np.ndarray) -> Path:
    """Write pipeline.json and the training-time validation probabilities into out_dir."""
    pipeline = {"kind": kind, "lookback": LOOKBACK, **meta, **exported}
    (out_dir / PIPELINE_FILE).write_text(json.dumps(pipeline, indent=2, default=str))
    pd.DataFrame({"date": val_dates, "p_up": val_proba}).to_csv(out_dir / "val_predictions.csv", index=False)
    return out_dir


@functools.lru_cache(maxsize=1)
def _bundle() -> Path:
    """tickertune's code as the package `tickertune_bundle` (no sample data), made once per
    process; returns the folder holding the bundle and the two model-code files."""
    root = Path(tempfile.mkdtemp(prefix="tickertune-bundle-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    dst = root / BUNDLE
    shutil.copytree(PACKAGE_DIR, dst, ignore=shutil.ignore_patterns("__pycache__", "sample_data"))
    for py in dst.rglob("*.py"):
        py.write_text(_IMPORT.sub(rf"\1\2 {BUNDLE}", py.read_text()))
    for cls in ("BarsModel", "EnsembleModel"):
        (root / f"{cls}.py").write_text(_MODEL_CODE.format(bundle=BUNDLE, cls=cls))
    sys.path.append(str(root))  # MLflow imports the model code once while logging it
    return root


def pip_requirements(kind: str) -> list[str]:
    """Pinned requirements of a model of `kind` (explicit: inference would cost seconds)."""
    libs = ["mlflow", "numpy", "pandas", "xgboost", "torch"]
    if kind == "xgb":
        libs.remove("torch")
    elif kind == "transformer":
        libs.remove("xgboost")
    return [f"{lib}=={importlib.metadata.version(lib).split('+')[0]}" for lib in libs]


def log_bars_model(run_id: str, artifacts: dict[str, str], model_class: type,
                   input_example: pd.DataFrame, kinds: set[str], name: str = "model") -> Any:
    """Log a `BarsModel` or `EnsembleModel` pyfunc to `run_id`; returns MLflow's ModelInfo
    (register its `model_uri`)."""
    from mlflow.models import Model, infer_signature

    probe = model_class()  # this process's own code computes the output for the signature
    probe.load_context(_Context(artifacts))
    output = probe.predict(None, input_example)
    reqs = sorted({r for k in kinds for r in pip_requirements(k)})
    root = _bundle()
    exp_id = mlflow.tracking.MlflowClient().get_run(run_id).info.experiment_id
    with _active_experiment(exp_id):
        return Model.log(
            artifact_path=None, name=name, flavor=mlflow.pyfunc, run_id=run_id,
            python_model=str(root / f"{model_class.__name__}.py"), artifacts=artifacts,
            code_paths=[str(root / BUNDLE)], signature=infer_signature(input_example, output),
            input_example=input_example, pip_requirements=reqs,
        )


@contextlib.contextmanager
def _active_experiment(experiment_id: str):
    """MLflow 3.17 puts a LoggedModel in the *active* experiment, not its run's: make the run's
    experiment active for the call, then restore the previous state (global and env var)."""
    from mlflow.tracking import fluent

    before_global = fluent._active_experiment_id
    before_env = os.environ.get("MLFLOW_EXPERIMENT_ID")
    mlflow.set_experiment(experiment_id=experiment_id)
    try:
        yield
    finally:
        fluent._active_experiment_id = before_global
        if before_env is None:
            os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
        else:
            os.environ["MLFLOW_EXPERIMENT_ID"] = before_env


class _Context:
    def __init__(self, artifacts: dict[str, str]) -> None:
        self.artifacts = artifacts


def example_bars(bars: pd.DataFrame, n: int) -> pd.DataFrame:
    """The last `n` bars as the model's input example (a date column, float prices)."""
    return bars.tail(n).reset_index()
