"""Where studies live: SQLite (default), a journal file, or PostgreSQL for many workers.

- `sqlite:///PATH`: one machine. WAL journaling and a 30 s busy timeout let a few
  processes share the file: each transaction takes the write lock up front and waits.
- `journal:PATH`: Optuna's append-only journal file; several processes on one machine
  (file locks, no database). No heartbeats: a killed worker's trial stays RUNNING.
- `postgresql://...`: several processes or machines on one study. Connections time out
  after `CONNECT_TIMEOUT` seconds, so an unreachable server is an error, not a hang.

On the RDB storages (SQLite, PostgreSQL) every running trial sends a heartbeat. When a
worker dies, its trial stops beating; after the grace period the next trial start in
any worker marks it FAIL and queues its params once more (Optuna's
`RetryHeartbeatStaleTrialCallback`). `StaleTrials.listeners` hear of each such trial,
so tracking can close the dead worker's MLflow runs.
"""

from __future__ import annotations

import copy
import logging
import sqlite3
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna

from tickertune.config import mask_secrets
from tickertune.errors import ConfigError
from tickertune.dbinit import open_store

log = logging.getLogger("tickertune")

CONNECT_TIMEOUT = 5  # seconds, PostgreSQL
SQLITE_BUSY_TIMEOUT = 30  # seconds a SQLite writer waits for another process's lock
MAX_RETRY = 1  # a dead worker's trial is retried once


@dataclass(frozen=True)
class Heartbeat:
    """Seconds between a running trial's heartbeats, and of silence before it counts as dead."""

    interval: int = 10  # 0 = off
    grace_period: int = 60  # > SQLITE_BUSY_TIMEOUT: a heartbeat stuck behind a lock is not death


@dataclass
class StaleTrials:
    """Optuna's stale-trial callback: retry the trial once, then tell every listener."""

    max_retry: int = MAX_RETRY
    listeners: list[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = field(default_factory=list)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        retried = len(trial.system_attrs.get("retry_history", [])) < self.max_retry
        # The retry copies the trial's user attrs; not its link to the dead trial's run.
        template = copy.copy(trial)
        template.user_attrs = {k: v for k, v in trial.user_attrs.items() if k != "mlflow_run_id"}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=self.max_retry)(study, template)
        log.warning("trial %d of %s stopped sending heartbeats (its worker died); marked FAIL%s",
                    trial.number, study.study_name,
                    ", its params are queued for one retry" if retried else ", already retried once")
        for listener in self.listeners:
            try:
                listener(study, trial)
            except Exception as exc:  # noqa: BLE001 - a listener must not stop the study
                log.warning("could not clean up after trial %d: %s", trial.number, mask_secrets(str(exc)))


@dataclass
class Storage:
    """An opened Optuna storage and what it can do."""

    url: str
    optuna: optuna.storages.BaseStorage
    kind: str  # sqlite | journal | postgresql | other
    stale: StaleTrials | None = None  # set when heartbeats are on


def kind_of(url: str) -> str:
    if url.startswith("journal:"):
        return "journal"
    if url.startswith("sqlite:"):
        return "sqlite"
    if url.startswith(("postgresql:", "postgresql+", "postgres:")):
        return "postgresql"
    return "other"


def in_memory(url: str) -> bool:
    """Whether `url` is an in-memory SQLite database (sqlite://, sqlite:///:memory:,
    sqlite+DRIVER:///:memory:, sqlite:///file:NAME?mode=memory&uri=true): it exists in one
    process only."""
    if not url.startswith("sqlite"):
        return False
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - a malformed URL: opening it reports the error
        return False
    if parsed.get_backend_name() != "sqlite":
        return False
    db, query = parsed.database, {k: str(v).lower() for k, v in parsed.query.items()}
    return db in (None, "", ":memory:") or (
        query.get("uri") in ("true", "1") and (query.get("mode") == "memory" or db.startswith("file::memory:")))


