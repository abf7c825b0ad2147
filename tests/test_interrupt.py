"""Ctrl-C in a terminal (SIGINT to the whole process group) ends cleanly with exit 130."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import SHORT, cli_env


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sigint_to_the_process_group(tmp_path, sig):
    err = open(tmp_path / "err.txt", "w")
    p = subprocess.Popen(
        [sys.executable, "-m", "tickertune", "tune", "AAPL", "--trials", "200", "--pruner", "none",
         "--start", SHORT["start"]],
        cwd=tmp_path, env=cli_env(tmp_path), stdout=subprocess.DEVNULL, stderr=err,
        start_new_session=True,  # its own process group, as a terminal job has
    )
    deadline = time.time() + 240
    while time.time() < deadline:  # wait until two trials have finished
        if (tmp_path / "err.txt").read_text().count(" COMPLETE ") >= 2:
            break
        time.sleep(0.2)
    os.killpg(p.pid, sig)  # what Ctrl-C (or a scheduler's stop) does: the tuner and its writer get it
    assert p.wait(timeout=120) == 130
    text = (tmp_path / "err.txt").read_text()
    assert text.rstrip().endswith("tickertune: interrupted; finished trials are saved")

    study = optuna.load_study(study_name="xgb_tuning_AAPL", storage=f"sqlite:///{tmp_path}/results/tuning.db")
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") >= 2 and "RUNNING" not in states
    assert set(states) <= {"COMPLETE", "FAIL"}
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("tickertune").experiment_id], max_results=500)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    trials = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert [r.info.status for r in parents] == ["KILLED"]
    assert all(r.info.status != "RUNNING" for r in runs)
    assert len(trials) == len(study.trials)  # every trial has its run, the interrupted one too
    by_number = {int(r.data.tags["trial_number"]): r for r in trials}
    for t in study.trials:
        assert by_number[t.number].info.status == {"COMPLETE": "FINISHED", "FAIL": "FAILED"}[t.state.name]
        if t.state.name == "FAIL":
            assert by_number[t.number].data.tags["interrupted"] == "true"
    best = json.loads((tmp_path / "results" / "best_params" / "AAPL.json").read_text())
    assert best["models"]["xgb"]["best_trial"] == study.best_trial.number


def test_sigint_stops_every_worker(tmp_path):
    """Ctrl-C on `--workers 2`: each worker ends its trial and its parent run, exit 130."""
    err = open(tmp_path / "err.txt", "w")
    p = subprocess.Popen(
        [sys.executable, "-m", "tickertune", "tune", "AAPL", "--trials", "400", "--workers", "2",
         "--pruner", "none", "--start", SHORT["start"]],
        cwd=tmp_path, env=cli_env(tmp_path), stdout=subprocess.DEVNULL, stderr=err,
        start_new_session=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline:  # both workers have finished a trial
        text = (tmp_path / "err.txt").read_text()
        if "[w1] [xgb] trial" in text and "[w2] [xgb] trial" in text:
            break
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGINT)
    code = p.wait(timeout=120)
    text = (tmp_path / "err.txt").read_text()
    assert code == 130, "\n".join(line for line in text.splitlines() if "] trial " not in line)
    assert "[w1] tickertune: interrupted; finished trials are saved" in text
    assert "[w2] tickertune: interrupted; finished trials are saved" in text

    study = optuna.load_study(study_name="xgb_tuning_AAPL", storage=f"sqlite:///{tmp_path}/results/tuning.db")
    states = [t.state.name for t in study.trials]
    assert "RUNNING" not in states and states.count("COMPLETE") >= 2
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("tickertune").experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert sorted(r.info.status for r in parents) == ["KILLED", "KILLED"]
    assert all(r.info.status != "RUNNING" for r in runs)
    assert len(runs) - len(parents) == len(study.trials)
