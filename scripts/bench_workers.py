#!/usr/bin/env python
"""What a second worker buys, and what each study storage costs a trial, in one run.

Part 1, throughput with 1 vs 2 workers on PostgreSQL. `tickertune tune TICKER --model
xgb --trials T --workers N` runs as a subprocess (`python -m tickertune` with
PYTHONPATH=src, so it works from a checkout) for N = 1 and N = 2, each on a fresh
PostgreSQL database (created and dropped here) and, unless --no-tracking, a fresh
MLflow store `sqlite:///TMP/mlflow.db`, like a user. The order alternates over `--reps`
and the median is reported. Two rates per worker count:
  - wall: trials / (launch to exit), start-up (imports, data, registry, report) included;
  - span: trials / (first trial start to last trial complete), from Optuna's trial
    datetimes, so the fixed start-up cost (wall - span) shows separately.
The ratio 2-workers / 1-worker is printed for both. The machine's core count matters
(each worker trains with its share of the cores): it is printed.

Part 2, per-trial storage overhead, in-process and without a model. For each storage
(in-memory as the no-storage baseline, SQLite, journal file, PostgreSQL; the RDB ones
with tickertune's default heartbeat and without) a fresh study made by tickertune's own
`open_storage` + `open_study` (multivariate TPESampler(seed), HyperbandPruner sized like
the xgb model's) runs `--storage-trials` trials of a synthetic objective doing the
storage calls of a real xgb trial: the 9 suggestions of the xgb search space (ints, a
stepped int, floats, log floats), `trial.report` for each of `--steps` boosting rounds,
`should_prune` only at the Hyperband rungs (as tickertune asks), 2 `set_user_attr`, and
a value (a deterministic function of the params, so every storage sees the same trials,
prunings included). Per-trial time is the time between successive trial ends (the whole
optimize loop: ask, sampling, objective, tell, heartbeat thread, stale-trial check).
The sampler's cost (TPE grows with the trial count) is the same for every storage: the
in-memory column is that baseline, and overhead = storage - in-memory.

    python scripts/bench_workers.py [--trials 24] [--storage-trials 50] [--reps 2]
        [--ticker AAPL] [--start 2016-01-01] [--no-tracking] [--skip-workers]
        [--pg postgresql://postgres@127.0.0.1:5432/postgres]

If PostgreSQL is not reachable at --pg, the PostgreSQL parts are skipped (with a line
saying why); the SQLite, journal and in-memory measurements still run.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
sys.path.insert(0, str(SRC))  # part 2 imports tickertune from this checkout
from tickertune.config import mask_secrets  # noqa: E402 - after the path

PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/postgres"


# -- PostgreSQL databases -----------------------------------------------------------------

def pg_problem(admin: str) -> str | None:
    """Why PostgreSQL at `admin` cannot be used, or None when it can."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'tickertune[postgres]')"
    try:
        psycopg.connect(admin, connect_timeout=3).close()
    except Exception as exc:  # noqa: BLE001 - any failure means: skip the PG parts
        text = str(exc).strip()
        return f"not reachable: {text.splitlines()[0] if text else type(exc).__name__}"
    return None


@dataclass
class PgDatabases:
    """Fresh databases on one server; every one created is dropped by `drop_all`."""

    admin: str
    names: list[str] = field(default_factory=list)

    def _execute(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.admin, connect_timeout=5, autocommit=True) as con:
            con.execute(sql)

    def create(self) -> str:
        """A new empty database; its URL."""
        name = f"tt_bench_{uuid.uuid4().hex[:12]}"
        self.names.append(name)
        self._execute(f'CREATE DATABASE "{name}"')
        return self.admin.rsplit("/", 1)[0] + "/" + name

    def drop_all(self) -> None:
        for name in self.names:
            try:
                self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except Exception as exc:  # noqa: BLE001 - keep dropping the others
                print(f"could not drop database {name}: {mask_secrets(str(exc))}", file=sys.stderr)
        self.names.clear()


# -- part 1: 1 vs 2 workers ---------------------------------------------------------------

@dataclass
class WorkerRun:
    """One `tickertune tune --workers N` invocation."""

    workers: int
    wall: float  # s, launch to exit
    span: float  # s, first trial start to last trial complete
    n_trials: int
    mean_trial: float  # s, mean of Optuna's trial durations
    states: dict[str, int]

    def per_min(self, seconds: float) -> float:
        return self.n_trials / seconds * 60