def open_storage(url: str, heartbeat: Heartbeat | None = Heartbeat()) -> Storage:
    """Open (creating if needed) the study storage at `url`; one-line ConfigError on failure."""
    kind = kind_of(url)
    try:
        if kind == "journal":
            return Storage(url, _journal(url), kind)
        sqlite_file = kind == "sqlite" and url.startswith("sqlite:///") and not in_memory(url)
        engine_kwargs: dict[str, Any] = {}
        if sqlite_file:
            engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT}}
        elif kind == "postgresql":
            engine_kwargs = {"connect_args": {"connect_timeout": CONNECT_TIMEOUT}, "pool_pre_ping": True}
        stale = StaleTrials() if heartbeat and heartbeat.interval else None
        beat = {"heartbeat_interval": heartbeat.interval, "grace_period": heartbeat.grace_period,
                "heartbeat_stale_trial_callback": stale} if stale else {}
        with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # SQLAlchemy knows PostgreSQL only by its long name; messages keep the user's URL.
            engine_url = "postgresql:" + url[len("postgres:"):] if url.startswith("postgres:") else url

            def _open() -> optuna.storages.RDBStorage:
                if sqlite_file:  # under open_store's per-file lock, see _set_wal
                    _set_wal(url)
                return _RDBStorage(engine_url, engine_kwargs=engine_kwargs or None, **beat)

            storage = open_store(url, _open)
    except ConfigError:
        raise
    except ImportError:
        raise ConfigError(f"study storage {mask_secrets(url)} needs a database driver: "
                          f"pip install 'tickertune[postgres]' (psycopg 3)") from None
    except Exception as exc:  # sqlalchemy/psycopg raise many types for a bad URL or a down server
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        raise ConfigError(f"cannot open study storage {mask_secrets(url)}: {mask_secrets(first)}") from None
    if sqlite_file:
        _sqlite_pragmas(storage)
    return Storage(url, storage, kind, stale)


class _RDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage whose heartbeat survives a failed write: Optuna's heartbeat
    thread dies on its first error (a lock timeout, a database blip), and other workers
    would then fail the live trial after the grace period."""

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except Exception as exc:  # noqa: BLE001 - the next beat tries again
            log.warning("heartbeat of trial id %d not recorded: %s", trial_id,
                        mask_secrets(str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)))


def _journal(url: str) -> optuna.storages.BaseStorage:
    from optuna.storages.journal import JournalFileBackend

    if not url[len("journal:"):].strip():  # Path("") would be ".", a directory
        raise ConfigError("--storage journal:PATH needs a file path, e.g. journal:results/tuning.log")
    path = Path(url[len("journal:"):])
    if path.is_dir():
        raise ConfigError(f"study storage {url} is a directory, not a journal file")
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def _set_wal(url: str) -> None:
    """Create the SQLite file's directory and put the file in WAL mode.

    WAL: outside readers (optuna-dashboard, `tickertune sql`) never block a writer, and a
    killed process cannot corrupt the file. The mode is stored in the file. Two processes
    converting one fresh file at once deadlock on its lock and SQLite fails one of them
    at once ("database is locked", busy timeout or not): callers hold the per-file lock."""
    path = Path(url[len("sqlite:///"):])
    if path.is_dir():
        raise ConfigError(f"study storage {url} is a directory, not a database file")
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT)
    try:
        con.execute("PRAGMA journal_mode=WAL")
    finally:
        con.close()


def _sqlite_pragmas(storage: optuna.storages.RDBStorage) -> None:
    from sqlalchemy import event

    @event.listens_for(storage.engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA synchronous=NORMAL")  # a report costs about half; WAL keeps it safe
        cur.close()
        dbapi_conn.isolation_level = None  # we BEGIN ourselves, below

    @event.listens_for(storage.engine, "begin")
    def _begin(conn: Any) -> None:
        # A deferred transaction that reads and then writes fails at once with "database
        # is locked" when another process wrote in between (the busy timeout does not
        # apply to that upgrade). Taking the write lock up front makes it wait instead.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    storage.engine.dispose()  # reconnect with the pragma


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """The Optuna storage at `url` without heartbeats (reading, listing, reporting)."""
    return open_storage(url, heartbeat=None).optuna
