"""`build_report`: PNGs per study, a self-contained index.html, and an MLflow run with both."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from tickertune.errors import NotFoundError
from tickertune.reports import build_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SINGLE = ["optimization_history", "param_importances", "intermediate_values",
          "parallel_coordinate", "timeline"]
MULTI = ["optimization_history", "parallel_coordinate", "timeline", "pareto_front"]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory):
    """One cwd for the module: a real 3-trial XGBoost study of AAPL plus an 8-trial
    two-objective study `xgb_tuning_AAPL_mo` in the same storage."""
    from tickertune.api import tune
    from tickertune.config import TuneConfig

    root = tmp_path_factory.mktemp("reports")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
            mp.delenv(var, raising=False)
        tune(TuneConfig(ticker="AAPL", trials=3, start="2018-01-01", progress=False, pruner="none"))
        url = f"sqlite:///{root}/results/tuning.db"
        mo = optuna.create_study(study_name="xgb_tuning_AAPL_mo", directions=["minimize", "minimize"],
                                 storage=url)
        mo.optimize(lambda t: (t.suggest_float("x", 0, 1), 1 - t.suggest_float("y", 0, 1)), n_trials=8)
        yield root, url


def test_report_files_index_and_mlflow_run(tuned) -> None:
    from mlflow.tracking import MlflowClient

    root, url = tuned
    result = build_report("aapl", url, root / "results", experiment="reports-test")

    out = root / "results" / "reports" / "AAPL"
    assert result.out_dir == out and result.index == out / "index.html"
    assert result.studies == ["xgb_tuning_AAPL", "xgb_tuning_AAPL_mo"]
    expected = ([f"xgb_tuning_AAPL_{p}.png" for p in SINGLE]
                + [f"xgb_tuning_AAPL_mo_{p}.png" for p in MULTI] + ["index.html"])
    assert [f.name for f in result.files] == expected
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)
    for f in result.files[:-1]:
        data = f.read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 5000, f

    page = result.index.read_text(encoding="utf-8")
    for name in result.studies:
        assert f"<h2>{name}</h2>" in page
    assert '<img src="xgb_tuning_AAPL_optimization_history.png"' in page
    assert '<img src="xgb_tuning_AAPL_mo_pareto_front.png"' in page
    study = optuna.load_study(study_name="xgb_tuning_AAPL", storage=url)
    assert f"<th>best value</th><td>{study.best_value:.5f}</td>" in page
    assert f"<th>best trial</th><td>{study.best_trial.number}</td>" in page
    assert "<th>trials COMPLETE</th><td>3</td>" in page
    assert f"<th>train_start</th><td>{study.user_attrs['train_start']}</td>" in page
    assert f"<th>test_end</th><td>{study.user_attrs['test_end']}</td>" in page
    mo = optuna.load_study(study_name="xgb_tuning_AAPL_mo", storage=url)
    assert f"</th><td>{len(mo.best_trials)}</td>" in page  # Pareto-front size
    assert "<script" not in page and "http://" not in page and "https://" not in page

    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name.startswith("report-AAPL-")
    assert run.data.tags["kind"] == "report" and run.data.tags["ticker"] == "AAPL"
    assert client.get_experiment(run.info.experiment_id).name == "reports-test"
    logged = sorted(a.path for a in client.list_artifacts(result.run_id, "report"))
    assert logged == sorted(f"report/{n}" for n in expected)


def test_plots_that_cannot_be_drawn_are_skipped(tuned) -> None:
    """One complete trial, no intermediate values: no importances, no intermediate plot.
    Text from the study is HTML-escaped."""
    root, url = tuned
    one = optuna.create_study(study_name="xgb_tuning_NFLX", storage=url)
    one.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    one.set_user_attr("train_start", "<b>&</b>")

    result = build_report("NFLX", url, root / "results", tracking=False)

    assert result.run_id is None
    assert [f.name for f in result.files] == [
        "xgb_tuning_NFLX_optimization_history.png", "xgb_tuning_NFLX_parallel_coordinate.png",
        "xgb_tuning_NFLX_timeline.png", "index.html"]
    page = result.index.read_text(encoding="utf-8")
    assert "<th>train_start</th><td>&lt;b&gt;&amp;&lt;/b&gt;</td>" in page and "<b>&" not in page


def test_unknown_ticker_is_not_found(tuned) -> None:
    root, url = tuned
    with pytest.raises(NotFoundError) as err:
        build_report("MSFT", url, root / "results", tracking=False)
    assert str(err.value) == f"no study of MSFT in {url}; run: tickertune tune MSFT"
    assert not (root / "results" / "reports" / "MSFT").exists()


def test_missing_sqlite_file_is_not_found_and_not_created(tmp_path: Path) -> None:
    db = tmp_path / "nowhere" / "tuning.db"
    url = f"sqlite:///{db}"
    with pytest.raises(NotFoundError, match=r"no study of AAPL in .*; run: tickertune tune AAPL"):
        build_report("AAPL", url, tmp_path / "results", tracking=False)
    assert not db.exists() and not db.parent.exists()
    assert not (tmp_path / "results").exists()