def tune_env(tmp: Path, tracking: bool) -> dict[str, str]:
    """A plain user's environment for a `python -m tickertune` subprocess in `tmp`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MLFLOW_") and k != "TICKERTUNE_THREADS"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p)
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    if tracking:
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
    return env


def run_process(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """Run `cmd` in its own process group; on any interruption stop the whole group
    (the workers too), first with SIGINT so they close their trials, then SIGKILL."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        _stop_group(proc)
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _stop_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGINT, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def study_times(url: str, name: str) -> tuple[float, float, dict[str, int]]:
    """(span s, mean trial duration s, trial states) of study `name` at `url`."""
    import optuna

    from tickertune.storage import make_storage

    storage = make_storage(url)
    try:
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
        done = [t for t in trials if t.datetime_start and t.datetime_complete]
        span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
        mean = statistics.fmean(t.duration.total_seconds() for t in done)
        states: dict[str, int] = {}
        for t in trials:
            states[t.state.name] = states.get(t.state.name, 0) + 1
        return span, mean, states
    finally:
        storage.engine.dispose()  # no connection left open on a database about to be dropped


def run_workers(workers: int, trials: int, args: argparse.Namespace, pg: PgDatabases) -> WorkerRun:
    """`tickertune tune ... --workers N` on a fresh database; raises with its stderr on failure."""
    url = pg.create()
    with tempfile.TemporaryDirectory(prefix="bench_workers_") as tmp:
        cmd = [sys.executable, "-m", "tickertune", "tune", args.ticker, "--model", "xgb",
               "--trials", str(trials), "--workers", str(workers), "--storage", url,
               "--results-dir", str(Path(tmp) / "results"), "--seed", str(args.seed),
               "--no-progress"]
        cmd += ["--start", args.start] if args.start else []
        cmd += ["--no-tracking"] if args.no_tracking else []
        t0 = time.perf_counter()
        proc = run_process(cmd, Path(tmp), tune_env(Path(tmp), not args.no_tracking), args.timeout)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"--workers {workers} exited with code {proc.returncode}:\n{tail}")
    span, mean, states = study_times(url, f"xgb_tuning_{args.ticker}")
    return WorkerRun(workers, wall, span, sum(states.values()), mean, states)


def bench_workers(args: argparse.Namespace, pg: PgDatabases) -> dict[int, list[WorkerRun]]:
    """Warm-up, then 1 and 2 workers alternating over `--reps`."""
    print("part 1: warm-up run (2 trials, 1 worker, not counted)", file=sys.stderr)
    run_workers(1, 2, args, pg)
    pg.drop_all()
    runs: dict[int, list[WorkerRun]] = {1: [], 2: []}
    for rep in range(args.reps):
        for n in ((1, 2) if rep % 2 == 0 else (2, 1)):
            r = run_workers(n, args.trials, args, pg)
            pg.drop_all()
            runs[n].append(r)
            print(f"part 1: rep {rep + 1} workers={n}: wall {r.wall:6.1f}s  span {r.span:6.1f}s  "
                  f"{r.per_min(r.wall):6.1f} trials/min (wall)  {r.per_min(r.span):6.1f} (span)  "
                  f"{r.states}", file=sys.stderr)
    return runs


def print_workers(runs: dict[int, list[WorkerRun]], args: argparse.Namespace) -> None:
    med = {n: {"wall": statistics.median(r.wall for r in rs),
               "span": statistics.median(r.span for r in rs),
               "rate_wall": statistics.median(r.per_min(r.wall) for r in rs),
               "rate_span": statistics.median(r.per_min(r.span) for r in rs),
               "trial": statistics.median(r.mean_trial for r in rs)} for n, rs in runs.items()}
    pruned = {n: sum(r.states.get("PRUNED", 0) for r in rs) for n, rs in runs.items()}
    total = {n: sum(r.n_trials for r in rs) for n, rs in runs.items()}
    print(f"\nPart 1: tickertune tune {args.ticker} --model xgb --trials {args.trials} "
          f"--workers N on PostgreSQL{' (from ' + args.start + ')' if args.start else ''}, "
          f"tracking {'off' if args.no_tracking else 'on (MLflow sqlite)'}; os.cpu_count() = "
          f"{os.cpu_count()}; median of {args.reps} alternating reps\n")
    print(f"{'workers':<9}{'wall (s)':>10}{'span (s)':>10}{'start-up (s)':>14}"
          f"{'trials/min wall':>17}{'trials/min span':>17}{'mean trial (s)':>16}{'pruned':>9}")
    for n, m in med.items():
        print(f"{n:<9}{m['wall']:>10.1f}{m['span']:>10.1f}{m['wall'] - m['span']:>14.1f}"
              f"{m['rate_wall']:>17.1f}{m['rate_span']:>17.1f}{m['trial']:>16.2f}"
              f"{pruned[n]:>5}/{total[n]:<3}")
    print(f"{'2 / 1':<9}{'':>34}{med[2]['rate_wall'] / med[1]['rate_wall']:>16.2f}x"
          f"{med[2]['rate_span'] / med[1]['rate_span']:>16.2f}x"
          f"{med[2]['trial'] / med[1]['trial']:>15.2f}x")
    print("  start-up = wall - span: imports, data, study creation, registry, test report "
          "(with 2 workers also the launcher's preflight)")


