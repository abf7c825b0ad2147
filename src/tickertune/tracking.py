"""Everything that talks to MLflow: the parent run, one nested run per trial, batching.

Trial runs are written by a separate, low-priority writer *process*. A call to
MLflow's SQLite store costs 10-100 ms of Python (SQLAlchemy) work; in a thread of the
tuning process that work would hold the GIL and slow every trial by a third. In its
own process it runs on whatever CPU the trials leave idle, and a trial only puts a
message on a queue. Requests to create a run jump the queue, so a trial never waits
behind earlier trials' metric batches. `finish()` drains the queue; if the tuning
process dies, the writer still drains what it was given before it exits, so no
finished trial loses its data.

`NullTracker` has the same interface and does nothing (`--no-tracking`).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import multiprocessing
import os
import queue
import signal
import socket
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from tickertune.config import MaskSecrets, mask_secrets
from tickertune.dbinit import open_store
from tickertune.errors import ConfigError
from tickertune.procs import alive, host_id, start_time

log = logging.getLogger("tickertune")

# Optuna's trial state -> MLflow's run status.
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}

MAX_METRICS, MAX_PARAMS, MAX_TAGS = 1000, 100, 100  # MLflow log_batch limits per call
MAX_PARAM_LEN, MAX_TAG_LEN = 6000, 8000
WRITER_NICE = 10
# On an invocation's own parent run: who runs it, and when it last said it was alive.
HOST_TAG, PID_TAG, PID_START_TAG = "tickertune.host", "tickertune.pid", "tickertune.pid_start"
HEARTBEAT_TAG = "tickertune.heartbeat"  # unix seconds, refreshed by the writer process


def _chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _now_ms() -> int:
    return int(time.time() * 1000)


def quiet_mlflow() -> None:
    """Import mlflow with its INFO chatter (migrations, validation notes) turned down."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # Its "View run at <url>" lines would print a tracking URL's password.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    import mlflow  # noqa: F401 - sets its own log levels on import; ours must come after

    for name in ("alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
        for handler in logging.getLogger(name).handlers:  # MLflow's own: its texts quote URLs
            if not any(isinstance(f, MaskSecrets) for f in handler.filters):
                handler.addFilter(MaskSecrets())


_DB_SCHEMES = ("postgresql:", "postgresql+", "mysql:", "mysql+", "mssql:", "mssql+")


def check_reachable(tracking_uri: str | None, timeout: float = 5.0,
                    fallback: str | None = "pass --no-tracking") -> None:
    """Fail fast (and before anything is written) when a tracking server or database does
    not answer: MLflow itself retries a database for about 100 s before it gives up.
    `fallback`: what else the user can do, named in the message (None: nothing).
    A URI that answered once in this process is not asked again (loading the members of
    an ensemble would otherwise ask once per member)."""
    if not tracking_uri or tracking_uri in _REACHABLE:
        return
    if tracking_uri.startswith(_DB_SCHEMES):
        _check_database(tracking_uri, timeout, fallback)
    elif tracking_uri.startswith(("http://", "https://")):
        _check_server(tracking_uri, timeout, fallback)
    _REACHABLE.add(tracking_uri)


_REACHABLE: set[str] = set()


def _check_server(tracking_uri: str, timeout: float, fallback: str | None) -> None:
    import base64
    import urllib.error
    import urllib.parse
    import urllib.request

    # user:password@ in the URL is MLflow's basic auth: urllib wants it as a header.
    parts = urllib.parse.urlsplit(tracking_uri.rstrip("/") + "/health")
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    request = urllib.request.Request(urllib.parse.urlunsplit(parts._replace(netloc=netloc)))
    if parts.username is not None:
        creds = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        request.add_header("Authorization", "Basic " + base64.b64encode(creds.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 - user's own server
            if resp.status == 200:
                return
            problem = f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):  # it answers; credentials (a token, env vars) are MLflow's business
            return
        problem = f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        problem = str(getattr(exc, "reason", exc))
    raise ConfigError(f"MLflow tracking server {mask_secrets(tracking_uri)} is not reachable "
                      f"({problem}); start it" + (f" or {fallback}" if fallback else ""))


def _check_database(tracking_uri: str, timeout: float, fallback: str | None) -> None:
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(tracking_uri, connect_args={"connect_timeout": int(timeout)})
        try:
            with engine.connect():
                pass
        finally:
            engine.dispose()
    except ImportError:
        raise ConfigError(f"MLflow tracking store {mask_secrets(tracking_uri)} needs a database "
                          f"driver: pip install 'tickertune[postgres]' (psycopg 3)") from None
    except Exception as exc:  # noqa: BLE001 - sqlalchemy and driver errors alike
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        raise ConfigError(f"MLflow tracking store {mask_secrets(tracking_uri)} is not reachable "
                          f"({mask_secrets(first)}); check the server and the database"
                          + (f", or {fallback}" if fallback else "")) from None


def open_client(tracking_uri: str) -> Any:
    """An MlflowClient whose store is open (schema created or migrated)."""
    from mlflow.tracking import MlflowClient

    return open_store(tracking_uri, lambda: MlflowClient(tracking_uri))


def _writer_main(tracking_uri: str, requests: Any, results: Any, parent_pid: int,
                 beat_run: str | None = None, beat_every: float = 0.0) -> None:
    """The writer process: run MLflow calls, creates first, until told to stop.

    Every `beat_every` seconds it also stamps `beat_run` (the parent run) with the time, so
    that an invocation on another machine can tell a dead worker's parent run from a live one."""
    # Ctrl-C in a terminal reaches the whole process group: the tuner handles it and
    # then tells the writer to drain and stop; the writer must not die half-way.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # also a process group's TERM: drain first
    try:
        os.nice(WRITER_NICE)
    except OSError:
        pass
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    try:  # connections inherited through fork belong to the parent: start a fresh pool
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        for engine in list(SqlAlchemyStore._engine_map.values()):
            engine.dispose(close=False)
    except (ImportError, AttributeError):
        pass
    client = MlflowClient(tracking_uri)
    try:  # open the store now (engine, schema check), not on the first trial's clock
        client.search_experiments(max_results=1)
    except Exception:  # noqa: BLE001 - the real calls below report any problem
        pass
    pending: collections.deque = collections.deque()
    creates: collections.deque = collections.deque()
    stopping = False
    next_beat = time.monotonic() + beat_every

    def beat() -> None:
        nonlocal next_beat
        if not beat_run or not beat_every or time.monotonic() < next_beat:
            return
        next_beat = time.monotonic() + beat_every
        try:
            client.set_tag(beat_run, HEARTBEAT_TAG, str(int(time.time())))
        except Exception:  # noqa: BLE001 - a missed beat is tried again next interval
            pass

    def take(msg: tuple) -> None:
        nonlocal stopping
        if msg[0] == "stop":
            stopping = True
        (creates if msg[0] == "create" else pending).append(msg)

    while True:
        beat()
        try:  # gather everything queued, then serve creates before anything else
            while True:
                take(requests.get_nowait())
        except queue.Empty:
            pass
        if not creates and not pending:
            if stopping:
                return
            try:
                take(requests.get(timeout=1.0))
            except queue.Empty:
                if os.getppid() != parent_pid:  # the tuning process is gone: nothing more comes
                    stopping = True
            continue
        kind, op_id, body = (creates or pending).popleft()
        try:
            if kind == "create":
                run = client.create_run(body["experiment_id"], start_time=body["start_ms"],
                                        tags=body["tags"], run_name=body["run_name"])
                value: Any = run.info.run_id
                for chunk in _chunks([Param(k, v) for k, v in body["params"]], MAX_PARAMS):
                    client.log_batch(value, params=chunk)
            elif kind == "end":
                rid = body["run_id"]
                metrics = [Metric(k, v, ts, st) for k, v, ts, st in body["metrics"]]
                for chunk in _chunks(metrics, MAX_METRICS):
                    client.log_batch(rid, metrics=chunk)
                client.log_batch(rid, tags=[RunTag(k, v) for k, v in body["tags"].items()])
                client.set_terminated(rid, status=body["status"], end_time=body["end_ms"])
                value = None
            else:  # "flush" / "stop": everything before it is done
                value = None
            results.put((op_id, True, value))
        except Exception as exc:  # noqa: BLE001 - reported to the tuning process
            results.put((op_id, False, mask_secrets(f"{type(exc).__name__}: {exc}".splitlines()[0])))


def experiment_id(client: Any, name: str) -> str:
    """The id of experiment `name`, created if missing; another process creating it at the
    same moment (several workers, a report beside a tuning run) is not an error."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # another process created it first
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


@contextlib.contextmanager
def closing_run(client: Any, run_id: str) -> Iterator[None]:
    """End run `run_id` FINISHED when the block ends, KILLED on Ctrl-C, FAILED on an error:
    a one-shot run (summary, evaluation, report) is never left RUNNING."""
    try:
        yield
    except BaseException as exc:
        try:
            client.set_terminated(run_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        except Exception:  # noqa: BLE001 - the store is what failed: report the first error
            pass
        raise
    client.set_terminated(run_id, "FINISHED")


def log_summary_run(experiment: str, run_name: str, tags: dict[str, str], params: dict[str, Any],
                    metrics: dict[str, float], files: Iterable[Path] = ()) -> str:
    """One finished MLflow run holding the result of a command (cluster, generic params...)."""
    quiet_mlflow()
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    rid = client.create_run(experiment_id(client, experiment), run_name=run_name, tags=tags).info.run_id
    with closing_run(client, rid):
        ts = _now_ms()
        ms = [Metric(k, float(v), ts, 0) for k, v in metrics.items() if v == v]
        ps = [Param(k, mask_secrets(str(v))[:MAX_PARAM_LEN]) for k, v in params.items()]
        for chunk in _chunks(ms, MAX_METRICS):
            client.log_batch(rid, metrics=chunk)
        for chunk in _chunks(ps, MAX_PARAMS):
            client.log_batch(rid, params=chunk)
        for f in files:
            client.log_artifact(rid, str(f))
    return rid


class _Writer:
    """Client side of the writer process: send operations, get futures back."""

    def __init__(self, tracking_uri: str, beat_run: str | None = None, beat_every: float = 0.0) -> None:
        # fork: the child starts instantly with mlflow already imported. It builds its
        # own client and database connections, never touching the parent's.
        ctx = multiprocessing.get_context("fork")
        self._requests, self._results = ctx.Queue(), ctx.Queue()
        self._futures: dict[int, Future] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self.errors: list[str] = []
        self._proc = ctx.Process(target=_writer_main, name="tickertune-tracking",
                                 args=(tracking_uri, self._requests, self._results, os.getpid(),
                                       beat_run, beat_every))
        self._proc.start()
        self._closed = False
        self._dead: str | None = None
        self._collector = threading.Thread(target=self._collect, name="tickertune-results", daemon=True)
        self._collector.start()

    def submit(self, kind: str, body: dict[str, Any] | None = None) -> Future:
        fut: Future = Future()
        if self._dead is not None:  # nobody would ever answer
            fut.set_exception(RuntimeError(self._dead))
            return fut
        with self._lock:
            op_id = next(self._ids)
            self._futures[op_id] = fut
        self._requests.put((kind, op_id, body or {}))
        return fut

    def _collect(self) -> None:
        while True:
            try:
                op_id, ok, value = self._results.get(timeout=1.0)
            except queue.Empty:
                if not self._proc.is_alive():
                    self._fail_all(f"the tracking writer process exited (code {self._proc.exitcode})")
                    return
                continue
            with self._lock:
                fut = self._futures.pop(op_id, None)
            if fut is None:
                continue
            if ok:
                fut.set_result(value)
            else:
                self.errors.append(value)
                log.warning("tracking write failed: %s", value)
                fut.set_exception(RuntimeError(value))

    def _fail_all(self, why: str) -> None:
        self._dead = why
        with self._lock:
            futures, self._futures = list(self._futures.values()), {}
        if futures:
            self.errors.append(why)
            log.warning("tracking: %s; %d writes lost", why, len(futures))
        for fut in futures:
            fut.set_exception(RuntimeError(why))

    def flush(self, timeout: float | None = 600.0) -> None:
        """Block until every operation sent so far is done (or failed, or `timeout` passed)."""
        if self._closed:
            return
        try:
            self.submit("flush").result(timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - failures were reported; a timeout is new
            if not isinstance(exc, RuntimeError):
                self.errors.append(f"tracking writer did not drain within {timeout:.0f} s")

    def close(self) -> None:
        """Drain, stop and reap the writer process (killed if it does not stop)."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        if self._proc.is_alive():
            self._requests.put(("stop", -1, {}))
            self._proc.join(timeout=30)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout=5)


class TrialRun:
    """The MLflow run of one trial. Buffers metrics; writes happen on the writer thread."""

    def __init__(self, tracker: "MlflowTracker", created: Future, step_unit: str,
                 on_created: Callable[[str], None] | None = None) -> None:
        self._tracker = tracker
        self._created = created
        self._on_created = on_created
        self._linked = False
        self._link_lock = threading.Lock()
        # Link the trial to its run as soon as the run exists (on the results thread), so a
        # worker killed mid-trial leaves a study that names the run to close.
        created.add_done_callback(lambda f: None if f.exception() else self._link(f.result()))
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

    def run_id(self, timeout: float | None = 120.0) -> str | None:
        """Wait for the run to exist (normally long done), link it once; None on error."""
        try:
            rid = self._created.result(timeout=timeout)
        except Exception:  # noqa: BLE001 - already reported by the writer
            return None
        self._link(rid)  # waits if the results thread is linking right now
        return rid

    def _link(self, rid: str) -> None:
        with self._link_lock:
            if self._linked or self._on_created is None:
                return
            self._linked = True
            try:
                self._on_created(rid)
            except Exception as exc:  # noqa: BLE001 - e.g. the trial already ended
                log.debug("could not link run %s to its trial: %s", rid, exc)

    def end(self, state: str, error: str | None = None, tags: dict[str, str] | None = None) -> None:
        """Queue the buffered metrics and the final status (COMPLETE/PRUNED/FAIL)."""
        if self._ended:
            return
        self._ended = True
        metrics, self._metrics = self._metrics, []
        end_tags = {"trial_state": state, **(tags or {})}
        if error:
            end_tags["error"] = mask_secrets(error)[:MAX_TAG_LEN]
        run_id = self.run_id()
        if run_id is None:
            return  # creation failed and was reported; nothing to end
        self._tracker.writer.submit("end", {
            "run_id": run_id, "metrics": metrics, "tags": end_tags,
            "status": RUN_STATUS[state], "end_ms": _now_ms(),
        })


class MlflowTracker:
    """Parent run per invocation, nested run per trial, summary and artifacts on the parent."""

    enabled = True

    def __init__(self, tracking_uri: str | None, experiment_name: str,
                 heartbeat_interval: int = 10, grace_period: int = 60) -> None:
        """`heartbeat_interval` (0: off) and `grace_period`, in seconds: how often the parent
        run is stamped alive, and how long a stamp may age before the run counts as dead."""
        quiet_mlflow()
        import mlflow

        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        self.tracking_uri = mlflow.get_tracking_uri()
        self.client: Any = None  # opened by prepare()
        self.experiment_name = experiment_name
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self._env_run: Any = None
        self._owns_parent = False
        self.writer: _Writer | None = None
        self._open: dict[int, TrialRun] = {}
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period

    def prepare(self) -> None:
        """Reach the tracking store and resolve the experiment (or the `mlflow run` run).

        Called before any study is created, so a bad URI or a stale MLFLOW_RUN_ID stops
        the invocation with one line and no study written."""
        try:
            self.client = open_client(self.tracking_uri)
            env_run = os.environ.get("MLFLOW_RUN_ID")
            if env_run:
                self._env_run = self.client.get_run(env_run)
                self.experiment_id = self._env_run.info.experiment_id
            else:
                self.experiment_id = self._experiment_id()
                exp = self.client.get_experiment(self.experiment_id)
                if exp.lifecycle_stage != "active":
                    raise ConfigError(f"MLflow experiment {exp.name!r} is deleted; restore it "
                                      f"(mlflow experiments restore) or pass --experiment")
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - MLflow, SQLAlchemy and OS errors alike
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"MLflow tracking at {mask_secrets(self.tracking_uri)} failed: "
                              f"{mask_secrets(first)[:300]}") from None

    # -- parent ---------------------------------------------------------------------------
    def start_parent(self, run_name: str, params: dict[str, str], tags: dict[str, str]) -> str:
        """Attach to MLFLOW_RUN_ID (under `mlflow run`) or create the parent run."""
        if self.experiment_id is None:
            self.prepare()
        env_run = self._env_run.info.run_id if self._env_run is not None else None
        if env_run:
            self.parent_run_id = env_run
            existing = dict(self._env_run.data.params)
        else:
            # Who runs it: a later invocation on this host closes the run if we are killed.
            owner = {HOST_TAG: host_id(), PID_TAG: str(os.getpid()),
                     PID_START_TAG: start_time(os.getpid()),
                     **({HEARTBEAT_TAG: str(int(time.time()))} if self.heartbeat_interval else {})}
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags={**tags, **owner})
            self.parent_run_id = run.info.run_id
            self._owns_parent = True
            existing = {}
        # Params are immutable: never re-log a key `mlflow run` already set from -P.
        fresh = {k: v for k, v in params.items() if k not in existing}
        self.log_parent(params=fresh, tags=tags if env_run else {})
        self.writer = _Writer(self.tracking_uri, self.parent_run_id if self._owns_parent else None,
                              self.heartbeat_interval)
        return self.parent_run_id

    def _experiment_id(self) -> str:
        env_id = os.environ.get("MLFLOW_EXPERIMENT_ID")
        return env_id or experiment_id(self.client, self.experiment_name)

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
        """Ask the writer to create the trial's nested run; `on_created(run_id)` is called
        (in this process) the first time the trial asks for its run id."""
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        created = self.writer.submit("create", {
            "experiment_id": self.experiment_id, "start_ms": _now_ms(), "run_name": run_name,
            "tags": {MLFLOW_PARENT_RUN_ID: self.parent_run_id, **tags},
            "params": [(k, mask_secrets(str(v))[:MAX_PARAM_LEN]) for k, v in params.items()],
        })
        run = TrialRun(self, created, step_unit, on_created)
        self._open[number] = run
        return run

    def end_trial(self, number: int, state: str, error: str | None = None,
                  tags: dict[str, str] | None = None) -> None:
        run = self._open.pop(number, None)
        if run is not None:
            run.end(state, error, tags)

    # -- dead workers ---------------------------------------------------------------------
    def close_stale_trial(self, study: Any, trial: Any) -> None:
        """A trial whose worker died (Optuna saw its heartbeat stop): close its run and the
        dead invocation's parent run as FAILED. Called from the storage's stale callback."""
        # The linked run, and any run of this trial still RUNNING (killed before the link
        # landed, or a retried trial whose copied link names its predecessor's run).
        runs = {r.info.run_id: r for r in self.client.search_runs(
            [self.experiment_id], f"tags.study_name = '{study.study_name}' and "
            f"tags.trial_number = '{trial.number}' and attributes.status = 'RUNNING'")}
        rid = trial.user_attrs.get("mlflow_run_id")
        if rid and rid not in runs:
            linked = self.client.get_run(rid)
            if linked.data.tags.get("trial_number") == str(trial.number):
                runs[rid] = linked
        runs = list(runs.values())
        why = (f"the worker running trial {trial.number} stopped sending heartbeats (killed or "
               f"lost); Optuna marked the trial FAIL and queued its params for a retry")
        for run in runs:
            # FAILED already when this host saw the dead process first: add why, once.
            if run.info.status == "RUNNING" or (run.info.status == "FAILED" and "stale" not in run.data.tags):
                self._fail_run(run.info.run_id, why, {"trial_state": "FAIL", "stale": "true"})
                log.warning("closed MLflow run %s of dead trial %d as FAILED", run.info.run_id, trial.number)
            parent = run.data.tags.get("mlflow.parentRunId")
            if parent and parent != self.parent_run_id:
                # A worker that only stalled past the grace period (swapping, stopped) is
                # alive: it ends its own parent; only a dead one's is closed here.
                parent_run = self.client.get_run(parent)
                tags = parent_run.data.tags
                # Its writer stamped the parent up to one interval after the trial's last beat.
                if (self._dead(parent_run, slack=self.heartbeat_interval)
                        or not (tags.get(PID_TAG) and tags.get(HOST_TAG))):
                    self._fail_invocation(parent, f"a worker died: {why}")

    def close_dead_invocations(self) -> None:
        """Close as FAILED the parent runs (and their open trial runs) of tickertune
        invocations that are gone without ending them (kill -9, power loss, a lost machine):
        on this host, those whose process no longer exists; on any other host, those whose
        heartbeat stamp is older than the grace period."""
        runs = self.client.search_runs(
            [self.experiment_id], f"tags.`{HOST_TAG}` != '' and attributes.status = 'RUNNING'",
            max_results=1000)
        for run in runs:
            if run.info.run_id != self.parent_run_id:
                why = self._dead(run)
                if why:
                    self._fail_invocation(run.info.run_id, why)

    def _dead(self, parent: Any, slack: float = 0.0) -> str | None:
        """Why the invocation of parent run `parent` is gone, or None while it may be alive
        (its process exists, its heartbeat stamp is younger than the grace period less
        `slack` seconds, or nothing tells)."""
        tags = parent.data.tags
        pid = tags.get(PID_TAG, "")
        if not pid.isdigit() or not tags.get(HOST_TAG):
            return None
        where = f"pid {pid} on {tags[HOST_TAG].split(':')[0]}"
        if tags[HOST_TAG] == host_id():
            if alive(int(pid), tags.get(PID_START_TAG, "")):
                return None
            return f"its process ({where}) ended without closing the run (killed?)"
        stamp, now = tags.get(HEARTBEAT_TAG, ""), time.time()
        if self.heartbeat_interval and stamp.isdigit() and now - int(stamp) > self.grace_period - slack:
            return f"its process ({where}) stopped sending heartbeats {now - int(stamp):.0f} s ago (killed or lost)"
        return None

    def _fail_invocation(self, parent_id: str, why: str) -> None:
        """Close a dead invocation's parent run and any of its trial runs still RUNNING."""
        children = self.client.search_runs(
            [self.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}' and "
            f"attributes.status = 'RUNNING'", max_results=1000)
        for child in children:
            self._fail_run(child.info.run_id, why, {"trial_state": "FAIL"})
        if self.client.get_run(parent_id).info.status == "RUNNING":
            self._fail_run(parent_id, why, {})
            log.warning("closed MLflow parent run %s as FAILED: %s", parent_id, why)

    def _fail_run(self, run_id: str, why: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag("error", why), *(RunTag(k, v) for k, v in tags.items())])
        self.client.set_terminated(run_id, status="FAILED")

    # -- end ------------------------------------------------------------------------------
    def finish(self, status: str = "FINISHED") -> list[str]:
        """Close any open trial run as FAILED, drain the queue, end the parent if ours.

        Returns the tracking errors seen (empty when every write landed)."""
        try:
            for number in list(self._open):
                self.end_trial(number, "FAIL", error="the invocation ended before this trial did")
            if self.writer is not None:
                self.writer.close()
        finally:  # whatever failed above, no run of ours stays RUNNING
            if self.parent_run_id:
                self._close_unended_trials()
            if self.parent_run_id and self.experiment_id is not None:
                try:  # the other workers' parents, while we are here (a dead one is found sooner)
                    self.close_dead_invocations()
                except Exception as exc:  # noqa: BLE001 - housekeeping
                    log.debug("could not close dead invocations: %s", mask_secrets(str(exc)))
            if self._owns_parent and self.parent_run_id:
                self.client.set_terminated(self.parent_run_id, status=status)
        return list(self.writer.errors) if self.writer is not None else []


    def _close_unended_trials(self) -> None:
        """Trial runs of this invocation whose end never landed (a failed write): FAILED."""
        try:
            runs = self.client.search_runs(
                [self.experiment_id], f"tags.mlflow.parentRunId = '{self.parent_run_id}' and "
                f"attributes.status = 'RUNNING'", max_results=1000)
            for run in runs:
                self._fail_run(run.info.run_id, "its end was not recorded (a tracking write failed)",
                               {"trial_state": run.data.tags.get("trial_state", "FAIL")})
                log.warning("closed MLflow run %s as FAILED: its end was not recorded", run.info.run_id)
        except Exception as exc:  # noqa: BLE001 - the store itself is failing: nothing more to do
            log.warning("could not check this invocation's trial runs: %s", mask_secrets(str(exc)))

    def fail_trial_run(self, run_id: str | None, why: str) -> None:
        """Mark a trial's run FAILED after its end was written (its trial was failed by
        another worker between the objective's last check and Optuna's tell)."""
        if not run_id:
            return
        if self.writer is not None:
            self.writer.flush()  # the run's own end first, then this
        try:
            self._fail_run(run_id, why, {"trial_state": "FAIL", "discarded": "true"})
        except Exception as exc:  # noqa: BLE001
            log.warning("could not mark run %s FAILED: %s", run_id, mask_secrets(str(exc)))


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

    def prepare(self) -> None:
        pass

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

    def fail_trial_run(self, run_id: str | None, why: str) -> None:
        pass
