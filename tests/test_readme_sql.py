"""Every SQL query of the README and of docs/queries.sql runs on a real study database and
returns the right rows; `tickertune sql` runs queries read-only."""

from __future__ import annotations

import re
import sqlite3

import optuna
import pytest

from tests.conftest import REPO, SHORT, ExplodingPruner
from tickertune.api import tune
from tickertune.config import TuneConfig

QUERIES = re.findall(r"```sql\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
COOKBOOK = [q.strip() + "\n" for q in
            re.split(r"^-- name: .*$", (REPO / "docs" / "queries.sql").read_text(), flags=re.M)[1:]]


@pytest.fixture(scope="module")
def study_db(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sql")
    mp = pytest.MonkeyPatch()
    mp.chdir(tmp)
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp}/mlflow.db")
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        mp.delenv(var, raising=False)
    try:
        tune(TuneConfig(ticker="AAPL", trials=6, seed=3, progress=False, **SHORT))
        tune(TuneConfig(ticker="AAPL", trials=1, seed=3, progress=False, **SHORT),
             pruner=ExplodingPruner())  # one FAIL trial
        tune(TuneConfig(ticker="NVDA", trials=2, seed=3, progress=False, pruner="none", **SHORT))
        tune(TuneConfig(ticker="AAPL", trials=3, seed=3, progress=False, pruner="none", top_k=0,
                        models=("transformer",), fixed_params={"max_epochs": 1}, device="cpu", **SHORT))
    finally:
        mp.undo()
    path = tmp / "results" / "tuning.db"
    return path, {name: optuna.load_study(study_name=name, storage=f"sqlite:///{path}")
                  for name in ("transformer_tuning_AAPL", "xgb_tuning_AAPL", "xgb_tuning_NVDA")}


def _run(path, sql):
    with sqlite3.connect(path) as con:
        return con.execute(sql).fetchall()


def test_readme_has_the_six_queries_of_the_cookbook():
    assert len(QUERIES) == 6
    assert len(COOKBOOK) == 7
    assert [q.strip() for q in QUERIES] == [q.strip() for q in COOKBOOK[:6]]


def test_studies_with_direction(study_db):
    path, studies = study_db
    assert _run(path, QUERIES[0]) == [("transformer_tuning_AAPL", "MINIMIZE", 3),
                                      ("xgb_tuning_AAPL", "MINIMIZE", 7), ("xgb_tuning_NVDA", "MINIMIZE", 2)]


def test_trials_by_state(study_db):
    path, studies = study_db
    expected = []
    for name in sorted(studies):
        states = sorted({t.state.name for t in studies[name].trials})
        expected += [(name, s, sum(t.state.name == s for t in studies[name].trials)) for s in states]
    rows = _run(path, QUERIES[1])
    assert rows == expected
    assert ("xgb_tuning_AAPL", "FAIL", 1) in rows


def test_best_trial_per_study(study_db):
    path, studies = study_db
    assert _run(path, QUERIES[2]) == [
        (name, studies[name].best_trial.number, studies[name].best_value) for name in sorted(studies)]


def test_best_params(study_db):
    path, studies = study_db
    rows = _run(path, QUERIES[3])
    best = studies["xgb_tuning_AAPL"].best_trial.params
    assert [r[0] for r in rows] == sorted(best)
    for name, value in rows:
        assert float(value) == pytest.approx(best[name])


def test_intermediate_values(study_db):
    path, studies = study_db
    rows = _run(path, QUERIES[4])
    trials = [t for t in studies["xgb_tuning_AAPL"].trials if t.intermediate_values]
    assert [r[0] for r in rows] == [t.number for t in trials]
    for (number, state, n, first, last, best), t in zip(rows, trials):
        steps = sorted(t.intermediate_values)
        assert state == t.state.name
        assert (n, first, last) == (len(steps), 1, steps[-1])
        assert steps == list(range(1, steps[-1] + 1))  # every round reported
        assert best == pytest.approx(min(t.intermediate_values.values()))


def test_mlflow_run_per_trial(study_db):
    path, studies = study_db
    rows = _run(path, QUERIES[5])
    trials = studies["xgb_tuning_AAPL"].trials
    assert rows == [(t.number, t.state.name, t.user_attrs["mlflow_run_id"]) for t in trials]
    assert len({r[2] for r in rows}) == 7


def test_cookbook_decodes_categoricals(study_db):
    path, studies = study_db
    rows = dict(_run(path, COOKBOOK[6]))
    best = studies["transformer_tuning_AAPL"].best_trial.params
    assert sorted(rows) == sorted(best)
    for name in ("scheduler", "window", "d_model", "batch_size", "nhead", "dim_feedforward"):
        assert rows[name] == best[name]  # the choice itself, not its index
    assert isinstance(rows["scheduler"], str)


def test_sql_command_is_read_only(study_db, tmp_path):
    from tests.conftest import run_cli

    path, studies = study_db
    r = run_cli(["sql", "SELECT study_name FROM studies ORDER BY 1", "--storage", f"sqlite:///{path}"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["study_name", "-----------------------", "transformer_tuning_AAPL",
                                     "xgb_tuning_AAPL", "xgb_tuning_NVDA", "(3 rows)"]
    r = run_cli(["sql", "DELETE FROM trials", "--storage", f"sqlite:///{path}"], tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip() == "tickertune: error: sql: attempt to write a readonly database"
    assert len(optuna.load_study(study_name="xgb_tuning_AAPL", storage=f"sqlite:///{path}").trials) == 7
