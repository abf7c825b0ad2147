"""Everything that talks to MLflow: the parent run, one nested run per trial, batching.

Trial runs are written by one background thread so that MLflow's per-call cost
(a transaction each on the SQLite store, a request each on a server) stays off the
trial's critical path: a trial only appends to a queue. The thread keeps the order
of operations, and `finish()` drains it before the process moves on, so no finished
trial loses data and no run is left RUNNING on a normal or interrupted exit.

`NullTracker` has the same interface and does nothing (`--no-tracking`).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Iterable

from tickertune.config import mask_secrets
from tickertune.errors import ConfigError

log = logging.getLogger("tickertune")

# Optuna's trial state -> MLflow's run status.
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}

MAX_METRICS, MAX_PARAMS, MAX_TAGS = 1000, 100, 100  # MLflow log_batch limits per call
MAX_PARAM_LEN, MAX_TAG_LEN = 6000, 8000


def _chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _now_ms() -> int:
    return int(time.time() * 1000)


def check_reachable(tracking_uri: str | None, timeout: float = 5.0) -> None:
    """Fail fast (and before anything is written) when a tracking server does not answer."""
    if not tracking_uri or not tracking_uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    url = tracking_uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - user's own server
            if resp.status == 200:
                return
            problem = f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        problem = f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        problem = str(getattr(exc, "reason", exc))
    raise ConfigError(f"MLflow tracking server {mask_secrets(tracking_uri)} is not reachable "
                      f"({problem}); start it or pass --no-tracking")


class _Writer:
    """A single background thread that runs tracking calls in submission order."""

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue()
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._loop, name="tickertune-tracking", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], Any]) -> Future:
        fut: Future = Future()
        self._queue.put((fn, fut))
        return fut

    def flush(self) -> None:
        self._queue.join()

    def _loop(self) -> None:
        while True:
            fn, fut = self._queue.get()
            try:
                fut.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - reported, never kills the writer
                msg = mask_secrets(f"{type(exc).__name__}: {exc}".splitlines()[0])
                self.errors.append(msg)
                log.warning("tracking write failed: %s", msg)
                fut.set_exception(exc)
            finally:
                self._queue.task_done()


class TrialRun:
    """The MLflow run of one trial. Buffers metrics; writes happen on the writer thread."""

    def __init__(self, tracker: "MlflowTracker", created: Future, step_unit: str) -> None:
        self._tracker = tracker
        self._created = created
        self._prefix = f"{step_unit}/"
        self._metrics: list[tuple[str, float, int, int]] = []  # key, value, timestamp, step
        self._ended = False

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        """Buffer one step's metrics under '<unit>/<name>' (e.g. round/val_logloss)."""
        ts = _now_ms()
        for k, v in metrics.items():
            self._metrics.append((self._prefix + k, float(v), ts, int(step)))

    def log_metrics(self, metrics: dict[str, float]) -> None:
        """Buffer final (step 0) metrics: val_logloss, val_accuracy, duration_s ..."""
        ts = _now_ms()
        for k, v in metrics.items():
            self._metrics.append((k, float(v), ts, 0))

    def run_id(self, timeout: float | None = 60.0) -> str | None:
        """Wait for the run to exist (normally long done) and return its id; None on error."""
        try:
            return self._created.result(timeout=timeout)
        except Exception:  # noqa: BLE001 - already reported by the writer
            return None

    def end(self, state: str, error: str | None = None, tags: dict[str, str] | None = None) -> None:
        """Queue the buffered metrics and the final status (COMPLETE/PRUNED/FAIL)."""
        if self._ended:
            return
        self._ended = True
        metrics, self._metrics = self._metrics, []
        end_tags = {"trial_state": state, **(tags or {})}
        if error:
            end_tags["error"] = mask_secrets(error)[:MAX_TAG_LEN]
        created, client = self._created, self._tracker.client
        end_ms = _now_ms()

        def write() -> None:
            from mlflow.entities import Metric, RunTag

            run_id = created.result()
            for chunk in _chunks([Metric(k, v, ts, s) for k, v, ts, s in metrics], MAX_METRICS):
                client.log_batch(run_id, metrics=chunk)
            client.log_batch(run_id, tags=[RunTag(k, v) for k, v in end_tags.items()])
            client.set_terminated(run_id, status=RUN_STATUS[state], end_time=end_ms)

        self._tracker.writer.submit(write)


