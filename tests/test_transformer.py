"""Transformer trials, the model registry and ensembles, on a real MLflow store and registry."""

from __future__ import annotations

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

import tickertune
from tests.conftest import SHORT
from tickertune.api import tune
from tickertune.config import TuneConfig
from tickertune.data import load_bars
from tickertune.ensemble import evaluate_ensemble

EPOCH_KEYS = ("epoch/train_loss", "epoch/val_loss", "epoch/val_accuracy", "epoch/lr", "epoch/seconds")
FAST = {"max_epochs": 2}


def _cfg(**kw) -> TuneConfig:
    base = dict(ticker="AAPL", models=("transformer",), seed=11, progress=False, top_k=2,
                fixed_params=FAST, device="cpu", **SHORT)
    return TuneConfig(**{**base, **kw})


def _trial_runs(client: MlflowClient, model: str = "transformer") -> dict[int, object]:
    exp = client.get_experiment_by_name("tickertune")
    runs = client.search_runs([exp.experiment_id], f"tags.model = '{model}'", max_results=500)
    return {int(r.data.tags["trial_number"]): r for r in runs}


def _registry(client: MlflowClient, name: str) -> tuple[dict[str, str], list]:
    rm = client.get_registered_model(name)
    return dict(rm.aliases), client.search_model_versions(f"name='{name}'")


def planted_csv(path, n: int = 900, seed: int = 0) -> str:
    """Daily bars whose direction flips 90% of days: yesterday's move predicts today's."""
    rng = np.random.default_rng(seed)
    sign, close, rows = 1.0, 100.0, []
    dates = pd.bdate_range("2015-01-01", periods=n)
    for d in dates:
        sign = -sign if rng.random() < 0.9 else sign
        prev, close = close, close * (1 + sign * rng.uniform(0.002, 0.02))
        rows.append((d.date(), prev, max(prev, close) * 1.001, min(prev, close) * 0.999, close,
                     rng.integers(1_000_000, 2_000_000)))
    pd.DataFrame(rows, columns=["date", "open", "high", "low", "close", "volume"]).to_csv(path, index=False)
    return f"csv:{path}"


def test_epoch_metrics_complete_and_pruned(workdir):
    done = tune(_cfg(trials=2, pruner="none", top_k=0))
    # ThresholdPruner(upper=0) prunes at the first step it is asked after the warm-up (step 2).
    pruned = tune(_cfg(trials=1, top_k=0, fixed_params={"max_epochs": 4}),
                  pruner=optuna.pruners.ThresholdPruner(upper=0.0, n_warmup_steps=2))
    study = pruned.outcomes["transformer"].study
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    client = MlflowClient()
    runs = _trial_runs(client)
    assert sorted(runs) == [0, 1, 2]
    for number in (0, 1):
        run = runs[number]
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == done.parent_run_id
        epochs = int(run.data.metrics["epochs"])
        assert epochs == 2
        for key in EPOCH_KEYS:
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2]
        val = client.get_metric_history(run.info.run_id, "epoch/val_loss")
        assert min(m.value for m in val) == pytest.approx(run.data.metrics["val_logloss"], abs=1e-9)
        assert run.data.params["device"] == "cpu" and run.data.params["max_epochs"] == "2"
        assert run.data.tags["device.cpu_model"] and run.data.tags["device.cpu_threads"].isdigit()
    run = runs[2]
    assert run.info.status == "KILLED" and run.data.tags["trial_state"] == "PRUNED"
    for key in EPOCH_KEYS:  # the pruned trial keeps the epochs it ran
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2]
    assert sorted(study.trials[2].intermediate_values) == [1, 2]


def test_registry_holds_the_top_k_and_reproduces_training(workdir):
    result = tune(_cfg(trials=4, pruner="none", top_k=2))
    study = result.outcomes["transformer"].study
    complete = sorted((t.value, t.number) for t in study.trials if t.state.name == "COMPLETE")
    assert len(complete) == 4
    client = MlflowClient()
    aliases, versions = _registry(client, "tickertune-AAPL-transformer")
    assert len(versions) == 2  # only the top-k trials were logged as models
    by_version = {v.version: v for v in versions}
    for rank, (value, number) in enumerate(complete[:2], start=1):
        v = by_version[aliases[f"rank-{rank}"]]
        assert int(v.tags["trial_number"]) == number
        assert float(v.tags["val_logloss"]) == pytest.approx(value, abs=0)
        assert v.tags["study_name"] == "transformer_tuning_AAPL"
        assert v.tags["data_fingerprint"] == study.user_attrs["data_fingerprint"]
        assert v.run_id == study.trials[number].user_attrs["mlflow_run_id"]
    assert set(aliases) == {"rank-1", "rank-2"}
    exp = client.get_experiment_by_name("tickertune")
    assert len(client.search_logged_models(experiment_ids=[exp.experiment_id])) == 2

    # A registered model fed the training bars reproduces its training-time probabilities.
    model = tickertune.load_model("AAPL", "transformer", "rank-1")
    assert model.pyfunc.metadata.signature is not None
    bars = load_bars("AAPL", start=SHORT["start"], end=SHORT["end"]).frame
    p = model.predict_proba(bars)
    trained = pd.read_csv(model.model_dir / "val_predictions.csv", parse_dates=["date"]).set_index("date")
    assert len(trained) == 194
    np.testing.assert_allclose(p.reindex(trained.index).to_numpy(), trained["p_up"].to_numpy(), atol=1e-6)
    # and from the log loss the trial reported
    y = study.user_attrs  # split dates
    assert trained.index[0] == pd.Timestamp(y["val_start"]) and trained.index[-1] == pd.Timestamp(y["val_end"])


