"""Read-only views of a study storage (what `tickertune studies` prints)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from tickertune.errors import NotFoundError


def list_studies(storage_url: str) -> list[list[Any]]:
    """One row per study: name, direction(s), trials by state, best value and trial."""
    if storage_url.startswith("sqlite:///") and not Path(storage_url[len("sqlite:///"):]).is_file():
        raise NotFoundError(f"no study database at {storage_url[len('sqlite:///'):]}; "
                            f"run: tickertune tune TICKER")
    import optuna

    from tickertune.storage import make_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(storage_url)
    rows = []
    for summary in sorted(optuna.get_all_study_summaries(storage, include_best_trial=False),
                          key=lambda s: s.study_name):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        states = Counter(t.state.name for t in study.get_trials(deepcopy=False))
        directions = ",".join(d.name.lower() for d in study.directions)
        best_value = best_trial = None
        if len(study.directions) == 1 and states["COMPLETE"]:
            best_value, best_trial = f"{study.best_value:.5f}", study.best_trial.number
        rows.append([summary.study_name, directions, sum(states.values()), states["COMPLETE"],
                     states["PRUNED"], states["FAIL"], states["RUNNING"], best_value, best_trial])
    return rows


def run_sql(storage_url: str, query: str) -> tuple[list[str], list[tuple]]:
    """Run one read-only query on the study database; returns (columns, rows).

    SQLite files are opened read-only; other databases run it in a transaction that is
    rolled back, so a stray UPDATE changes nothing."""
    from tickertune.config import mask_secrets
    from tickertune.errors import ConfigError

    if not query.strip():
        raise ConfigError("sql: the query is empty")
    if storage_url.startswith("sqlite:///"):
        path = Path(storage_url[len("sqlite:///"):])
        if not path.is_file():
            raise NotFoundError(f"no study database at {path}; run: tickertune tune TICKER")
        import sqlite3

        try:
            with sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True) as con:
                cur = con.execute(query)
                return [d[0] for d in cur.description or []], cur.fetchall()
        except sqlite3.Error as exc:
            raise ConfigError(f"sql: {exc}") from None
    if storage_url.startswith("journal:"):
        raise ConfigError(f"sql: {storage_url} is a journal file, not a database; "
                          f"use 'tickertune studies --storage {storage_url}'")
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import SQLAlchemyError

    from tickertune.storage import CONNECT_TIMEOUT, kind_of

    url = "postgresql:" + storage_url[len("postgres:"):] if storage_url.startswith("postgres:") else storage_url
    try:
        engine = create_engine(url, connect_args={"connect_timeout": CONNECT_TIMEOUT}
                               if kind_of(url) == "postgresql" else {})
        with engine.connect() as conn:
            try:
                result = conn.execute(text(query))
                cols = list(result.keys()) if result.returns_rows else []
                rows = [tuple(r) for r in result.fetchall()] if result.returns_rows else []
            finally:
                conn.rollback()
        return cols, rows
    except SQLAlchemyError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"sql: {mask_secrets(first)}") from None
