"""Registered models by alias, alone or averaged, scored on the held-out test segment.

The test segment is rebuilt from what the study recorded (data source, date range,
split dates), so it is exactly the segment tuning never saw. The score table always
carries the two honest baselines.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tickertune.errors import ConfigError, NotFoundError
from tickertune.evaluation import N_BOOT, Evaluation, evaluate, format_table, save_calibration_plots
from tickertune.registry import ALIAS, registered_name

log = logging.getLogger("tickertune")


class LoadedModel:
    """A registered model loaded by alias; `predict_proba(bars)` gives P(up) per date."""

    def __init__(self, name: str, alias: str, version: str, tags: dict[str, str], pyfunc: Any,
                 model_dir: Path) -> None:
        self.name, self.alias, self.version, self.tags = name, alias, version, tags
        self.pyfunc = pyfunc
        self.model_dir = model_dir

    @property
    def label(self) -> str:
        return f"{self.name}@{self.alias}"

    def predict_proba(self, bars: pd.DataFrame) -> pd.Series:
        """Up-probability for every bar with enough history, indexed by date."""
        out = self.pyfunc.predict(_as_input(bars))
        return pd.Series(out["p_up"].to_numpy(dtype=np.float64),
                         index=pd.DatetimeIndex(out["date"], name="date"), name=self.label)


class Ensemble:
    """The mean up-probability of its members, on the dates all of them cover."""

    def __init__(self, members: list[LoadedModel]) -> None:
        if not members:
            raise NotFoundError("an ensemble needs at least one member")
        self.members = members

    def predict_proba(self, bars: pd.DataFrame) -> pd.Series:
        from tickertune.serving import mean_proba

        return mean_proba([m.predict_proba(bars) for m in self.members]).rename("ensemble")


def _as_input(bars: pd.DataFrame) -> pd.DataFrame:
    """The pyfunc's input: checked bars (any common header spelling, a date column or a
    DatetimeIndex) as a 'date' column and float price columns."""
    from tickertune.data import bars_from_frame

    return bars_from_frame(bars).reset_index()


def _client(tracking_uri: str | None):
    from tickertune.tracking import check_reachable, quiet_mlflow

    quiet_mlflow()
    import mlflow
    from mlflow.tracking import MlflowClient

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        # a lookup must not leave an empty store behind
        raise NotFoundError(f"no MLflow store at {uri[len('sqlite:///'):]}; run: tickertune tune TICKER")
    # A server that is down would cost minutes of MLflow's retries, then a misleading
    # "no registered model": say what is wrong within seconds instead.
    check_reachable(uri, fallback=None)
    return MlflowClient()


def load_model(ticker: str, model: str = "transformer", alias: str = "rank-1",
               tracking_uri: str | None = None) -> LoadedModel:
    """Load `tickertune-<TICKER>-<model>@<alias>` from the MLflow model registry."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if model not in ("transformer", "xgb", "ensemble"):
        raise ConfigError(f"unknown model {model!r}; choose from transformer, xgb, ensemble")
    client = _client(tracking_uri)
    name = registered_name(ticker, model)
    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        raise NotFoundError(f"no registered model {name}@{alias} in {mlflow.get_tracking_uri()}; "
                            f"run: tickertune tune {ticker.upper()} --model {model}") from None
    uri = f"models:/{name}/{mv.version}"
    tmp = tempfile.TemporaryDirectory(prefix="tt-model-")  # removed with the LoadedModel
    local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=tmp.name))
    pyfunc = mlflow.pyfunc.load_model(str(local))
    model_dir = next(local.rglob("pipeline.json"), local).parent
    loaded = LoadedModel(name, alias, str(mv.version), dict(mv.tags or {}), pyfunc, model_dir)
    loaded._tmp = tmp
    return loaded


def load_ensemble(ticker: str, top_k: int = 3, include_xgb: bool = False,
                  tracking_uri: str | None = None) -> Ensemble:
    """The registered transformer checkpoints rank-1 ... rank-k (and the best XGBoost)."""
    members = []
    for i in range(1, top_k + 1):
        try:
            members.append(load_model(ticker, "transformer", ALIAS.format(i), tracking_uri))
        except NotFoundError:
            if i == 1 and not include_xgb:
                raise
            break
    if include_xgb:
        members.append(load_model(ticker, "xgb", "rank-1", tracking_uri))
    if not members:
        raise NotFoundError(f"no registered models for {ticker.upper()}")
    return Ensemble(members)


