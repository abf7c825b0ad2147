"""Bad-input sweep: each row is one bad input given to the real CLI.

For every row the test checks what a user sees and what is left behind:

- the one error line on stderr (`tickertune: error: ...`, or argparse's `error:` line);
- the exit code (2: bad input or configuration);
- that nothing was written: no study (and, where a study already exists, not one row of
  the study tables changed), no MLflow run, no best-params JSON; rows that fail before
  the storage is opened leave the working directory exactly as it was;
- that it fails fast (under 20 s; unreachable storages and tracking servers included);
- where the input holds a password, that it appears nowhere in what the run prints.

Rows run in-process (`tickertune.cli.main`); a few also run as a real subprocess
(`test_real_process`) to prove the exit code and that stderr holds that one line only.
test_data.py covers the CSV checks line by line; here the CSV rows are other variants of
the same faults, checked against the study and tracking stores as well.
"""

from __future__ import annotations

import re
import socket
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pandas as pd
import pytest

from tests.conftest import SHORT, run_cli
from tests.test_data import _iso, _line, _slice_frame
from tickertune.cli import main
from tickertune.data import load_bars

FAST_S = 20.0  # every bad input must be refused within this many seconds
RUN = ["--start", SHORT["start"], "--end", SHORT["end"], "--trials", "1"]
STALE_RUN_ID = "0123456789abcdef0123456789abcdef"
ERR = "tickertune: error: "
ARG_ERR = "tickertune tune: error: "

# Tables of Optuna's RDB schema that a refused run must not touch.
STUDY_TABLES = ("studies", "study_directions", "study_user_attributes", "study_system_attributes",
                "trials", "trial_params", "trial_values", "trial_user_attributes",
                "trial_intermediate_values")


# --------------------------------------------------------------------------- helpers


def _free_port() -> int:
    """A local port where nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _db_rows(db: Path, tables: tuple[str, ...]) -> dict[str, list[tuple]]:
    """Every row of the given tables that exist and are not empty; {} when there is no file."""
    if not db.is_file():
        return {}
    con = sqlite3.connect(db)
    try:
        have = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        out = {t: sorted(con.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
               for t in tables if t in have}
    finally:
        con.close()
    return {t: rows for t, rows in out.items() if rows}


def _study_trials(db: Path) -> dict[str, int]:
    """study name -> number of trials."""
    if not db.is_file():
        return {}
    con = sqlite3.connect(db)
    try:
        return dict(con.execute("SELECT s.study_name, COUNT(t.trial_id) FROM studies s "
                                "LEFT JOIN trials t ON t.study_id = s.study_id GROUP BY s.study_name"))
    finally:
        con.close()


def _mlflow_runs(tmp: Path) -> int:
    db = tmp / "mlflow.db"
    if not db.is_file():
        return 0
    con = sqlite3.connect(db)
    try:
        if not con.execute("SELECT 1 FROM sqlite_master WHERE name = 'runs'").fetchone():
            return 0
        return con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    finally:
        con.close()


def _listing(tmp: Path) -> list[str]:
    return sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*"))


def _copy_db(src: Path, dst: Path) -> None:
    """Copy a (WAL-mode) SQLite database consistently."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    a, b = sqlite3.connect(src), sqlite3.connect(dst)
    try:
        a.backup(b)
    finally:
        a.close()
        b.close()


def _make_study(tmp: Path, name: str, directions: list[str], **attrs) -> None:
    """A study created directly with Optuna in tmp/results/tuning.db (another mode's study)."""
    import optuna

    (tmp / "results").mkdir(exist_ok=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp}/results/tuning.db")
    study = optuna.create_study(study_name=name, storage=storage, directions=directions)
    for k, v in attrs.items():
        study.set_user_attr(k, v)
    storage.engine.dispose()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _keep_mlflow_uri():
    """main() sets MLflow's process-wide tracking URI; give the next test the one it had."""
    from mlflow.tracking._tracking_service import utils

    old = utils._tracking_uri
    yield
    utils._tracking_uri = old


@pytest.fixture(scope="module")
def aapl_bars() -> pd.DataFrame:
    return load_bars("AAPL").frame


