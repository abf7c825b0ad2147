"""A worker killed with SIGKILL mid-trial: the next run fails the trial, retries its
params once and closes the dead worker's MLflow runs as FAILED (heartbeats)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import SHORT, cli_env, run_cli, study_trials

# Short heartbeats so the test need not wait the default 60 s grace period.
BEAT = ["--heartbeat-interval", "1", "--grace-period", "3"]
TUNE = ["tune", "AAPL", "--model", "transformer", "--pruner", "none", "--set", "max_epochs=4",
        "--set", "window=10", "--start", SHORT["start"], "--end", SHORT["end"], "--no-progress", *BEAT]
STUDY = "transformer_tuning_AAPL"


def _running_trial(storage: str) -> optuna.trial.FrozenTrial | None:
    """The RUNNING trial once it is linked to its MLflow run and has reported an epoch."""
    for t in study_trials(storage, STUDY) or []:
        if t.state.name == "RUNNING" and t.intermediate_values and "mlflow_run_id" in t.user_attrs:
            return t
    return None


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sigkill_mid_trial_is_failed_retried_and_its_runs_closed(tmp_path, backend, request):
    storage = (request.getfixturevalue("pg_url") if backend == "postgresql"
               else f"sqlite:///{tmp_path}/results/tuning.db")
    env = cli_env(tmp_path)
    err = open(tmp_path / "first.txt", "w")
    # More trials than it can run before it is seen mid-trial: it never ends on its own.
    first = subprocess.Popen([sys.executable, "-m", "tickertune", *TUNE, "--trials", "20",
                              "--storage", storage], cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    victim, deadline = None, time.time() + 300
    while victim is None and time.time() < deadline and first.poll() is None:
        time.sleep(0.2)
        victim = _running_trial(storage)
    assert victim is not None, f"exit {first.poll()}:\n" + (tmp_path / "first.txt").read_text()[-3000:]
    os.kill(first.pid, signal.SIGKILL)  # the tuning process only, as a crash or the OOM killer would
    assert first.wait(timeout=30) == -signal.SIGKILL

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    if backend == "postgresql":
        # As if the dead worker ran on another machine: only its heartbeat can tell it died.
        exp = client.get_experiment_by_name("tickertune")
        (dead,) = [r for r in client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")
                   if "mlflow.parentRunId" not in r.data.tags]
        client.set_tag(dead.info.run_id, "tickertune.host", "another-machine")

    # The next run, after the grace period: the dead trial fails, its params come back once.
    time.sleep(3)
    r = run_cli([*TUNE, "--trials", "2", "--storage", storage], tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert f"trial {victim.number} of {STUDY} stopped sending heartbeats" in r.stderr

    study = optuna.load_study(study_name=STUDY, storage=storage)
    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    assert by_number[victim.number].state.name == "FAIL"
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1
    assert retries[0].params == victim.params
    assert retries[0].state.name == "COMPLETE"
    assert retries[0].number > victim.number
    assert "RUNNING" not in {t.state.name for t in trials}
    assert len({t.number for t in trials}) == len(trials)

    exp = client.get_experiment_by_name("tickertune")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert [r.info.run_id for r in runs if r.info.status == "RUNNING"] == []
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert sorted(r.info.status for r in parents) == ["FAILED", "FINISHED"]
    dead_parent = next(r for r in parents if r.info.status == "FAILED")
    # Same host: the dead process is seen at start-up; another host: through the heartbeat.
    why = "ended without closing the run" if backend == "sqlite" else "stopped sending heartbeats"
    assert why in dead_parent.data.tags["error"]
    trial_runs = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    # Exactly one run per trial, each with the status of its trial.
    assert Counter(int(r.data.tags["trial_number"]) for r in trial_runs) == Counter(list(by_number))
    status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
    for run in trial_runs:
        assert run.info.status == status[by_number[int(run.data.tags["trial_number"])].state.name]
    dead = client.get_run(victim.user_attrs["mlflow_run_id"])
    assert dead.info.status == "FAILED"
    assert dead.data.tags["stale"] == "true"
    assert dead.data.tags["mlflow.parentRunId"] == dead_parent.info.run_id
    assert "stopped sending heartbeats" in dead.data.tags["error"]
    retry_run = client.get_run(by_number[retries[0].number].user_attrs["mlflow_run_id"])
    assert retry_run.info.status == "FINISHED"
    assert retry_run.info.run_id != dead.info.run_id


# -- parent runs: heartbeat stamps and the sweeps that close what a dead worker left ------

def _tracker(workdir, interval: int = 1, grace: int = 3):
    from tickertune.tracking import MlflowTracker

    tracker = MlflowTracker(f"sqlite:///{workdir}/mlflow.db", "tickertune", interval, grace)
    tracker.prepare()
    return tracker


def test_a_parent_on_another_host_is_closed_when_its_heartbeat_stamp_is_old(workdir):
    from tickertune.tracking import HEARTBEAT_TAG, HOST_TAG, PID_TAG

    tracker = _tracker(workdir)
    client, exp = tracker.client, tracker.experiment_id
    now = int(time.time())

    def run(tags, parent=None):
        tags = {**tags, **({"mlflow.parentRunId": parent} if parent else {})}
        return client.create_run(exp, tags=tags).info.run_id

    dead = run({HOST_TAG: "far-away:0a1b2c3d:4026531836", PID_TAG: "4242", HEARTBEAT_TAG: str(now - 10)})
    dead_trial = run({"trial_number": "3"}, dead)
    done_trial = run({"trial_number": "2"}, dead)
    client.set_terminated(done_trial, "FINISHED")
    live = run({HOST_TAG: "far-away:0a1b2c3d:4026531836", PID_TAG: "4243", HEARTBEAT_TAG: str(now)})
    live_trial = run({"trial_number": "0"}, live)
    unstamped = run({HOST_TAG: "far-away:0a1b2c3d:4026531836", PID_TAG: "4244"})  # cannot tell: kept
    foreign = run({"note": "a user's own run"})

    tracker.close_dead_invocations()

    status = {rid: client.get_run(rid).info.status for rid in
              (dead, dead_trial, done_trial, live, live_trial, unstamped, foreign)}
    assert status == {dead: "FAILED", dead_trial: "FAILED", done_trial: "FINISHED", live: "RUNNING",
                      live_trial: "RUNNING", unstamped: "RUNNING", foreign: "RUNNING"}
    error = client.get_run(dead).data.tags["error"]
    assert error.startswith("its process (pid 4242 on far-away) stopped sending heartbeats ")
    assert error.endswith(" s ago (killed or lost)")
    assert client.get_run(dead_trial).data.tags["trial_state"] == "FAIL"
    assert client.get_run(dead_trial).data.tags["error"] == error

    # With heartbeats off, a stamp proves nothing: nothing on another host is closed.
    off = run({HOST_TAG: "far-away:0a1b2c3d:4026531836", PID_TAG: "4245", HEARTBEAT_TAG: str(now - 1000)})
    _tracker(workdir, interval=0).close_dead_invocations()
    assert client.get_run(off).info.status == "RUNNING"


def test_the_writer_stamps_the_parent_and_finish_closes_unended_trial_runs(workdir):
    from tickertune.tracking import HEARTBEAT_TAG

    tracker = _tracker(workdir)
    parent = tracker.start_parent("p", {}, {})
    client = tracker.client
    first = int(client.get_run(parent).data.tags[HEARTBEAT_TAG])
    deadline = time.time() + 30
    while int(client.get_run(parent).data.tags[HEARTBEAT_TAG]) <= first and time.time() < deadline:
        time.sleep(0.2)
    assert int(client.get_run(parent).data.tags[HEARTBEAT_TAG]) > first

    # A trial run whose end never landed (its write failed): finish() closes it.
    lost = client.create_run(tracker.experiment_id, tags={"mlflow.parentRunId": parent}).info.run_id
    ended = tracker.start_trial(0, "t0", {"a": 1}, {"trial_number": "0"}, "round")
    tracker.end_trial(0, "COMPLETE")
    assert tracker.finish() == []
    assert client.get_run(parent).info.status == "FINISHED"
    assert client.get_run(lost).info.status == "FAILED"
    assert client.get_run(lost).data.tags["error"] == "its end was not recorded (a tracking write failed)"
    assert client.get_run(ended.run_id()).info.status == "FINISHED"