class MlflowTracker:
    """Parent run per invocation, nested run per trial, summary and artifacts on the parent."""

    enabled = True

    def __init__(self, tracking_uri: str | None, experiment_name: str) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        import mlflow
        from mlflow.tracking import MlflowClient

        for name in ("alembic", "mlflow"):  # after import: mlflow sets its own levels then
            logging.getLogger(name).setLevel(logging.WARNING)

        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        self.tracking_uri = mlflow.get_tracking_uri()
        self.client = MlflowClient(self.tracking_uri)
        self.experiment_name = experiment_name
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self._owns_parent = False
        self.writer = _Writer()
        self._open: dict[int, TrialRun] = {}

    # -- parent ---------------------------------------------------------------------------
    def start_parent(self, run_name: str, params: dict[str, str], tags: dict[str, str]) -> str:
        """Attach to MLFLOW_RUN_ID (under `mlflow run`) or create the parent run."""
        env_run = os.environ.get("MLFLOW_RUN_ID")
        if env_run:
            run = self.client.get_run(env_run)
            self.experiment_id = run.info.experiment_id
            self.parent_run_id = env_run
            existing = dict(run.data.params)
        else:
            self.experiment_id = self._experiment_id()
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
            self.parent_run_id = run.info.run_id
            self._owns_parent = True
            existing = {}
        # Params are immutable: never re-log a key `mlflow run` already set from -P.
        fresh = {k: v for k, v in params.items() if k not in existing}
        self.log_parent(params=fresh, tags=tags if env_run else {})
        return self.parent_run_id

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        env_id = os.environ.get("MLFLOW_EXPERIMENT_ID")
        if env_id:
            return env_id
        exp = self.client.get_experiment_by_name(self.experiment_name)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(self.experiment_name)
        except MlflowException:  # another worker created it first
            exp = self.client.get_experiment_by_name(self.experiment_name)
            if exp is None:
                raise
            return exp.experiment_id

    def log_parent(
        self,
        params: dict[str, str] | None = None,
        metrics: dict[str, float] | None = None,
        tags: dict[str, str] | None = None,
        artifacts: Iterable[tuple[Path, str | None]] = (),
    ) -> None:
        """Write params / metrics / tags / files to the parent run now (batched)."""
        from mlflow.entities import Metric, Param, RunTag

        assert self.parent_run_id is not None
        ts = _now_ms()
        p = [Param(k, mask_secrets(str(v))[:MAX_PARAM_LEN]) for k, v in (params or {}).items()]
        m = [Metric(k, float(v), ts, 0) for k, v in (metrics or {}).items()]
        t = [RunTag(k, mask_secrets(str(v))[:MAX_TAG_LEN]) for k, v in (tags or {}).items()]
        for chunk in _chunks(p, MAX_PARAMS):
            self.client.log_batch(self.parent_run_id, params=chunk)
        for chunk in _chunks(m, MAX_METRICS):
            self.client.log_batch(self.parent_run_id, metrics=chunk)
        for chunk in _chunks(t, MAX_TAGS):
            self.client.log_batch(self.parent_run_id, tags=chunk)
        for path, artifact_dir in artifacts:
            self.client.log_artifact(self.parent_run_id, str(path), artifact_dir)

    # -- trials ---------------------------------------------------------------------------
    def start_trial(
        self,
        number: int,
        run_name: str,
        params: dict[str, Any],
        tags: dict[str, str],
        step_unit: str,
        on_created: Callable[[str], None] | None = None,
    ) -> TrialRun:
        """Create the trial's nested run in the background; `on_created(run_id)` links it."""
        from mlflow.entities import Param
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        client, exp_id, parent = self.client, self.experiment_id, self.parent_run_id
        start_ms = _now_ms()
        all_tags = {MLFLOW_PARENT_RUN_ID: parent, **tags}
        plist = [Param(k, mask_secrets(str(v))[:MAX_PARAM_LEN]) for k, v in params.items()]

        def create() -> str:
            run = client.create_run(exp_id, start_time=start_ms, tags=all_tags, run_name=run_name)
            rid = run.info.run_id
            for chunk in _chunks(plist, MAX_PARAMS):
                client.log_batch(rid, params=chunk)
            if on_created is not None:
                on_created(rid)
            return rid

        run = TrialRun(self, self.writer.submit(create), step_unit)
        self._open[number] = run
        return run

    def end_trial(self, number: int, state: str, error: str | None = None,
                  tags: dict[str, str] | None = None) -> None:
        run = self._open.pop(number, None)
        if run is not None:
            run.end(state, error, tags)

    # -- end ------------------------------------------------------------------------------
    def finish(self, status: str = "FINISHED") -> list[str]:
        """Close any open trial run as FAILED, drain the queue, end the parent if ours.

        Returns the tracking errors seen (empty when every write landed)."""
        for number in list(self._open):
            self.end_trial(number, "FAIL", error="the invocation ended before this trial did")
        self.writer.flush()
        if self._owns_parent and self.parent_run_id:
            self.client.set_terminated(self.parent_run_id, status=status)
        return list(self.writer.errors)


class NullTrialRun:
    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float]) -> None:
        pass

    def run_id(self, timeout: float | None = None) -> None:
        return None


class NullTracker:
    """The tracker for --no-tracking: same interface, no MLflow."""

    enabled = False
    parent_run_id = None
    tracking_uri = None

    def start_parent(self, run_name: str, params: dict[str, str], tags: dict[str, str]) -> None:
        return None

    def log_parent(self, **_: Any) -> None:
        pass

    def start_trial(self, number: int, run_name: str, params: dict[str, Any], tags: dict[str, str],
                    step_unit: str, on_created: Callable[[str], None] | None = None) -> NullTrialRun:
        return NullTrialRun()

    def end_trial(self, number: int, state: str, error: str | None = None,
                  tags: dict[str, str] | None = None) -> None:
        pass

    def finish(self, status: str = "FINISHED") -> list[str]:
        return []