# -- part 2: per-trial storage overhead ---------------------------------------------------

@dataclass
class StorageCase:
    """One storage to measure: a label and how to open a fresh one (and close it)."""

    label: str
    open: Callable[[], tuple[Any, Callable[[], None]]]  # -> (optuna storage, close)


def make_cases(tmp: Path, pg: PgDatabases | None) -> list[StorageCase]:
    """In-memory, SQLite and journal in `tmp`, and PostgreSQL (fresh database) if `pg`."""
    import optuna

    from tickertune.storage import Heartbeat, open_storage

    def rdb(url_fn: Callable[[], str], heartbeat: bool) -> Callable[[], tuple[Any, Callable[[], None]]]:
        def opener() -> tuple[Any, Callable[[], None]]:
            st = open_storage(url_fn(), Heartbeat() if heartbeat else None).optuna
            return st, st.engine.dispose
        return opener

    def fresh_file(suffix: str) -> str:
        return str(tmp / f"{uuid.uuid4().hex[:8]}{suffix}")

    cases = [
        StorageCase("in-memory", lambda: (optuna.storages.InMemoryStorage(), lambda: None)),
        StorageCase("sqlite", rdb(lambda: "sqlite:///" + fresh_file(".db"), True)),
        StorageCase("sqlite, no heartbeat", rdb(lambda: "sqlite:///" + fresh_file(".db"), False)),
        StorageCase("journal",
                    lambda: (open_storage("journal:" + fresh_file(".log")).optuna, lambda: None)),
    ]
    if pg is not None:
        cases += [StorageCase("postgresql", rdb(pg.create, True)),
                  StorageCase("postgresql, no heartbeat", rdb(pg.create, False))]
    return cases


@dataclass
class Calls:
    """Storage-touching calls the synthetic objective made (the same for every storage)."""

    suggest: int = 0
    report: int = 0
    should_prune: int = 0
    user_attr: int = 0
    pruned: int = 0


def suggest_xgb(trial: Any) -> dict[str, Any]:
    """The xgb model's own search space, suggested on `trial`."""
    from tickertune.models.xgb import XGBoostModel

    return XGBoostModel().suggest_params(trial)


def synthetic_objective(steps: int, decides_at: Callable[[int], bool], calls: Calls) -> Callable[[Any], float]:
    """An objective with a real xgb trial's storage calls and a cheap, deterministic loss curve."""
    import optuna

    def objective(trial: Any) -> float:
        p = suggest_xgb(trial)
        calls.suggest += len(p)
        trial.set_user_attr("mlflow_run_id", uuid.uuid4().hex)  # as the tracker does
        trial.set_user_attr("worker", "bench")
        calls.user_attr += 2
        floor = 0.69 + 0.01 * abs(math.log10(p["learning_rate"] / 0.05)) + 0.002 * p["max_depth"]
        value = floor
        for step in range(1, steps + 1):
            value = floor + 0.05 * math.exp(-step * p["learning_rate"] * p["subsample"])
            trial.report(value, step)
            calls.report += 1
            if decides_at(step):
                calls.should_prune += 1
                if trial.should_prune():
                    calls.pruned += 1
                    raise optuna.TrialPruned()
        return value

    return objective


def time_trials(case: StorageCase, n_trials: int, steps: int, seed: int) -> tuple[list[float], Calls]:
    """Per-trial seconds of `n_trials` synthetic trials in a fresh study on `case`'s storage."""
    import optuna

    from tickertune.models.xgb import XGBoostModel
    from tickertune.tuning import make_pruner, open_study

    storage, close = case.open()
    try:
        spec = make_pruner("hyperband", XGBoostModel())
        study = open_study("xgb_tuning_BENCH", storage, spec, seed, attrs={}).study
        calls = Calls()
        ends = [time.perf_counter()]
        study.optimize(synthetic_objective(steps, spec.decides_at, calls), n_trials=n_trials,
                       callbacks=[lambda s, t: ends.append(time.perf_counter())],
                       catch=(Exception,), gc_after_trial=False)
        failed = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.FAIL]
        if failed:
            raise RuntimeError(f"{case.label}: {len(failed)} synthetic trials failed")
        return [b - a for a, b in zip(ends, ends[1:])], calls
    finally:
        close()


