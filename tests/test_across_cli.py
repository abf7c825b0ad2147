"""generic-params --evaluate, cluster and report through the CLI, each logged to MLflow."""

from __future__ import annotations

import json

from mlflow.tracking import MlflowClient

from tests.conftest import SHORT, run_cli


def _runs(workdir, kind):
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    exp = client.get_experiment_by_name("tickertune")
    return client, client.search_runs([exp.experiment_id], f"tags.kind = '{kind}'")


def test_generic_params_evaluate_and_cluster(workdir):
    for t in ("AAPL", "AMZN"):
        r = run_cli(["tune", t, "--trials", "2", "--start", SHORT["start"], "--pruner", "none"], workdir)
        assert r.returncode == 0, r.stderr
    r = run_cli(["generic-params", "AAPL", "AMZN", "--evaluate"], workdir)
    assert r.returncode == 0, r.stderr
    doc = json.loads((workdir / "results" / "best_params" / "generic.json").read_text())
    assert doc["tickers"] == ["AAPL", "AMZN"] and doc["agg"] == "median"
    lines = r.stdout.splitlines()
    header = next(i for i, ln in enumerate(lines) if ln.startswith("ticker"))
    assert [ln.split()[0] for ln in lines[header + 2: header + 4]] == ["AAPL", "AMZN"]
    client, runs = _runs(workdir, "generic-params")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    m = runs[0].data.metrics
    assert m["AAPL.difference"] == m["AAPL.generic_logloss"] - m["AAPL.own_logloss"]
    assert {a.path for a in client.list_artifacts(runs[0].info.run_id)} == {"generic_transfer.csv", "generic.json"}

    r = run_cli(["cluster", "AAPL", "AMZN", "GOOG", "META", "NFLX", "NVDA", "--k", "2"], workdir)
    assert r.returncode == 0, r.stderr
    clusters = [ln for ln in r.stdout.splitlines() if ln.startswith("cluster ")]
    assert len(clusters) == 2
    members = [t for ln in clusters for t in ln.split(":", 1)[1].split("(")[0].replace(",", " ").split()]
    assert sorted(members) == ["AAPL", "AMZN", "GOOG", "META", "NFLX", "NVDA"]
    _, runs = _runs(workdir, "cluster")
    assert len(runs) == 1 and runs[0].data.params["k"] == "2"

    r = run_cli(["report", "AAPL"], workdir)
    assert r.returncode == 0, r.stderr
    assert (workdir / "results" / "reports" / "AAPL" / "index.html").is_file()
    _, runs = _runs(workdir, "report")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
