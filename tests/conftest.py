"""Shared fixtures: every test runs in its own directory with its own MLflow store."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import optuna
import pytest

REPO = Path(__file__).resolve().parents[1]
# A short, recent range keeps trials fast while leaving every segment its minimum size.
SHORT = {"start": "2018-01-01", "end": "2023-09-21"}


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh cwd with MLflow pointed at a SQLite store inside it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME",
                "TICKERTUNE_STORAGE", "TICKERTUNE_THREADS"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def cli_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a `python -m tickertune` subprocess rooted at tmp_path."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MLFLOW_") and k not in ("TICKERTUNE_STORAGE", "TICKERTUNE_THREADS")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path}/mlflow.db"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env["PYTHONPATH"] = str(REPO / "src")
    return env


def run_cli(args: list[str], cwd: Path, **kw):
    import subprocess

    return subprocess.run([sys.executable, "-m", "tickertune", *args], cwd=cwd,
                          env=kw.pop("env", None) or cli_env(cwd), capture_output=True, text=True,
                          timeout=kw.pop("timeout", 600), **kw)


def study_trials(storage: str, study: str) -> list | None:
    """The trials of `study` while another process may still be creating it; None until
    it exists. A SQLite file is read through a read-only connection: opening it the usual
    way writes Optuna's version row, which can race the tuner's own schema setup."""
    import optuna
    import sqlalchemy.exc

    if storage.startswith("sqlite:///"):
        path = storage[len("sqlite:///"):]
        if not os.path.exists(path):
            return None
        storage = f"sqlite:///file:{path}?mode=ro&uri=true"
    not_yet = (KeyError, sqlalchemy.exc.OperationalError, optuna.exceptions.StorageInternalError)
    try:
        rdb = optuna.storages.RDBStorage(storage)
    except not_yet:
        return None  # the schema (or its version row) is not there yet
    try:
        return optuna.load_study(study_name=study, storage=rdb).get_trials(deepcopy=False)
    except not_yet:
        return None  # no study yet
    finally:
        rdb.engine.dispose()


# -- PostgreSQL ---------------------------------------------------------------------------
# .ci/run starts the server and exports TICKERTUNE_TEST_PG (a fresh database); outside CI
# the local server's `postgres` database is the default. Each test gets its own database.
PG_ADMIN = os.environ.get("TICKERTUNE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _pg_problem() -> str | None:
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install -e '.[test]')"
    try:
        psycopg.connect(PG_ADMIN, connect_timeout=3).close()
    except Exception as exc:  # noqa: BLE001
        return f"PostgreSQL at {PG_ADMIN} is not reachable: {str(exc).strip().splitlines()[0]}"
    return None


@pytest.fixture(scope="session")
def pg_admin() -> str:
    """The admin URL of a reachable PostgreSQL; skipped outside CI when there is none."""
    problem = _pg_problem()
    if problem:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{problem} (under CI=true the PostgreSQL tests must run; .ci/run starts it)")
        pytest.skip(problem)
    return PG_ADMIN


def _pg_execute(admin: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(admin, connect_timeout=5, autocommit=True) as con:
        con.execute(sql)


def pg_database(admin: str, name: str) -> str:
    """Create the (fresh) database `name` and return its URL."""
    _pg_execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _pg_execute(admin, f'CREATE DATABASE "{name}"')
    return admin.rsplit("/", 1)[0] + "/" + name


def drop_pg_database(admin: str, name: str) -> None:
    _pg_execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture()
def pg_url(pg_admin: str):
    """A fresh, empty PostgreSQL database for one test (dropped afterwards)."""
    import uuid

    name = f"tt_{uuid.uuid4().hex[:12]}"
    url = pg_database(pg_admin, name)
    yield url
    drop_pg_database(pg_admin, name)


class ExplodingPruner(optuna.pruners.BasePruner):
    """An Optuna pruner with a bug (user code inside the trial loop that raises): every
    trial it is asked about ends FAIL with 'ValueError: pruner exploded at step N'."""

    def prune(self, study, trial) -> bool:
        raise ValueError(f"pruner exploded at step {trial.last_step}")
