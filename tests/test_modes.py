"""Study modes: pruner choice, walk-forward cross-validation, multi-objective with a Pareto front."""

from __future__ import annotations

import logging

import numpy as np
import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import SHORT
from tickertune.api import tune
from tickertune.config import TuneConfig
from tickertune.data import load_bars
from tickertune.errors import ConfigError
from tickertune.features import build_features
from tickertune.results import read_best_params
from tickertune.splits import chronological_split, walk_forward_folds


def _cfg(**kw) -> TuneConfig:
    return TuneConfig(**{**dict(ticker="AAPL", seed=5, progress=False, **SHORT), **kw})


def _trial_runs(study_name: str) -> dict[int, object]:
    client = MlflowClient()
    exp = client.get_experiment_by_name("tickertune")
    runs = client.search_runs([exp.experiment_id], f"tags.study_name = '{study_name}'")
    return {int(r.data.tags["trial_number"]): r for r in runs}


def test_walk_forward_folds_expand_in_time_and_never_touch_test():
    split = chronological_split(build_features(load_bars("AAPL").frame))
    folds = walk_forward_folds(split, 4)
    assert len(folds) == 4
    for prev, fold in zip(folds, folds[1:]):
        assert fold.train.stop > prev.train.stop  # expanding
        assert fold.val.start == prev.val.stop  # consecutive validation blocks
    for fold in folds:
        assert fold.train.start == 0
        assert fold.val.start - fold.train.stop == split.gap >= split.features.lookback
        assert fold.val.stop <= split.val.stop < split.test.start - split.gap + 1
        assert fold.test == split.test
    assert folds[-1].val.stop == split.val.stop


def test_cv_mode_reports_each_fold(workdir):
    result = tune(_cfg(trials=2, cv_folds=3, pruner="none"))
    study = result.outcomes["xgb"].study
    assert study.study_name == "xgb_tuning_AAPL_cv3"
    assert study.user_attrs["cv_folds"] == 3 and len(study.user_attrs["fold_val_starts"]) == 3
    runs = _trial_runs("xgb_tuning_AAPL_cv3")
    client = MlflowClient()
    for t in study.trials:
        assert t.state.name == "COMPLETE"
        assert sorted(t.intermediate_values) == [1, 2, 3]
        history = client.get_metric_history(runs[t.number].info.run_id, "fold/val_logloss")
        assert [m.step for m in history] == [1, 2, 3]
        assert t.value == pytest.approx(np.mean([m.value for m in history]), abs=1e-9)
        assert t.intermediate_values[3] == pytest.approx(t.value)  # the running mean, last fold
        assert runs[t.number].data.metrics["n_folds"] == 3
    assert result.registered == {}  # only single-split studies feed the registry
    assert read_best_params(workdir / "results", "AAPL")["models"]["xgb_cv3"]["best_trial"] == study.best_trial.number


def test_cv_mode_prunes_on_folds(workdir):
    result = tune(_cfg(trials=1, cv_folds=2), pruner=optuna.pruners.ThresholdPruner(upper=0.0))
    t = result.outcomes["xgb"].study.trials[0]
    assert t.state.name == "PRUNED" and sorted(t.intermediate_values) == [1]
    run = _trial_runs("xgb_tuning_AAPL_cv2")[0]
    assert run.info.status == "KILLED"
    assert [m.step for m in MlflowClient().get_metric_history(run.info.run_id, "fold/val_logloss")] == [1]


def test_multi_objective_pareto_front(workdir, caplog):
    caplog.set_level(logging.INFO, logger="tickertune")
    result = tune(_cfg(trials=5, multi_objective=True))
    assert "pruning is off with --multi-objective" in caplog.text
    study = result.outcomes["xgb"].study
    assert study.study_name == "xgb_tuning_AAPL_mo" and len(study.directions) == 2
    assert all(t.state.name == "COMPLETE" and not t.intermediate_values for t in study.trials)
    entry = read_best_params(workdir / "results", "AAPL")["models"]["xgb_mo"]
    assert sorted(p["trial"] for p in entry["pareto_front"]) == sorted(t.number for t in study.best_trials)
    runs = _trial_runs("xgb_tuning_AAPL_mo")
    for t in study.trials:
        assert runs[t.number].data.metrics["train_seconds"] == pytest.approx(t.values[1])
        assert runs[t.number].data.metrics["val_logloss"] == pytest.approx(t.values[0])
    client = MlflowClient()
    arts = {a.path for a in client.list_artifacts(result.parent_run_id, "plots")}
    assert "plots/xgb_pareto_front.png" in arts
    assert client.get_run(result.parent_run_id).data.metrics["xgb.pareto_size"] == len(study.best_trials)
    assert result.registered == {}


def test_conflicting_mode_and_pruner_attr(workdir):
    opened = tune(_cfg(trials=1, pruner="asha"))
    study = opened.outcomes["xgb"].study
    assert study.user_attrs["pruner"] == "asha"
    assert MlflowClient().get_run(opened.parent_run_id).data.params["pruner"] == "asha"
    optuna.create_study(study_name="xgb_tuning_AAPL_mo", storage="sqlite:///results/tuning.db")
    with pytest.raises(ConfigError, match="has 1 objective\\(s\\), this run has 2"):
        tune(_cfg(trials=1, multi_objective=True))
    with pytest.raises(ConfigError, match="cannot be combined"):
        _cfg(cv_folds=3, multi_objective=True)
    with pytest.raises(ConfigError, match="--cv-folds must be 2 or more"):
        _cfg(cv_folds=1)


def test_asha_is_successive_halving_min_1_rf_2():
    from tickertune.models import get_model
    from tickertune.tuning import make_pruner

    spec = make_pruner("asha", get_model("xgb"))
    assert isinstance(spec.pruner, optuna.pruners.SuccessiveHalvingPruner)
    assert (spec.pruner._min_resource, spec.pruner._reduction_factor) == (1, 2)
    assert [s for s in range(1, 20) if spec.decides_at(s)] == [1, 2, 4, 8, 16]
