"""Studies and tracking end to end on real AAPL data, a real SQLite study and MLflow store."""

from __future__ import annotations

import json
import logging

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import SHORT, ExplodingPruner, run_cli
from tickertune.api import tune
from tickertune.config import TuneConfig
from tickertune.results import read_best_params

PARENT = "mlflow.parentRunId"


def _runs(client: MlflowClient) -> tuple[list, list]:
    exp = client.get_experiment_by_name("tickertune")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if PARENT not in r.data.tags]
    trials = [r for r in runs if PARENT in r.data.tags]
    return parents, trials


def _config(**kw) -> TuneConfig:
    return TuneConfig(ticker="AAPL", seed=7, progress=False, **{**SHORT, **kw})


def test_two_invocations_append_and_nest(workdir, caplog):
    caplog.set_level(logging.INFO, logger="tickertune")
    first = tune(_config(trials=3))
    assert "created new study xgb_tuning_AAPL" in caplog.text
    second = tune(_config(trials=2))
    assert "loaded study xgb_tuning_AAPL with 3 existing trials" in caplog.text

    study = optuna.load_study(study_name="xgb_tuning_AAPL", storage="sqlite:///results/tuning.db")
    assert len(study.trials) == 5
    assert [t.number for t in study.trials] == [0, 1, 2, 3, 4]

    client = MlflowClient()
    parents, trials = _runs(client)
    assert sorted(p.info.run_id for p in parents) == sorted([first.parent_run_id, second.parent_run_id])
    assert all(p.info.status == "FINISHED" for p in parents)
    assert len(trials) == 5
    by_number = {int(r.data.tags["trial_number"]): r for r in trials}
    assert sorted(by_number) == [0, 1, 2, 3, 4]
    for t in study.trials:
        run = by_number[t.number]
        expected_parent = first.parent_run_id if t.number < 3 else second.parent_run_id
        assert run.data.tags[PARENT] == expected_parent
        assert t.user_attrs["mlflow_run_id"] == run.info.run_id
        status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}[t.state.name]
        assert run.info.status == status
        assert run.data.tags["trial_state"] == t.state.name
        assert run.data.tags["study_name"] == "xgb_tuning_AAPL"
        assert run.data.tags["ticker"] == "AAPL" and run.data.tags["model"] == "xgb"
        assert run.data.tags["data_fingerprint"] == study.user_attrs["data_fingerprint"]
        assert run.data.tags["device.cpu_threads"].isdigit()
        for name, value in t.params.items():  # every sampled param, plus the fixed ones
            assert float(run.data.params[name]) == pytest.approx(value)
        assert run.data.params["objective"] == "binary:logistic"
        assert int(run.data.params["seed"]) == 7 + t.number
        assert "duration_s" in run.data.metrics

    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert complete, "expected at least one complete trial"
    for t in complete:
        run = by_number[t.number]
        for key in ("val_logloss", "val_accuracy", "val_auc", "baseline_val_logloss"):
            assert key in run.data.metrics
        assert run.data.metrics["val_logloss"] == pytest.approx(t.value, abs=1e-6)
        history = client.get_metric_history(run.info.run_id, "round/val_logloss")
        steps = sorted(m.step for m in history)
        assert steps == list(range(1, int(run.data.metrics["n_rounds"]) + 1))
        assert sorted(t.intermediate_values) == steps  # Optuna saw every round too
        assert min(m.value for m in history) == pytest.approx(t.value, abs=1e-6)

    # The JSON holds the study's best trial, rewritten by the second invocation.
    doc = read_best_params(workdir / "results", "AAPL")
    entry = doc["models"]["xgb"]
    assert entry["best_trial"] == study.best_trial.number
    assert entry["best_value"] == study.best_value
    assert entry["params"] == study.best_trial.params
    assert entry["n_trials"] == 5 and entry["study_name"] == "xgb_tuning_AAPL"
    assert entry["mlflow_run_id"] == study.best_trial.user_attrs["mlflow_run_id"]

    # The parent run carries the summary, the plots and the JSON.
    parent = client.get_run(second.parent_run_id)
    assert parent.data.metrics["xgb.n_added"] == 2
    assert parent.data.metrics["xgb.best_val_logloss"] == pytest.approx(study.best_value)
    counts = {s: sum(t.state.name == s for t in study.trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
    assert parent.data.metrics["xgb.n_complete"] == counts["COMPLETE"]
    assert parent.data.metrics["xgb.n_pruned"] == counts["PRUNED"]
    arts = {a.path for a in client.list_artifacts(second.parent_run_id, "plots")}
    assert arts == {"plots/xgb_optimization_history.png", "plots/xgb_param_importances.png"}
    local = client.download_artifacts(second.parent_run_id, "plots", str(workdir / "dl"))
    for name in ("xgb_optimization_history.png", "xgb_param_importances.png"):
        assert (workdir / "dl" / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert local
    best_json = client.download_artifacts(second.parent_run_id, "best_params/AAPL.json", str(workdir / "dl"))
    assert json.loads(open(best_json).read())["models"]["xgb"]["n_trials"] == 5


def test_forced_prune_is_killed_with_its_steps(workdir):
    # ThresholdPruner(upper=0) prunes at the first report: log loss is always > 0.
    result = tune(_config(trials=2), pruner=optuna.pruners.ThresholdPruner(upper=0.0))
    study = result.outcomes["xgb"].study
    assert [t.state.name for t in study.trials] == ["PRUNED", "PRUNED"]
    client = MlflowClient()
    _, trials = _runs(client)
    assert len(trials) == 2
    for run in trials:
        assert run.info.status == "KILLED"
        assert run.data.tags["trial_state"] == "PRUNED"
        assert run.data.tags["pruned_at_step"] == "1"
        history = client.get_metric_history(run.info.run_id, "round/val_logloss")
        assert [m.step for m in history] == [1]
    assert result.best == {}  # nothing completed: no best-params file
    assert not (workdir / "results" / "best_params" / "AAPL.json").exists()


def test_failing_trial_is_failed_with_error_tag(workdir):
    result = tune(_config(trials=2, fixed_params={"tree_method": "approx"}), pruner=ExplodingPruner())
    study = result.outcomes["xgb"].study
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"]
    assert "tree_method" not in study.trials[0].params  # fixed, not sampled
    _, trials = _runs(MlflowClient())
    assert len(trials) == 2
    for run in trials:
        assert run.info.status == "FAILED"
        assert run.data.tags["trial_state"] == "FAIL"
        assert run.data.tags["error"] == "ValueError: pruner exploded at step 1"
        assert run.data.params["tree_method"] == "approx"


def test_no_tracking_writes_no_mlflow_store(workdir):
    result = tune(_config(trials=1, tracking=False))
    assert result.parent_run_id is None
    assert len(result.outcomes["xgb"].study.trials) == 1
    assert not (workdir / "mlflow.db").exists() and not (workdir / "mlruns").exists()
    assert (workdir / "results" / "tuning.db").exists()


def test_cli_tune_studies_best(workdir):
    r = run_cli(["tune", "AAPL", "--trials", "2", "--start", SHORT["start"], "--pruner", "none"], workdir)
    assert r.returncode == 0, r.stderr
    assert "created new study xgb_tuning_AAPL" in r.stderr
    assert "xgb_tuning_AAPL: added 2 complete" in r.stdout
    r = run_cli(["studies"], workdir)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:4] == ["study", "direction", "trials", "complete"]
    row = lines[2].split()
    assert row[:4] == ["xgb_tuning_AAPL", "minimize", "2", "2"]
    r = run_cli(["best", "AAPL"], workdir)
    assert r.returncode == 0
    assert json.loads(r.stdout)["models"]["xgb"]["n_trials"] == 2
    r = run_cli(["best", "MSFT"], workdir)
    assert r.returncode == 1
    assert r.stderr.strip() == ("tickertune: error: no best params for MSFT at "
                                "results/best_params/MSFT.json; run: tickertune tune MSFT")


def test_studies_without_database_creates_nothing(workdir):
    r = run_cli(["studies"], workdir)
    assert r.returncode == 1
    assert "no study database at results/tuning.db" in r.stderr
    assert not (workdir / "results").exists()


def test_help_imports_no_heavy_library():
    import subprocess
    import sys

    code = ("import sys, tickertune.cli as c\n"
            "c.build_parser().format_help()\n"
            "heavy = [m for m in ('mlflow','optuna','xgboost','torch','pandas') if m in sys.modules]\n"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("sets, message", [
    ({"max_depth": "abc"}, "--set xgb.max_depth=abc: expected a number in [2, 8]"),
    ({"learning_rate": -1}, "--set xgb.learning_rate=-1: outside the search range [0.005, 0.3]"),
    ({"colour": "blue"}, "--set colour: unknown parameter; known: "),
    ({"transformer.lr": 0.001}, "--set transformer.lr: 'transformer' is not a model of this run (xgb)"),
])
def test_bad_set_is_refused_before_any_write(workdir, sets, message):
    from tickertune.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        tune(_config(trials=1, fixed_params=sets))
    assert str(err.value).startswith(message)
    assert not (workdir / "results").exists() and not (workdir / "mlflow.db").exists()


def test_set_routes_to_its_model():
    from tickertune.models import get_model
    from tickertune.errors import ConfigError
    from tickertune.tuning import fixed_by_model

    models = [get_model("xgb"), get_model("transformer", device="cpu")]
    out = fixed_by_model(models, {"max_epochs": 2, "xgb.gamma": 0.5, "window": "20", "amp": "false"})
    assert out == {"xgb": {"gamma": 0.5}, "transformer": {"max_epochs": 2, "window": 20, "amp": False}}
    with pytest.raises(ConfigError, match="both models have 'gamma'; write xgb.gamma or transformer.gamma"):
        fixed_by_model(models, {"gamma": 0.5})
    with pytest.raises(ConfigError, match="window=15: choose from 10, 20, 30"):
        fixed_by_model(models, {"window": 15})