def bench_storages(args: argparse.Namespace, pg: PgDatabases | None) -> tuple[dict[str, list[float]], dict[str, Calls]]:
    """Every storage once per rep (order reversed on odd reps); per-trial seconds pooled."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    times: dict[str, list[float]] = {}
    calls: dict[str, Calls] = {}
    with tempfile.TemporaryDirectory(prefix="bench_storages_") as tmp:
        cases = make_cases(Path(tmp), pg)
        time_trials(cases[0], 5, args.steps, args.seed)  # warm-up: imports, TPE code paths
        for rep in range(args.reps):
            for case in (cases if rep % 2 == 0 else cases[::-1]):
                t, c = time_trials(case, args.storage_trials, args.steps, args.seed)
                times.setdefault(case.label, []).extend(t)
                calls[case.label] = c
                print(f"part 2: rep {rep + 1} {case.label:<26} {statistics.median(t) * 1000:7.1f} ms "
                      f"median per trial", file=sys.stderr)
                if pg is not None:
                    pg.drop_all()
    return times, calls


def print_storages(times: dict[str, list[float]], calls: dict[str, Calls], args: argparse.Namespace,
                   pg_note: str | None) -> None:
    from tickertune.models.xgb import XGBoostModel
    from tickertune.tuning import make_pruner

    spec = make_pruner("hyperband", XGBoostModel())
    rungs = [s for s in range(1, args.steps + 1) if spec.decides_at(s)]
    c = next(iter(calls.values()))
    print(f"\nPart 2: per-trial cost of the study storage, synthetic xgb trial, {args.storage_trials} "
          f"trials per study x {args.reps} reps (fresh study each)")
    print(f"  per {args.storage_trials} trials: {c.suggest} suggestions, {c.report} reports, "
          f"{c.should_prune} should_prune (rungs {rungs}), {c.pruned} pruned, {c.user_attr} user attrs;\n"
          f"  multivariate TPE and Hyperband, as tickertune's studies\n")
    base = statistics.median(times["in-memory"])
    sqlite = statistics.median(times["sqlite"])
    print(f"{'storage':<27}{'median (ms)':>12}{'mean (ms)':>11}{'- in-memory (ms)':>18}{'/ sqlite':>10}")
    for label, t in times.items():
        med = statistics.median(t)
        print(f"{label:<27}{med * 1000:>12.1f}{statistics.fmean(t) * 1000:>11.1f}"
              f"{(med - base) * 1000:>18.1f}{med / sqlite:>9.2f}x")
    if any(calls[k].__dict__ != c.__dict__ for k in calls):
        print("  note: the storages did not all see the same calls:",
              {k: v.__dict__ for k, v in calls.items()})
    if pg_note:
        print(f"  {pg_note}")


# -- main ---------------------------------------------------------------------------------

def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # so the finally blocks drop the databases


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=24, help="part 1: trials per study (default 24)")
    p.add_argument("--storage-trials", type=int, default=50, help="part 2: trials per study (default 50)")
    p.add_argument("--steps", type=int, default=60, help="part 2: reports per synthetic trial (default 60)")
    p.add_argument("--reps", type=int, default=2, help="alternating repetitions (default 2)")
    p.add_argument("--ticker", default="AAPL")
    p.add_argument("--start", default="2016-01-01", help="first date (default 2016-01-01; '' = all data)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--no-tracking", action="store_true", help="part 1: tune with --no-tracking")
    p.add_argument("--skip-workers", action="store_true", help="run part 2 only")
    p.add_argument("--timeout", type=float, default=900, help="seconds per tune subprocess (default 900)")
    p.add_argument("--pg", default=PG_DEFAULT, help=f"admin URL to create databases (default {PG_DEFAULT})")
    args = p.parse_args()
    logging.getLogger("tickertune").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    signal.signal(signal.SIGTERM, _sigterm)

    problem = pg_problem(args.pg)
    pg_note = (f"PostgreSQL at {mask_secrets(args.pg)} {mask_secrets(problem)}: its parts are skipped"
               if problem else None)
    if pg_note:
        print(pg_note, file=sys.stderr)
    pg = PgDatabases(args.pg) if not problem else None
    t0 = time.perf_counter()
    try:
        runs = bench_workers(args, pg) if pg is not None and not args.skip_workers else None
        times, calls = bench_storages(args, pg)
    except KeyboardInterrupt:
        print("interrupted; dropping the benchmark databases", file=sys.stderr)
        return 130
    finally:
        if pg is not None:
            pg.drop_all()
    print(f"\nmachine: os.cpu_count() = {os.cpu_count()}, Python {sys.version.split()[0]}; "
          f"bench took {time.perf_counter() - t0:.0f}s")
    if runs is not None:
        print_workers(runs, args)
    elif pg_note:
        print(f"\nPart 1 skipped: {pg_note}")
    print_storages(times, calls, args, pg_note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
