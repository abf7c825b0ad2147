"""Several processes on one study: SQLite, journal and PostgreSQL storage; registry races."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import Counter

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import SHORT, cli_env, run_cli
from tickertune.registry import settle_aliases
from tickertune.workers import shares, worker_argv

TUNE = ["tune", "AAPL", "--start", SHORT["start"], "--end", SHORT["end"], "--no-progress"]
STUDY = "xgb_tuning_AAPL"


def test_urls_go_to_the_environment_not_the_command_line():
    from tickertune.workers import split_urls

    argv, env = split_urls(["AAPL", "--storage", "postgresql://u:pw@h/db", "--tracking-uri=http://a:pw@h",
                            "--trials", "4", "--start", "2018-01-01"])
    assert argv == ["AAPL", "--trials", "4", "--start", "2018-01-01"]
    assert env == {"TICKERTUNE_STORAGE": "postgresql://u:pw@h/db", "MLFLOW_TRACKING_URI": "http://a:pw@h"}
    assert split_urls(["--stor=sqlite:///x.db", "--tracking", "http://h"])[1] == {
        "TICKERTUNE_STORAGE": "sqlite:///x.db", "MLFLOW_TRACKING_URI": "http://h"}  # argparse prefixes


def test_trials_are_shared_exactly():
    assert shares(10, 4) == [3, 3, 2, 2]
    assert shares(3, 4) == [1, 1, 1]  # no idle worker
    assert sum(shares(17, 5)) == 17
    argv = worker_argv(["-q", "AAPL", "--trials", "10", "--workers", "4", "--progress"], 3, 2)
    assert argv == ["-q", "tune", "AAPL", "--trials", "10", "--workers", "4", "--workers", "1",
                    "--trials", "3", "--worker-id", "2", "--no-progress"]


def _check_parallel_study(tmp_path, storage: str, n_trials: int, n_parents: int, output: str) -> None:
    """The study has exactly the trials asked for, with unique numbers, each with exactly one
    MLflow run linked to one of the parents; the registry's rank-1 is the study's best."""
    assert "database is locked" not in output
    study = optuna.load_study(study_name=STUDY, storage=storage)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == n_trials
    assert sorted(t.number for t in trials) == list(range(n_trials))
    assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("tickertune").experiment_id], max_results=1000)
    parents = {r.info.run_id: r for r in runs if "mlflow.parentRunId" not in r.data.tags}
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == n_parents
    assert all(p.info.status == "FINISHED" for p in parents.values())
    assert Counter(int(r.data.tags["trial_number"]) for r in children) == Counter(range(n_trials))
    assert all(r.data.tags["mlflow.parentRunId"] in parents for r in children)
    by_number = {t.number: t for t in trials}
    for r in children:
        t = by_number[int(r.data.tags["trial_number"])]
        assert t.user_attrs["mlflow_run_id"] == r.info.run_id
        assert r.info.status == {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}[t.state.name]
    version = client.get_model_version_by_alias("tickertune-AAPL-xgb", "rank-1")
    assert int(version.tags["trial_number"]) == study.best_trial.number


@pytest.mark.slow
def test_two_processes_on_one_sqlite_study(tmp_path):
    """Two separate invocations on one SQLite file at once: no "database is locked"."""
    env = cli_env(tmp_path)
    cmd = [sys.executable, "-m", "tickertune", *TUNE, "--trials", "5"]
    procs = [subprocess.Popen([*cmd, "--worker-id", str(i)], cwd=tmp_path, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in (1, 2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    _check_parallel_study(tmp_path, f"sqlite:///{tmp_path}/results/tuning.db", 10, 2,
                          "".join(o + e for o, e in outs))


# Each process opens the same fresh files, all of them at the same instant per file.
_OPEN_AT_ONCE = """
import sys, time
from tickertune.storage import open_storage
start = float(sys.argv[1])
for i, url in enumerate(sys.argv[2:]):
    while time.time() < start + 0.5 * i:
        pass
    open_storage(url).optuna.get_all_studies()