def test_later_better_trial_moves_rank_1(workdir):
    data = planted_csv(workdir / "planted.csv")
    weak = {"max_epochs": 1, "lr": 1e-4, "window": 10, "scheduler": "none"}
    first = tune(_cfg(trials=2, pruner="none", data=data, start=None, end=None, ticker="PLNT",
                      fixed_params=weak))
    client = MlflowClient()
    aliases, _ = _registry(client, "tickertune-PLNT-transformer")
    first_rank1 = aliases["rank-1"]
    strong = {"max_epochs": 6, "lr": 3e-3, "window": 10, "scheduler": "none", "dropout": 0.0}
    second = tune(_cfg(trials=1, pruner="none", data=data, start=None, end=None, ticker="PLNT",
                       fixed_params=strong))
    study = second.outcomes["transformer"].study
    values = {t.number: t.value for t in study.trials}
    assert values[2] < min(values[0], values[1]) - 0.05  # the planted signal was learned
    aliases, versions = _registry(client, "tickertune-PLNT-transformer")
    assert len(versions) == 3
    v = {x.version: x for x in versions}
    assert int(v[aliases["rank-1"]].tags["trial_number"]) == 2
    assert aliases["rank-2"] == first_rank1  # the old best moved down one rank
    best_first = min((0, 1), key=lambda n: values[n])
    assert int(v[aliases["rank-2"]].tags["trial_number"]) == best_first


def test_ensemble_is_the_mean_of_its_members(workdir):
    tune(_cfg(trials=3, pruner="none", top_k=2, models=("xgb", "transformer")))
    report = evaluate_ensemble("AAPL", "sqlite:///results/tuning.db", top_k=2, include_xgb=True,
                               register=True, tracking_uri=None)
    labels = [m.label for m in report.members]
    assert labels == ["tickertune-AAPL-transformer@rank-1", "tickertune-AAPL-transformer@rank-2",
                      "tickertune-AAPL-xgb@rank-1"]
    bars = load_bars("AAPL", start=SHORT["start"], end=SHORT["end"]).frame
    members = [tickertune.load_model("AAPL", m.name.split("-")[-1], m.alias) for m in report.members]
    independent = pd.concat([m.predict_proba(bars) for m in members], axis=1, join="inner").mean(axis=1)
    ens = report.probs["ensemble (mean)"]
    np.testing.assert_allclose(ens.to_numpy(), independent.reindex(ens.index).to_numpy(), atol=1e-12)
    table = report.table.set_index("model")
    assert list(table.index[-2:]) == ["baseline: train up-rate 0.541", "baseline: always up"]
    assert report.n_test == 194 and len(table) == 6
    client = MlflowClient()
    run = client.get_run(report.run_id)
    assert run.data.tags["kind"] == "ensemble" and run.info.status == "FINISHED"
    assert run.data.metrics["test_logloss"] == pytest.approx(table.loc["ensemble (mean)", "logloss"])
    assert run.data.metrics["test_baseline_prior_logloss"] == pytest.approx(
        table.loc["baseline: train up-rate 0.541", "logloss"])
    ev = report.evaluation
    assert run.data.metrics["test_logloss_gain_low"] == pytest.approx(ev.logloss_gain.low)
    assert run.data.tags["verdict"] == ev.verdict
    assert run.data.params["test_start"] == report.split_dates["test_start"]
    arts = {a.path for a in client.list_artifacts(report.run_id, "calibration")}
    assert arts == {"calibration/ensemble_mean_reliability.png", "calibration/ensemble_mean_prediction_hist.png"}
    # The registered ensemble predicts the same mean from raw bars.
    import mlflow

    pyf = mlflow.pyfunc.load_model(f"models:/tickertune-AAPL-ensemble/{report.registered_version}")
    out = pyf.predict(bars.reset_index()).set_index("date")["p_up"]
    np.testing.assert_allclose(out.reindex(ens.index).to_numpy(), ens.to_numpy(), atol=1e-9)


def test_cuda_without_gpu_is_a_usage_error(workdir):
    from tests.conftest import run_cli

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    r = run_cli(["tune", "AAPL", "--model", "transformer", "--device", "cuda", "--trials", "1"], workdir)
    assert r.returncode == 2
    assert r.stderr.strip() == "tickertune: error: --device cuda: no CUDA device is available"
    assert not (workdir / "results").exists() and not (workdir / "mlflow.db").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_gpu_path(workdir):
    result = tune(_cfg(trials=1, pruner="none", top_k=0, device="cuda"))
    run = next(iter(_trial_runs(MlflowClient()).values()))
    assert run.data.params["device"] == "cuda" and run.data.params["amp"] == "True"
    assert run.data.tags["device.gpu_name"]
    assert run.data.metrics["device.peak_memory_mb"] > 0
    assert result.outcomes["transformer"].study.trials[0].state.name == "COMPLETE"