@dataclass
class HeldOutSegment:
    """The held-out test rows of a study, rebuilt from what the study recorded."""

    bars: pd.DataFrame
    dates: pd.DatetimeIndex
    y: np.ndarray
    y_train: np.ndarray
    split_dates: dict[str, str]
    data_fingerprint: str


def held_out_segment(ticker: str, storage_url: str, study_names: list[str]) -> HeldOutSegment:
    """Rebuild the test segment from the first of `study_names` found in the storage."""
    import optuna

    from tickertune.data import load_bars
    from tickertune.features import build_features
    from tickertune.splits import chronological_split
    from tickertune.storage import make_storage

    if storage_url.startswith("sqlite:///") and not Path(storage_url[10:]).is_file():
        raise NotFoundError(f"no study database at {storage_url[10:]}; run: tickertune tune {ticker}")
    storage = make_storage(storage_url)
    attrs = None
    for name in study_names:
        try:
            attrs = optuna.load_study(study_name=name, storage=storage).user_attrs
            break
        except KeyError:
            continue
    if attrs is None:
        raise NotFoundError(f"none of the studies {', '.join(study_names)} is in {storage_url}")
    bars = load_bars(ticker, attrs.get("data_spec", "sample"), attrs.get("start") or None,
                     attrs.get("end") or None)
    split = chronological_split(build_features(bars.frame), source=bars.source)
    dates = split.dates()
    recorded = {k: attrs.get(k) for k in dates}
    if recorded != dates:
        raise ConfigError(f"the data no longer gives the study's split ({recorded} recorded, "
                          f"{dates} now); was the CSV changed?")
    fs = split.features
    return HeldOutSegment(bars=bars.frame, dates=fs.dates[split.test.rows], y=split.y(split.test),
                       y_train=split.y(split.train), split_dates=dates,
                       data_fingerprint=bars.fingerprint)


def _aligned(seg: HeldOutSegment, label: str, p: pd.Series) -> np.ndarray:
    aligned = p.reindex(seg.dates)
    if aligned.isna().any():
        raise ConfigError(f"{label} gives no probability for {int(aligned.isna().sum())} test days")
    return aligned.to_numpy(dtype=np.float64)


@dataclass
class EvaluationReport:
    """The evaluated model (or ensemble) on the test segment, its members, and the run."""

    evaluation: Evaluation
    table: pd.DataFrame  # members (if any), the evaluated model, then the two baselines
    members: list[LoadedModel]
    probs: dict[str, pd.Series]
    n_test: int
    split_dates: dict[str, str]
    run_id: str | None = None
    registered_version: str | None = None

    def text(self) -> str:
        sp = self.evaluation.spread
        return (format_table(self.evaluation, self.table.to_dict("records")) +
                f"\npredicted P(up) spread: min {sp['min']:.4f}, 5% {sp['p05']:.4f}, median "
                f"{sp['median']:.4f}, 95% {sp['p95']:.4f}, max {sp['max']:.4f} (std {sp['std']:.4f})")


def evaluate_registered(
    ticker: str,
    storage_url: str,
    model: str = "ensemble",
    alias: str = "rank-1",
    top_k: int = 3,
    include_xgb: bool = False,
    register: bool = False,
    n_boot: int = N_BOOT,
    seed: int = 0,
    tracking_uri: str | None = None,
    experiment: str = "tickertune",
) -> EvaluationReport:
    """Score a registered model (or the ensemble of the top-k) on the held-out test segment,
    with baselines, bootstrap intervals and a verdict, logged as an MLflow run."""
    ticker = ticker.upper()
    if model == "ensemble":
        members = load_ensemble(ticker, top_k, include_xgb, tracking_uri).members
        label = "ensemble (mean)"
    elif model in ("transformer", "xgb"):
        members = [load_model(ticker, model, alias, tracking_uri)]
        label = members[0].label
    else:
        raise ConfigError(f"unknown model {model!r}; choose from transformer, xgb, ensemble")
    seg = held_out_segment(ticker, storage_url, [f"transformer_tuning_{ticker}", f"xgb_tuning_{ticker}"])
    probs = {m.label: m.predict_proba(seg.bars) for m in members}
    rows = []
    if model == "ensemble":
        probs[label] = Ensemble(members).predict_proba(seg.bars)
        rows = [evaluate(seg.y, _aligned(seg, m.label, probs[m.label]), seg.y_train, m.label,
                         n_boot=n_boot, seed=seed).table.iloc[0].to_dict() for m in members]
    ev = evaluate(seg.y, _aligned(seg, label, probs[label]), seg.y_train, label, n_boot=n_boot, seed=seed)
    table = pd.DataFrame(rows + ev.table.to_dict("records"))
    report = EvaluationReport(evaluation=ev, table=table, members=members, probs=probs,
                              n_test=len(seg.y), split_dates=seg.split_dates)
    report.run_id, report.registered_version = _log_evaluation(ticker, model, seg, report, register,
                                                               experiment)
    return report


