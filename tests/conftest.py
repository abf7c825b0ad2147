"""Shared fixtures: every test runs in its own directory with its own MLflow store."""

from __future__ import annotations

import os
import sys
from pathlib import Path

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
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def cli_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a `python -m tickertune` subprocess rooted at tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path}/mlflow.db"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env["PYTHONPATH"] = str(REPO / "src")
    return env


def run_cli(args: list[str], cwd: Path, **kw):
    import subprocess

    return subprocess.run([sys.executable, "-m", "tickertune", *args], cwd=cwd,
                          env=kw.pop("env", None) or cli_env(cwd), capture_output=True, text=True,
                          timeout=kw.pop("timeout", 600), **kw)
