"""Against a real `mlflow server` (PostgreSQL backend, proxied artifacts) started by
scripts/mlflow_server.sh: tuning, the registry and the ensemble end to end over HTTP,
and no password from a storage or tracking URL anywhere the product writes or prints."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO, SHORT, cli_env, drop_pg_database, pg_database, run_cli

pytestmark = pytest.mark.slow

SCRIPT = REPO / "scripts" / "mlflow_server.sh"
PARENT = "mlflow.parentRunId"
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
SECRET = "S3cretPw"
DATES = ["--start", SHORT["start"], "--end", SHORT["end"]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its parent counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _stop(pid: int) -> None:
    """TERM the server's process group (it runs in its own session), KILL it after 30 s."""
    for sig, wait in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.2)


class Server:
    def __init__(self, uri: str, artifacts: Path, log: Path, started_s: float, admin: str) -> None:
        self.uri, self.artifacts, self.log, self.started_s, self.admin = uri, artifacts, log, started_s, admin

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no server log)"


@pytest.fixture(scope="module")
def server(pg_admin: str, tmp_path_factory: pytest.TempPathFactory):
    """A real MLflow tracking server on a free port, on a fresh PostgreSQL database."""
    base = tmp_path_factory.mktemp("mlflow-server")
    db = f"tt_mlflow_{uuid.uuid4().hex[:10]}"
    backend = pg_database(pg_admin, db)
    port = _free_port()
    pidfile, log = base / "server.pid", base / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHON"] = sys.executable
    t0 = time.monotonic()
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--port", str(port), "--backend", backend, "--artifacts",
         str(base / "artifacts"), "--log", str(log), "--pidfile", str(pidfile), "--timeout", "180"],
        cwd=base, env=env, capture_output=True, text=True, timeout=240)
    started = time.monotonic() - t0
    pid = int(pidfile.read_text()) if pidfile.exists() else None
    try:
        assert proc.returncode == 0, (f"mlflow_server.sh failed ({proc.returncode}):\n{proc.stdout}\n"
                                      f"{proc.stderr}")
        uri = f"http://127.0.0.1:{port}"
        assert f"export MLFLOW_TRACKING_URI={uri}" in proc.stdout
        assert pid is not None and _alive(pid)
        yield Server(uri, base / "artifacts", log, started, pg_admin)
    finally:
        if pid is not None:
            _stop(pid)
            assert not _alive(pid), f"mlflow server pid {pid} survived TERM and KILL"
        drop_pg_database(pg_admin, db)


def _env(tmp: Path, uri: str, **extra: str) -> dict[str, str]:
    env = cli_env(tmp)  # points MLFLOW_TRACKING_URI at a sqlite file: not here
    env["MLFLOW_TRACKING_URI"] = uri
    env.update(extra)
    return env


def _explain(proc: subprocess.CompletedProcess, server: Server) -> str:
    return (f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n"
            f"{proc.stderr[-6000:]}\n--- server log (tail) ---\n{server.log_tail(15)}")


def _client(uri: str):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def _all_runs(client, experiment: str) -> list:
    from mlflow.entities import ViewType

    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r} on the server"
    return client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=1000)