"""


def test_processes_opening_one_fresh_sqlite_file_at_once(tmp_path):
    """Converting a fresh file to WAL from two processes at once deadlocks on its lock and
    SQLite fails one at once ("database is locked", whatever the busy timeout): seen in CI
    as a worker refused at start. Four processes, eight fresh files, each opened by all of
    them at the same instant: every open succeeds and every file ends in WAL mode."""
    import sqlite3
    import time

    files = [tmp_path / f"s{i}" / "tuning.db" for i in range(8)]
    start = time.time() + 8  # after every process has imported optuna
    procs = [subprocess.Popen([sys.executable, "-c", _OPEN_AT_ONCE, str(start),
                               *(f"sqlite:///{f}" for f in files)], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-2000:] for _, err in outs]
    for f in files:
        with sqlite3.connect(f) as con:
            assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)


@pytest.mark.slow
def test_four_workers_on_postgresql(tmp_path, pg_url):
    r = run_cli([*TUNE, "--trials", "10", "--workers", "4", "--storage", pg_url], tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("worker ") >= 4
    _check_parallel_study(tmp_path, pg_url, 10, 4, r.stdout + r.stderr)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("tickertune").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert sorted(p.data.tags["worker_id"] for p in parents) == ["1", "2", "3", "4"]
    assert {p.data.tags["storage_kind"] for p in parents} == {"postgresql"}


@pytest.mark.slow
def test_two_workers_on_a_journal_file(tmp_path):
    storage = f"journal:{tmp_path}/results/tuning.log"
    r = run_cli([*TUNE, "--trials", "6", "--workers", "2", "--storage", storage], tmp_path)
    assert r.returncode == 0, r.stderr
    from tickertune.storage import make_storage

    _check_parallel_study(tmp_path, make_storage(storage), 6, 2, r.stdout + r.stderr)


def test_aliases_settle_on_the_true_top_k_under_concurrent_registration(tmp_path):
    """Four threads register versions and move aliases at the same time; every one of them
    settles, and the aliases end at the top-3 of everything registered."""
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    name = "tickertune-RACE-transformer"
    client.create_registered_model(name)
    values = {w: [0.7 - 0.001 * ((w * 7 + i * 3) % 11) for i in range(4)] for w in range(4)}
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def worker(w: int) -> None:
        try:
            barrier.wait()
            for i, v in enumerate(values[w]):
                client.create_model_version(name, source=f"/tmp/none-{w}-{i}", tags={
                    "study_name": "s", "trial_number": str(w * 10 + i), "val_logloss": repr(v)})
                settle_aliases(client, name, "s", 3)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    allv = sorted((v, w * 10 + i) for w in values for i, v in enumerate(values[w]))[:3]
    for rank, (value, trial) in enumerate(allv, start=1):
        mv = client.get_model_version_by_alias(name, f"rank-{rank}")
        assert (float(mv.tags["val_logloss"]), int(mv.tags["trial_number"])) == (value, trial)
    assert sorted(client.get_registered_model(name).aliases) == ["rank-1", "rank-2", "rank-3"]


def test_aliases_settle_when_another_worker_registers_between_read_and_write(tmp_path):
    """The worst interleaving, made on purpose: each time this worker writes an alias,
    another worker first registers a better version and writes its own (stale) view.
    The aliases still end at the true top-2, and the other worker's stray rank-3 is gone."""
    real = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    name = "tickertune-RACE-xgb"
    real.create_registered_model(name)

    def register(trial: int, value: float) -> str:
        return real.create_model_version(name, source=f"/tmp/none-{trial}", tags={
            "study_name": "s", "trial_number": str(trial), "val_logloss": repr(value)}).version

    for trial, value in ((0, 0.70), (1, 0.69)):
        register(trial, value)
    sneaked = iter([(10, 0.60), (11, 0.59)])

    class Racing:
        """The real client, with another worker's registration slipped before each write."""

        def __getattr__(self, attr):
            return getattr(real, attr)

        def set_registered_model_alias(self, model, alias, version):
            entry = next(sneaked, None)
            if entry is not None:
                stale = register(*entry)
                real.set_registered_model_alias(model, "rank-3", stale)  # its own, other k
            real.set_registered_model_alias(model, alias, version)

    ranked = settle_aliases(Racing(), name, "s", 2)
    assert [(r.alias, r.trial_number) for r in ranked] == [("rank-1", 11), ("rank-2", 10)]
    aliases = real.get_registered_model(name).aliases
    assert sorted(aliases) == ["rank-1", "rank-2"]
    assert {a: real.get_model_version(name, v).tags["trial_number"] for a, v in aliases.items()} == {
        "rank-1": "11", "rank-2": "10"}


def test_a_stale_launcher_pid_is_ignored(monkeypatch):
    """A worker's environment variable inherited by an unrelated run must not stop it."""
    import threading as th

    from tickertune.workers import PARENT_ENV, watch_launcher

    monkeypatch.setenv(PARENT_ENV, "999999:1")
    before = {t.name for t in th.enumerate()}
    watch_launcher()
    assert PARENT_ENV not in __import__("os").environ  # not passed on to our own children
    assert "tickertune-launcher-watch" not in {t.name for t in th.enumerate()} - before


def test_printed_passwords_are_masked():
    import io

    from tickertune.config import MaskedStream, mask_secrets

    out = io.StringIO()
    MaskedStream(out).write("API request to http://tt:S3cret@h:5000/api failed; db postgresql://u:p/w@db/x\n")
    assert out.getvalue() == "API request to http://tt:***@h:5000/api failed; db postgresql://u:***@db/x\n"
    for text in ("http://localhost:5000/x?to=a@b.c", "mail user@example.com", "http://u@h:5000/x"):
        assert mask_secrets(text) == text
    assert mask_secrets("postgresql://user@srv:Secr3t@host/db") == "postgresql://user@srv:***@host/db"
    # SQLAlchemy takes an unencoded '?', '#' or '/' in a password
    assert mask_secrets("cannot open postgresql://u:pa?s#1/x@h:5432/db: refused") == \
        "cannot open postgresql://u:***@h:5432/db: refused"