@pytest.fixture(scope="module")
def tuned_db(tmp_path_factory) -> Path:
    """A real study made by one tiny successful run (xgb, 1 trial, SHORT, no tracking)."""
    root = tmp_path_factory.mktemp("tuned")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_RUN_ID", raising=False)
        rc = main(["-q", "tune", "AAPL", *RUN, "--no-tracking", "--no-progress"])
    assert rc == 0
    db = root / "results" / "tuning.db"
    assert _study_trials(db) == {"xgb_tuning_AAPL": 1}
    return db


@pytest.fixture()
def silent_server():
    """A TCP server on 127.0.0.1 that accepts connections and never says a word."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.1)  # so the accept loop sees `stop` soon
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield srv.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    srv.close()
    for c in conns:
        c.close()


# --------------------------------------------------------------------------- rows

@dataclass(frozen=True)
class Row:
    """build(tmp, ctx) -> (argv after 'tune', expected error line: exact text or a pattern)."""

    build: Callable[[Path, SimpleNamespace], tuple[list[str], object]]
    argparse: bool = False  # argparse's own error (usage + 'error:' line)
    strict: bool = True  # refused before the storage is opened: the directory stays as it was
    # 'silent' (silent_server), 'study' (tuned_db), 'pg' (psycopg needed), 'no-driver' (psycopg
    # hidden), 'no-gpu' (skipped where CUDA is available)
    needs: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    secret: str = ""  # a password in the input: never in stdout, stderr or a log record
    command: str = "tune"


def _csv(mutate: Callable[[pd.DataFrame], tuple[pd.DataFrame, str]]):
    """A CSV row: the valid 1000-row AAPL slice of test_data, broken by `mutate`."""
    def build(tmp: Path, ctx: SimpleNamespace):
        d, problem = mutate(_slice_frame(ctx.aapl))
        path = tmp / "bad.csv"
        d.to_csv(path, index=False)
        return ["AAPL", "--data", f"csv:{path}", "--trials", "1"], f"{ERR}{path}: {problem}"
    return build


def _csv_text(text: str, problem: str):
    def build(tmp: Path, ctx: SimpleNamespace):
        path = tmp / "bad.csv"
        path.write_text(text)
        return ["AAPL", "--data", f"csv:{path}", "--trials", "1"], f"{ERR}{path}: {problem}"
    return build


def _missing_close(d):
    return d.drop(columns="close"), "missing column 'close' (found: date, open, high, low, volume)"


def _decimal_comma(d):
    d.loc[7, "volume"] = "12,5"  # written quoted by pandas, read back as one cell
    return d, f"non-numeric value '12,5' in column 'volume' at line {_line(7)}"


def _duplicate_date(d):
    d.loc[600, "date"] = d.loc[599, "date"]
    return d, f"duplicate date {_iso(d, 599)} at lines {_line(599)} and {_line(600)}"


def _newest_first(d):
    d = d.iloc[::-1].reset_index(drop=True)  # a common export order: newest bar first
    return d, f"dates not in ascending order: {_iso(d, 1)} at line {_line(1)} comes after {_iso(d, 0)}"


def _zero_low(d):
    d.loc[10, "low"] = 0
    return d, f"non-positive price 0 in column 'low' at line {_line(10)}"


def _negative_open(d):
    d.loc[20, "open"] = -1.25
    return d, f"non-positive price -1.25 in column 'open' at line {_line(20)}"


def _rows_479(d):
    return d.iloc[:479], ("too few rows: 479 bars, at least 480 needed (look-back 50, gaps 50, "
                          "train/val/test >= 200/50/50); widen --start/--end")


def _nan_text_run(d):
    d.loc[250:253, "high"] = "NaN"
    return d, f"missing value in column 'high' at lines {_line(250)}-{_line(253)} (4 rows)"


def _csv_missing_file(tmp, ctx):
    path = tmp / "nope.csv"
    return ["AAPL", "--data", f"csv:{path}", "--trials", "1"], f"{ERR}{path}: file not found"


def _csv_directory(tmp, ctx):
    path = tmp / "prices"
    path.mkdir()
    return ["AAPL", "--data", f"csv:{path}", "--trials", "1"], f"{ERR}{path}: is a directory, not a CSV file"


def _plain(args: list[str], expected: object):
    return lambda tmp, ctx: (list(args), expected)


def _choices(flag: str, bad: str, choices: list[str]) -> re.Pattern[str]:
    listed = ", ".join(f"'?{re.escape(c)}'?" for c in choices)  # quotes differ across Pythons
    return re.compile(re.escape(f"{ARG_ERR}argument {flag}: invalid choice: '{bad}' ") + rf"\(choose from {listed}\)")


SPLIT_CONFLICT = (
    f"{ERR}study 'xgb_tuning_AAPL' was tuned on another split (validation 2021-12-22..2022-09-29, "
    "test from 2022-12-12); this data gives validation 2021-10-27..2022-07-22: use the same "
    "--data/--start/--end, or another --storage")


def _split_conflict(tmp, ctx):
    # Same ticker and storage as the tuned study, but the data ends three months earlier.
    return ["AAPL", "--start", SHORT["start"], "--end", "2023-06-30", "--trials", "1"], SPLIT_CONFLICT


def _two_objective_study(tmp, ctx):
    _make_study(tmp, "xgb_tuning_AAPL", ["minimize", "minimize"])
    return ["AAPL", *RUN], (
        f"{ERR}study 'xgb_tuning_AAPL' in this storage has 2 objective(s), this run has 1: it "
        "belongs to another study mode (use another --storage or mode)")


def _maximising_study(tmp, ctx):
    _make_study(tmp, "xgb_tuning_AAPL", ["maximize"])
    return ["AAPL", *RUN], f"{ERR}study 'xgb_tuning_AAPL' in this storage maximises; tickertune minimises"


def _cv_folds_study(tmp, ctx):
    _make_study(tmp, "xgb_tuning_AAPL_cv3", ["minimize"], cv_folds=2)
    return ["AAPL", *RUN, "--cv-folds", "3"], (
        f"{ERR}study 'xgb_tuning_AAPL_cv3' was tuned with cv_folds=2, this run asks for 3")


def _pg_refused(scheme: str = "postgresql", shown: str = "postgresql"):
    """Nothing listens on the port. `postgres://` (Heroku's spelling) is read as postgresql://."""
    def build(tmp, ctx):
        rest = f"://postgres@127.0.0.1:{ctx.free_port}/nodb"
        return ["AAPL", *RUN, "--storage", scheme + rest], re.compile(
            re.escape(f"{ERR}cannot open study storage {shown}{rest}: ") + r".*Connection refused.*")
    return build


def _pg_password_refused(password: str):
    """A refused PostgreSQL URL with a password: the message shows it as ***."""
    def build(tmp, ctx):
        url = f"postgresql://postgres:{password}@127.0.0.1:{ctx.free_port}/nodb"
        shown = f"postgresql://postgres:***@127.0.0.1:{ctx.free_port}/nodb"
        return ["AAPL", *RUN, "--storage", url], re.compile(
            re.escape(f"{ERR}cannot open study storage {shown}: ") + r".*Connection refused.*")
    return build


def _pg_silent(tmp, ctx):
    url = f"postgresql://postgres@127.0.0.1:{ctx.silent_port}/db"
    return ["AAPL", *RUN, "--storage", url], re.compile(
        re.escape(f"{ERR}cannot open study storage {url}: ") + r".*timeout expired.*")


def _pg_no_driver(tmp, ctx):
    url = f"postgresql://postgres@127.0.0.1:{ctx.free_port}/nodb"
    return ["AAPL", *RUN, "--storage", url], (
        f"{ERR}study storage {url} needs a database driver: pip install 'tickertune[postgres]' (psycopg 3)")


def _sqlite_parent_is_file(tmp, ctx):
    (tmp / "blocker").write_text("not a directory\n")
    url = f"sqlite:///{tmp}/blocker/x.db"
    return ["AAPL", *RUN, "--storage", url], (
        f"{ERR}cannot open study storage {url}: [Errno 17] File exists: '{tmp}/blocker'")


def _pg_missing_database(tmp, ctx):
    """The server answers, the database is not there (a typo, not yet created)."""
    from sqlalchemy.engine import make_url

    url = make_url(ctx.pg_admin).set(database="tickertune_no_such_db").render_as_string(hide_password=False)
    return ["AAPL", *RUN, "--storage", url], re.compile(
        re.escape(f"{ERR}cannot open study storage {url}: (psycopg.OperationalError) connection failed: ")
        + r'.*database "tickertune_no_such_db" does not exist')


def _deleted_experiment(tmp, ctx):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    client.delete_experiment(client.create_experiment("tickertune"))
    return ["AAPL", *RUN], (f"{ERR}MLflow experiment 'tickertune' is deleted; restore it "
                            "(mlflow experiments restore) or pass --experiment")


def _server_down_for(command: str):
    """A command other than tune that reads the registry, with the server down."""
    def build(tmp, ctx):
        uri = f"http://127.0.0.1:{ctx.free_port}"
        return ["AAPL", "--tracking-uri", uri], re.compile(
            re.escape(f"{ERR}MLflow tracking server {uri} is not reachable (") + r".*Connection refused\); start it")
    return build


def _journal_directory(tmp, ctx):
    (tmp / "store").mkdir()
    url = f"journal:{tmp}/store"
    return ["AAPL", *RUN, "--storage", url], f"{ERR}study storage {url} is a directory, not a journal file"


def _sqlite_directory(tmp, ctx):
    (tmp / "store").mkdir()
    url = f"sqlite:///{tmp}/store"
    return ["AAPL", *RUN, "--storage", url], (
        f"{ERR}study storage {url} is a directory, not a database file")


def _tracking_down(tmp, ctx):
    uri = f"http://127.0.0.1:{ctx.free_port}"
    return ["AAPL", *RUN, "--tracking-uri", uri], re.compile(
        re.escape(f"{ERR}MLflow tracking server {uri} is not reachable (") + r".*Connection refused"
        + re.escape("); start it or pass --no-tracking"))


def _tracking_password_down(tmp, ctx):
    uri = f"http://tt:S3cret@127.0.0.1:{ctx.free_port}"
    return ["AAPL", *RUN, "--tracking-uri", uri], re.compile(
        re.escape(f"{ERR}MLflow tracking server http://tt:***@127.0.0.1:{ctx.free_port} is not reachable (")
        + r".*Connection refused" + re.escape("); start it or pass --no-tracking"))


def _tracking_pg(port: str, problem: str):
    """A PostgreSQL tracking store: nothing listens ('free_port') or it never answers ('silent_port')."""
    def build(tmp, ctx):
        uri = f"postgresql://postgres@127.0.0.1:{getattr(ctx, port)}/mlflow"
        return ["AAPL", *RUN, "--tracking-uri", uri], re.compile(
            re.escape(f"{ERR}MLflow tracking store {uri} is not reachable (") + problem
            + re.escape("); check the server and the database, or pass --no-tracking"))
    return build


def _tracking_silent(tmp, ctx):
    uri = f"http://127.0.0.1:{ctx.silent_port}"
    return ["AAPL", *RUN, "--tracking-uri", uri], re.compile(
        re.escape(f"{ERR}MLflow tracking server {uri} is not reachable (") + r".*timed out.*"
        + re.escape("); start it or pass --no-tracking"))


def _workers_in_memory(url: str):
    return _plain(["AAPL", *RUN, "--workers", "2", "--storage", url], (
        f"{ERR}--workers 2 needs a storage every worker can open: {url} lives in one process; "
        "use a file (sqlite:///results/tuning.db), journal:PATH or postgresql://..."))


def _stale_run_id(tmp, ctx):
    return ["AAPL", *RUN], (f"{ERR}MLflow tracking at sqlite:///{tmp}/mlflow.db failed: "
                            f"Run with id={STALE_RUN_ID} not found")


ROWS: dict[str, Row] = {
    # -- malformed CSV (--data csv:PATH)
    "csv-missing-close": Row(_csv(_missing_close)),
    "csv-non-numeric": Row(_csv(_decimal_comma)),
    "csv-empty-file": Row(_csv_text("", "the file is empty")),
    "csv-header-only": Row(_csv_text("Date,Open,High,Low,Close,Adj Close,Volume\n", "no data rows")),
    "csv-duplicate-date": Row(_csv(_duplicate_date)),
    "csv-unsorted-newest-first": Row(_csv(_newest_first)),
    "csv-zero-price": Row(_csv(_zero_low)),
    "csv-negative-price": Row(_csv(_negative_open)),
    "csv-too-few-rows": Row(_csv(_rows_479)),
    "csv-nan-run": Row(_csv(_nan_text_run)),
    "csv-missing-file": Row(_csv_missing_file),
    "csv-directory": Row(_csv_directory),
    # -- ticker not in the bundled sample (offline)
    "unknown-ticker": Row(_plain(["ZZZZ", *RUN], (
        f"{ERR}no data for ticker 'ZZZZ': the bundled sample has AAPL, AMZN, GOOG, META, NFLX, NVDA; "
        "use --data csv:PATH for your own file or --data yfinance (pip install 'tickertune[online]') "
        "to download"))),
    # -- argparse
    "trials-0": Row(_plain(["AAPL", "--trials", "0"],
                           f"{ARG_ERR}argument --trials: must be at least 1 (got 0)"), argparse=True),
    "trials-negative": Row(_plain(["AAPL", "--trials", "-3"],
                                  f"{ARG_ERR}argument --trials: must be at least 1 (got -3)"), argparse=True),
    "trials-abc": Row(_plain(["AAPL", "--trials", "abc"],
                             f"{ARG_ERR}argument --trials: 'abc' is not a whole number"), argparse=True),
    "pruner-unknown": Row(_plain(["AAPL", *RUN, "--pruner", "foo"], _choices(
        "--pruner", "foo", ["hyperband", "asha", "median", "none"])), argparse=True),
    "model-unknown": Row(_plain(["AAPL", *RUN, "--model", "foo"], _choices(
        "--model", "foo", ["xgb", "transformer", "all"])), argparse=True),
    # -- settings that cannot work together
    # -- parallel workers and crash recovery
    "workers-0": Row(_plain(["AAPL", "--workers", "0"],
                            f"{ARG_ERR}argument --workers: must be at least 1 (got 0)"), argparse=True),
    "heartbeat-negative": Row(_plain(["AAPL", *RUN, "--heartbeat-interval", "-1"],
                                     f"{ERR}--heartbeat-interval must be 0 (off) or more (got -1)")),
    "grace-not-longer-than-heartbeat": Row(_plain(
        ["AAPL", *RUN, "--heartbeat-interval", "10", "--grace-period", "10"],
        f"{ERR}--grace-period (10 s) must be longer than --heartbeat-interval (10 s)")),
    "worker-id-negative": Row(_plain(["AAPL", *RUN, "--worker-id", "-1"],
                                     f"{ERR}--worker-id must be 0 or more (got -1)")),
    "workers-with-bad-data": Row(_plain(["AAPL", *RUN, "--workers", "2", "--data", "csv:nope.csv"],
                                        f"{ERR}nope.csv: file not found")),
    "workers-in-memory-storage": Row(_workers_in_memory("sqlite:///:memory:")),
    "workers-in-memory-storage-short": Row(_workers_in_memory("sqlite://")),
    "storage-journal-directory": Row(_journal_directory),
    "storage-journal-no-path": Row(_plain(["AAPL", *RUN, "--storage", "journal:"], (
        f"{ERR}--storage journal:PATH needs a file path, e.g. journal:results/tuning.log"))),
    "cv-folds-1": Row(_plain(["AAPL", *RUN, "--cv-folds", "1"], f"{ERR}--cv-folds must be 2 or more (got 1)")),
    "top-k-negative": Row(_plain(["AAPL", *RUN, "--top-k", "-1"], f"{ERR}--top-k must be 0 or more (got -1)")),
    "cv-with-multi-objective": Row(_plain(["AAPL", *RUN, "--cv-folds", "3", "--multi-objective"],
                                          f"{ERR}--cv-folds and --multi-objective cannot be combined")),
    "device-cuda-without-gpu": Row(_plain(["AAPL", *RUN, "--model", "transformer", "--device", "cuda"],
                                          f"{ERR}--device cuda: no CUDA device is available"),
                                   needs=("no-gpu",)),
    # -- --set
    "set-unknown-param": Row(_plain(["AAPL", *RUN, "--set", "nosuchparam=1"], re.compile(
        re.escape(f"{ERR}--set nosuchparam: unknown parameter; known: ")
        + r"([a-z_]+, )*max_depth(, [a-z_]+)*"))),
    "set-out-of-range": Row(_plain(["AAPL", *RUN, "--set", "xgb.max_depth=999"],
                                   f"{ERR}--set xgb.max_depth=999: outside the search range [2, 8]")),
    "set-not-key-value": Row(_plain(["AAPL", *RUN, "--set", "foo"], f"{ERR}--set 'foo' is not KEY=VALUE")),
    "set-not-a-number": Row(_plain(["AAPL", *RUN, "--set", "xgb.max_depth=abc"],
                                   f"{ERR}--set xgb.max_depth=abc: expected a number in [2, 8]")),
    "set-other-model": Row(_plain(["AAPL", *RUN, "--model", "xgb", "--set", "transformer.window=10"],
                                  f"{ERR}--set transformer.window: 'transformer' is not a model of this run (xgb)")),
    "set-bad-choice": Row(_plain(["AAPL", *RUN, "--set", "tree_method=foo"],
                                 f"{ERR}--set xgb.tree_method=foo: choose from hist, approx, exact")),
    "set-the-loss": Row(_plain(["AAPL", *RUN, "--set", "eval_metric=auc"], re.compile(
        re.escape(f"{ERR}--set eval_metric: fixed, it defines the loss every study minimises; settable: ")
        + r"(?!.*eval_metric).*"))),
    "set-the-seed": Row(_plain(["AAPL", *RUN, "--set", "seed=3"], re.compile(
        re.escape(f"{ERR}--set seed: fixed, use --seed (each trial adds its number); settable: ")
        + r"(?!.*seed).*"))),
    # -- an existing study of another split or mode (tracking on: it must not start either)
    "study-other-split": Row(_split_conflict, strict=False, needs=("study",)),
    "study-other-mode-2-objectives": Row(_two_objective_study, strict=False),
    "study-maximises": Row(_maximising_study, strict=False),
    "study-other-cv-folds": Row(_cv_folds_study, strict=False),
    # -- study storage that cannot be used
    "storage-pg-refused": Row(_pg_refused(), needs=("pg",)),
    "storage-pg-missing-database": Row(_pg_missing_database, needs=("pg", "pg-server")),
    "storage-pg-password-refused": Row(_pg_password_refused("S3cret"), needs=("pg",), secret="S3cret"),
    "storage-pg-password-special-chars": Row(_pg_password_refused("pa?ss#1/x"), needs=("pg",),
                                             secret="pa?ss#1/x"),
    "storage-pg-silent": Row(_pg_silent, needs=("pg", "silent")),
    "storage-pg-short-scheme-refused": Row(_pg_refused("postgres", "postgres"), needs=("pg",)),
    "storage-pg-no-driver": Row(_pg_no_driver, needs=("no-driver",)),
    "storage-sqlite-parent-is-a-file": Row(_sqlite_parent_is_file),
    "storage-sqlite-directory": Row(_sqlite_directory),
    "storage-unknown-scheme": Row(_plain(["AAPL", *RUN, "--storage", "foo://bar"], (
        f"{ERR}cannot open study storage foo://bar: Can't load plugin: sqlalchemy.dialects:foo"))),
    # -- MLflow tracking that cannot be used
    "tracking-server-down": Row(_tracking_down),
    "tracking-server-silent": Row(_tracking_silent, needs=("silent",)),
    "tracking-server-password-down": Row(_tracking_password_down, secret="S3cret"),
    "tracking-pg-refused": Row(_tracking_pg("free_port", r".*Connection refused.*"), needs=("pg",)),
    "tracking-pg-silent": Row(_tracking_pg("silent_port", r".*timeout expired.*"), needs=("pg", "silent")),
    "tracking-experiment-deleted": Row(_deleted_experiment, strict=False),
    "ensemble-server-down": Row(_server_down_for("ensemble"), command="ensemble"),
    "evaluate-server-down": Row(_server_down_for("evaluate"), command="evaluate"),
    "tracking-stale-mlflow-run-id": Row(_stale_run_id, strict=False, env={"MLFLOW_RUN_ID": STALE_RUN_ID}),
}

# Rows also run as a real process: argparse, a data error, a study conflict, a tracking error,
# and the passwords (a real stderr also holds every log record and warning).
SUBPROCESS_ROWS = ["trials-abc", "csv-header-only", "study-other-split", "tracking-server-down",
                   "storage-pg-password-refused", "storage-pg-password-special-chars",
                   "tracking-server-password-down"]


# --------------------------------------------------------------------------- the sweep


def _prepare(row: Row, tmp: Path, request) -> tuple[list[str], object]:
    if "pg" in row.needs:
        pytest.importorskip("psycopg", reason="needs the PostgreSQL driver (pip install -e '.[postgres]')")
    if "no-gpu" in row.needs:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a CUDA device")
    if "no-driver" in row.needs:  # as if the postgres extra were not installed
        request.getfixturevalue("monkeypatch").setitem(sys.modules, "psycopg", None)
    ctx = SimpleNamespace(aapl=request.getfixturevalue("aapl_bars"), free_port=_free_port())
    if "silent" in row.needs:
        ctx.silent_port = request.getfixturevalue("silent_server")
    if "pg-server" in row.needs:
        ctx.pg_admin = request.getfixturevalue("pg_admin")
    if "study" in row.needs:
        _copy_db(request.getfixturevalue("tuned_db"), tmp / "results" / "tuning.db")
    args, expected = row.build(tmp, ctx)
    return [row.command, *args], expected


def _check_line(line: str, expected: object) -> None:
    if isinstance(expected, re.Pattern):
        assert expected.fullmatch(line), f"{line!r} does not match {expected.pattern!r}"
    else:
        assert line == expected


def _check_no_secret(row: Row, *texts: str) -> None:
    if row.secret:
        for text in texts:
            assert row.secret not in text, f"the password {row.secret!r} was printed:\n{text}"


def _check_nothing_written(tmp: Path, row: Row, listing: list[str], studies: dict) -> None:
    db = tmp / "results" / "tuning.db"
    assert _db_rows(db, STUDY_TABLES) == studies, "the study storage changed"
    assert _mlflow_runs(tmp) == 0, "an MLflow run was created"
    assert not (tmp / "results" / "best_params").exists(), "a best-params JSON was written"
    assert not [p for p in tmp.glob("mlruns/**/*") if p.is_file()], "MLflow artifacts were written"
    if row.strict:
        assert _listing(tmp) == listing, "refused before the storage, yet files appeared"


@pytest.mark.parametrize("row_id", list(ROWS))
def test_bad_input_is_refused(row_id, workdir, request, capsys, caplog, monkeypatch):
    row = ROWS[row_id]
    for k, v in row.env.items():
        monkeypatch.setenv(k, v)
    argv, expected = _prepare(row, workdir, request)
    db = workdir / "results" / "tuning.db"
    listing, studies, trials = _listing(workdir), _db_rows(db, STUDY_TABLES), _study_trials(db)
    if "study" in row.needs:
        assert trials == {"xgb_tuning_AAPL": 1}  # the row really meets an existing study
    capsys.readouterr()

    t0 = time.monotonic()
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse
        rc = exc.code
    elapsed = time.monotonic() - t0
    out, err = capsys.readouterr()

    assert rc == 2, err
    assert out == ""
    lines = err.splitlines()
    assert lines, "nothing on stderr"
    if row.argparse:
        assert lines[0].startswith("usage: tickertune tune "), err
        assert len([x for x in lines if "error:" in x]) == 1, err
        _check_line(lines[-1], expected)
    else:  # (log records go to pytest's capture here; test_real_process sees the real stderr)
        assert len(lines) == 1, err
        _check_line(lines[0], expected)
    assert elapsed < FAST_S, f"took {elapsed:.1f} s"
    _check_no_secret(row, out, err, caplog.text)
    _check_nothing_written(workdir, row, listing, studies)
    assert _study_trials(db) == trials


@pytest.mark.parametrize("row_id", SUBPROCESS_ROWS)
def test_real_process(row_id, tmp_path, request):
    """The real `python -m tickertune` process: exit 2, and stderr is that one line only."""
    row = ROWS[row_id]
    argv, expected = _prepare(row, tmp_path, request)
    db = tmp_path / "results" / "tuning.db"
    listing, studies = _listing(tmp_path), _db_rows(db, STUDY_TABLES)

    proc = run_cli(argv, tmp_path, timeout=120)

    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    if row.argparse:
        assert lines[0].startswith("usage: tickertune tune "), proc.stderr
        _check_line(lines[-1], expected)
    else:
        assert len(lines) == 1, f"stderr should be one line:\n{proc.stderr}"
        _check_line(lines[0], expected)
    assert proc.stdout == ""
    _check_no_secret(row, proc.stdout, proc.stderr)
    _check_nothing_written(tmp_path, row, listing, studies)


def test_controls(workdir, aapl_bars, tuned_db):
    """The rows fail for the stated reason only: 480 rows are enough, and the tuned study's own
    split is accepted (a later start that gives the same split dates too)."""
    from tickertune.features import build_features
    from tickertune.splits import chronological_split

    path = workdir / "ok.csv"
    _slice_frame(aapl_bars).iloc[:480].to_csv(path, index=False)
    bars = load_bars("AAPL", f"csv:{path}")
    assert len(bars) == 480
    chronological_split(build_features(bars.frame), source=bars.source)

    from tickertune import tuning
    from tickertune.storage import make_storage

    db = workdir / "results" / "tuning.db"
    _copy_db(tuned_db, db)
    storage = make_storage(f"sqlite:///{db}")
    for start in (SHORT["start"], "2018-01-02"):  # 2018-01-01 was a holiday: same bars
        b = load_bars("AAPL", "sample", start, SHORT["end"])
        attrs = {"cv_folds": 0, **chronological_split(build_features(b.frame), source=b.source).dates()}
        assert tuning.check_study("xgb_tuning_AAPL", storage, attrs) is not None
    storage.engine.dispose()


@pytest.mark.parametrize("password", ["S3cret", "pa?ss#1/x", "p@ss:w/rd", "a#b", "x?y=1&z", "p%40ss",
                                      "2024/pw", "12#x", "99?q"])
def test_mask_secrets(password):
    """A password in a URL is masked whatever it holds ('?', '#', '/', '@', ':', %-escapes,
    digits first), inside a longer message and with a query string after the database.
    Digits then '/', '?' or '#' in an http URL are a port and a path (urllib reads
    http://u:2024/pw@h as host u, port 2024): nothing to mask there."""
    from tickertune.config import mask_secrets

    port_first = re.match(r"\d+[/?#]", password) is not None
    for scheme in ("postgresql", "postgres", "postgresql+psycopg", "http", "https", "mysql"):
        if port_first and scheme.startswith("http"):
            url = f"{scheme}://user:{password}@db.example:5432/name"
            assert mask_secrets(url) == url
            continue
        url = f"{scheme}://user:{password}@db.example:5432/name?sslmode=require"
        text = f"cannot open study storage {url}: connection refused ({url})"
        masked = mask_secrets(text)
        assert password not in masked
        shown = f"{scheme}://user:***@db.example:5432/name?sslmode=require"
        assert masked == f"cannot open study storage {shown}: connection refused ({shown})"


@pytest.mark.parametrize(("text", "masked"), [
    # a password in a URL inside another URL's path or query is still found
    ("http://h:5000/login?next=postgresql://u:S3cret@db/x", "http://h:5000/login?next=postgresql://u:***@db/x"),
    ("https://proxy:3128/http://u:S3cret@h/x", "https://proxy:3128/http://u:***@h/x"),
    # ports and paths of non-database URLs are not passwords
    ("mlflow-artifacts://host:5000/a@b", "mlflow-artifacts://host:5000/a@b"),
    ("git+https://h:443/r@v1", "git+https://h:443/r@v1"),
    ("s3://b:1/x@y", "s3://b:1/x@y"),
    ("models:/tickertune-AAPL-xgb@rank-1", "models:/tickertune-AAPL-xgb@rank-1"),
    ("POSTGRESQL://u:pw@h/db", "POSTGRESQL://u:***@h/db"),
    ("mysql+pymysql://u:1/2@h/db", "mysql+pymysql://u:***@h/db"),
])
def test_mask_secrets_in_context(text, masked):
    from tickertune.config import mask_secrets

    assert mask_secrets(text) == masked