def evaluate_ensemble(ticker: str, storage_url: str, top_k: int = 3, include_xgb: bool = False,
                      register: bool = False, tracking_uri: str | None = None,
                      experiment: str = "tickertune", n_boot: int = N_BOOT, seed: int = 0) -> EvaluationReport:
    """The ensemble of the registered top-k (and the best XGBoost) on the test segment."""
    return evaluate_registered(ticker, storage_url, "ensemble", top_k=top_k, include_xgb=include_xgb,
                               register=register, n_boot=n_boot, seed=seed,
                               tracking_uri=tracking_uri, experiment=experiment)


def _metric_key(label: str) -> str:
    key = "".join(c if c.isalnum() or c in "._-/" else "_" for c in label)
    return re.sub("_+", "_", key).strip("_")


def _log_evaluation(ticker: str, model: str, seg: HeldOutSegment, report: EvaluationReport,
                    register: bool, experiment: str) -> tuple[str, str | None]:
    import contextlib
    import io

    import mlflow
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    from tickertune.tracking import closing_run, experiment_id

    ev = report.evaluation
    client = MlflowClient()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    kind = "ensemble" if model == "ensemble" else "evaluation"
    run = client.create_run(experiment_id(client, experiment),
                            run_name=f"{kind}-{ticker}-{model}-{stamp}",
                            tags={"kind": kind, "ticker": ticker, "model": model,
                                  "data_fingerprint": seg.data_fingerprint})
    rid = run.info.run_id
    version = None
    with closing_run(client, rid):
        ts = int(dt.datetime.now().timestamp() * 1000)
        metrics = [Metric(k, v, ts, 0) for k, v in ev.metrics("test_").items()]
        for row in report.table.to_dict("records"):
            if row["model"] == ev.label or str(row["model"]).startswith("baseline"):
                continue
            for name in ("logloss", "accuracy", "auc", "brier"):
                if np.isfinite(row[name]):
                    key = f"member.{_metric_key(row['model'])}.test_{name}"
                    metrics.append(Metric(key, float(row[name]), ts, 0))
        params = [Param("model", model),
                  Param("members", ", ".join(f"{m.label} (v{m.version})" for m in report.members)[:6000]),
                  Param("n_test_days", str(ev.n)), Param("bootstrap_block_days", str(ev.block)),
                  Param("bootstrap_resamples", str(ev.n_boot)), Param("bootstrap_seed", str(ev.seed))]
        params += [Param(k, v) for k, v in seg.split_dates.items()]
        tags = [RunTag("verdict", ev.verdict), RunTag("members", json.dumps([m.label for m in report.members]))]
        client.log_batch(rid, metrics=metrics, params=params, tags=tags)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            report.table.to_csv(out / "test_scores.csv", index=False)
            (out / "verdict.txt").write_text(report.text() + "\n")
            y, p = seg.y, _aligned(seg, ev.label, report.probs[ev.label])
            files = [out / "test_scores.csv", out / "verdict.txt"]
            files += save_calibration_plots(y, p, out / "calibration", _metric_key(ev.label))
            for f in files:
                client.log_artifact(rid, str(f), "calibration" if f.suffix == ".png" else None)
        if register and model == "ensemble":
            from tickertune.serving import EnsembleModel, example_bars, log_bars_model

            artifacts = {f"member_{i}": str(m.model_dir) for i, m in enumerate(report.members)}
            kinds = {json.loads((m.model_dir / "pipeline.json").read_text())["kind"] for m in report.members}
            info = log_bars_model(rid, artifacts, EnsembleModel, example_bars(seg.bars, 120), kinds)
            with contextlib.redirect_stderr(io.StringIO()):
                mv = mlflow.register_model(info.model_uri, registered_name(ticker, "ensemble"),
                                           tags={"members": json.dumps([m.label for m in report.members])})
            version = str(mv.version)
    return rid, version