# -- a. end to end ------------------------------------------------------------------------
def test_server_end_to_end(server: Server, tmp_path: Path):
    print(f"\nmlflow_server.sh returned after {server.started_s:.1f} s (/health 200)")
    uri = server.uri
    env = _env(tmp_path, uri)
    t0 = time.monotonic()
    proc = run_cli(["tune", "AAPL", "--model", "all", "--trials", "2", *DATES, "--tracking-uri", uri,
                    "--no-progress"], tmp_path, env=env)
    print(f"tune --model all --trials 2: {time.monotonic() - t0:.1f} s")
    assert proc.returncode == 0, _explain(proc, server)
    assert not (tmp_path / "mlflow.db").exists(), "a local sqlite MLflow store was created"
    assert not (tmp_path / "mlruns").exists(), "artifacts were written locally, not through the server"

    import optuna

    storage = f"sqlite:///{tmp_path}/results/tuning.db"
    studies = {m: optuna.load_study(study_name=f"{m}_tuning_AAPL", storage=storage)
               for m in ("xgb", "transformer")}

    client = _client(uri)
    exp = client.get_experiment_by_name("tickertune")
    assert exp.artifact_location.startswith("mlflow-artifacts:"), exp.artifact_location
    runs = _all_runs(client, "tickertune")
    parents = [r for r in runs if PARENT not in r.data.tags]
    trials = [r for r in runs if PARENT in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert len(trials) == 4, [r.info.run_name for r in trials]
    assert all(r.data.tags[PARENT] == parent.info.run_id for r in trials)
    assert parent.data.params["tracking_uri"] == uri

    by_id = {r.info.run_id: r for r in trials}
    for model, study in studies.items():
        assert len(study.trials) == 2
        for t in study.trials:
            run = by_id[t.user_attrs["mlflow_run_id"]]
            assert run.data.tags["model"] == model and int(run.data.tags["trial_number"]) == t.number
            assert run.data.tags["trial_state"] == t.state.name
            assert run.info.status == RUN_STATUS[t.state.name], (model, t.number, t.state.name)
            key = "round/val_logloss" if model == "xgb" else "epoch/val_loss"
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
            assert steps and steps == list(range(1, len(steps) + 1)), (model, t.number, steps)
            count = run.data.metrics.get("n_rounds" if model == "xgb" else "epochs")
            if count is not None:
                assert len(steps) == int(count), (model, t.number, len(steps), count)

    # The parent's artifacts went through the server into its artifact destination.
    names = {f.path for f in client.list_artifacts(parent.info.run_id, "best_params")}
    assert names == {"best_params/AAPL.json"}
    assert any(p.is_file() for p in server.artifacts.rglob("*")), "nothing in the server's artifact store"

    for model in ("xgb", "transformer"):
        mv = client.get_model_version_by_alias(f"tickertune-AAPL-{model}", "rank-1")
        assert mv.tags["ticker"] == "AAPL" and mv.tags["model"] == model

    # Load a registered model through the server and predict, in a clean process.
    code = (
        "import mlflow, sys\n"
        "from tickertune.data import load_bars\n"
        "m = mlflow.pyfunc.load_model('models:/tickertune-AAPL-xgb@rank-1')\n"
        "bars = load_bars('AAPL', 'sample', '2023-01-01', '2023-09-21').frame.reset_index()\n"
        "out = m.predict(bars)\n"
        "assert len(out) > 0 and out['p_up'].between(0, 1).all(), out\n"
        "print('predicted', len(out))\n"
    )
    load = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert load.returncode == 0 and "predicted" in load.stdout, _explain(load, server)
    assert not (tmp_path / "mlflow.db").exists()

    t0 = time.monotonic()
    ens = run_cli(["ensemble", "AAPL", "--include-xgb", "--top-k", "1", "--tracking-uri", uri], tmp_path,
                  env=env)
    print(f"ensemble: {time.monotonic() - t0:.1f} s\n{ens.stdout}")
    assert ens.returncode == 0, _explain(ens, server)
    assert "test segment" in ens.stdout and "MLflow run" in ens.stdout
    assert not (tmp_path / "mlflow.db").exists(), "a local sqlite MLflow store was created"
    assert not (tmp_path / "mlruns").exists()


# -- b. secrets ---------------------------------------------------------------------------
def _leaks(where: str, value: object) -> list[str]:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return [where] if SECRET in text else []


def _secret_storage(pg_url: str) -> str:
    """pg_url (postgresql://postgres@host/db) with a password; trust auth accepts any."""
    assert pg_url.startswith("postgresql://postgres@"), pg_url
    return pg_url.replace("postgresql://postgres@", f"postgresql://postgres:{SECRET}@", 1)


def _secret_checks(proc, server: Server, tmp: Path, storage: str, ticker: str, experiment: str,
                   masked_tracking: str | None) -> None:
    """Everything the invocation printed or wrote: no SECRET, and *** where it was."""
    leaks = _leaks("stdout", proc.stdout) + _leaks("stderr", proc.stderr)
    assert not leaks, f"{SECRET} printed in {leaks}:\n" + _explain(proc, server)
    assert proc.returncode == 0, _explain(proc, server)

    client = _client(server.uri)
    runs = _all_runs(client, experiment)
    parents = [r for r in runs if PARENT not in r.data.tags]
    assert len(parents) == 1 and len(runs) == 2, [r.info.run_name for r in runs]
    for r in runs:
        for k, v in r.data.params.items():
            leaks += _leaks(f"run {r.info.run_name} param {k}={v}", v)
        for k, v in r.data.tags.items():
            leaks += _leaks(f"run {r.info.run_name} tag {k}={v}", v)
    parent = parents[0]
    for f in client.list_artifacts(parent.info.run_id, "summary") + client.list_artifacts(
            parent.info.run_id, "best_params"):
        local = client.download_artifacts(parent.info.run_id, f.path, str(tmp / "downloaded"))
        leaks += _leaks(f"parent artifact {f.path}", Path(local).read_text())
    name = f"tickertune-{ticker}-xgb"
    versions = client.search_model_versions(f"name='{name}'")
    assert versions, f"nothing registered as {name}"
    for v in versions:
        for k, val in (v.tags or {}).items():
            leaks += _leaks(f"model version {name}/{v.version} tag {k}={val}", val)
        leaks += _leaks(f"model version {name}/{v.version} source", v.source or "")
        leaks += _leaks(f"model version {name}/{v.version} description", v.description or "")
    leaks += _leaks("registered model tags", client.get_registered_model(name).tags)

    best = tmp / "results" / "best_params" / f"{ticker}.json"
    leaks += _leaks(f"best-params JSON {best}", best.read_text())

    import optuna

    study = optuna.load_study(study_name=f"xgb_tuning_{ticker}", storage=storage)
    leaks += _leaks("study user_attrs", study.user_attrs)
    for t in study.trials:
        leaks += _leaks(f"trial {t.number} user_attrs", t.user_attrs)
    assert not leaks, f"{SECRET} leaked into: " + "; ".join(leaks)

    # The URLs are there, masked.
    assert parent.data.params["storage"] == storage.replace(SECRET, "***")
    assert "***" in proc.stdout, proc.stdout
    if masked_tracking is not None:
        assert parent.data.params["tracking_uri"] == masked_tracking


def test_secrets_in_storage_url_and_env_credentials(server: Server, pg_url: str, tmp_path: Path):
    """--storage with a password; tracking credentials in MLFLOW_TRACKING_USERNAME/PASSWORD."""
    storage = _secret_storage(pg_url)
    env = _env(tmp_path, server.uri, MLFLOW_TRACKING_USERNAME="tt", MLFLOW_TRACKING_PASSWORD=SECRET)
    proc = run_cli(["tune", "GOOG", "--model", "xgb", "--trials", "1", *DATES, "--storage", storage,
                    "--tracking-uri", server.uri, "--experiment", "secrets-env", "--no-progress"],
                   tmp_path, env=env)
    _secret_checks(proc, server, tmp_path, storage, "GOOG", "secrets-env", masked_tracking=server.uri)


def test_secrets_in_urls_are_masked(server: Server, pg_url: str, tmp_path: Path):
    """--storage with a password and --tracking-uri with user:password (HTTP basic auth)."""
    storage = _secret_storage(pg_url)
    tracking = server.uri.replace("http://", f"http://tt:{SECRET}@")
    proc = run_cli(["tune", "AMZN", "--model", "xgb", "--trials", "1", *DATES, "--storage", storage,
                    "--tracking-uri", tracking, "--experiment", "secrets-basic-auth", "--no-progress"],
                   tmp_path, env=_env(tmp_path, tracking))
    _secret_checks(proc, server, tmp_path, storage, "AMZN", "secrets-basic-auth",
                   masked_tracking=tracking.replace(SECRET, "***"))


# -- c. workers on a shared storage and one tracking server (the multi-machine setup) -----
def test_launch_workers_against_postgres_and_the_server(server: Server, pg_url: str, tmp_path: Path):
    """What each machine runs: scripts/launch_workers.sh with one storage URL and one server.
    Two workers (ids 3 and 4, as a second machine would use) on a fresh study."""
    import optuna

    experiment = "tickertune-launch"
    env = _env(tmp_path, server.uri, TICKERTUNE_STORAGE=pg_url, MLFLOW_EXPERIMENT_NAME=experiment,
               PYTHON=sys.executable)
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "launch_workers.sh"), "NFLX", "--workers", "2", "--first-id", "3",
         "--", "--trials", "6", "--model", "xgb", *DATES, "--no-progress"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, _explain(proc, server)
    assert "2 worker(s) with ids 3..4" in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()

    study = optuna.load_study(study_name="xgb_tuning_NFLX", storage=pg_url)
    trials = study.get_trials(deepcopy=False)
    assert sorted(t.number for t in trials) == list(range(6))
    client = _client(server.uri)
    runs = _all_runs(client, experiment)
    parents = {r.info.run_id: r for r in runs if PARENT not in r.data.tags}
    assert sorted(p.data.tags["worker_id"] for p in parents.values()) == ["3", "4"]
    assert all(p.info.status == "FINISHED" for p in parents.values())
    children = [r for r in runs if PARENT in r.data.tags]
    assert sorted(int(r.data.tags["trial_number"]) for r in children) == list(range(6))
    assert all(r.data.tags[PARENT] in parents for r in children)
    for r in children:
        t = trials[int(r.data.tags["trial_number"])]
        assert r.info.status == RUN_STATUS[t.state.name]
    best = client.get_model_version_by_alias("tickertune-NFLX-xgb", "rank-1")
    assert int(best.tags["trial_number"]) == study.best_trial.number
