"""`mlflow run` on this project: the project's run is the parent of every trial run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_mlflow_run_local_env(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    for name in ("MLproject", "python_env.yaml", "requirements.txt", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, project / name)
    shutil.copytree(REPO / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path}/mlflow.db"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    mlflow_cli = os.path.join(os.path.dirname(sys.executable), "mlflow")
    r = subprocess.run(
        [mlflow_cli, "run", str(project), "-P", "ticker=AAPL", "-P", "trials=2",
         "-P", "start=2018-01-01", "-P", "pruner=none", "--env-manager", "local"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    run_id = re.search(r"Run \(ID '([0-9a-f]{32})'\) succeeded", r.stderr).group(1)
    assert "xgb_tuning_AAPL: added 2 complete" in r.stdout  # the default model is "all"
    assert "transformer_tuning_AAPL: added 2 complete" in r.stdout
    assert "registered: models:/tickertune-AAPL-transformer@rank-1" in r.stdout
    assert f"a bigger search: mlflow run . -P ticker=AAPL -P trials=200" in r.stdout

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    project_run = client.get_run(run_id)
    assert project_run.info.status == "FINISHED"
    assert project_run.data.params["ticker"] == "AAPL"  # from -P, not overwritten
    assert project_run.data.params["trials"] == "2"
    assert project_run.data.metrics["xgb.n_complete"] == 2  # our summary landed on it
    assert project_run.data.metrics["transformer.n_complete"] == 2
    assert "transformer.verdict" in project_run.data.tags
    runs = client.search_runs([project_run.info.experiment_id])
    children = [x for x in runs if x.data.tags.get("mlflow.parentRunId") == run_id]
    assert len(runs) == 5 and len(children) == 4
    assert sorted((c.data.tags["model"], int(c.data.tags["trial_number"])) for c in children) == [
        ("transformer", 0), ("transformer", 1), ("xgb", 0), ("xgb", 1)]
    assert all(c.info.status == "FINISHED" for c in children)
    assert (project / "results" / "best_params" / "AAPL.json").is_file()
