#!/usr/bin/env python
"""What MLflow tracking costs an XGBoost trial, measured side by side in one run.

The same study (same seed, same trial count, same data, fresh SQLite study each time)
runs with tracking on and with --no-tracking, alternating, `--reps` times each. It
prints per-trial wall time (Optuna's trial durations, which include waiting for the
trial's run to be linked) and the end-to-end time per trial (parent run, summary,
plots and the final flush included), and the overhead in percent. Target: trial
overhead at most 5%.

    python scripts/bench_tracking.py [--trials 30] [--reps 3] [--ticker AAPL]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def one_run(tracked: bool, args: argparse.Namespace) -> tuple[float, float]:
    from tickertune.api import tune
    from tickertune.config import TuneConfig

    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        cfg = TuneConfig(ticker=args.ticker, trials=args.trials, seed=args.seed, tracking=tracked,
                         results_dir=Path(tmp) / "results", progress=False, start=args.start)
        t0 = time.perf_counter()
        result = tune(cfg)
        total = time.perf_counter() - t0
        trials = result.outcomes["xgb"].study.trials
        per_trial = sum(t.duration.total_seconds() for t in trials) / len(trials)
        os.chdir(args.home)
    return per_trial, total / len(trials)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--ticker", default="AAPL")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--start", default=None, help="first date (default: all bundled data)")
    args = p.parse_args()
    args.home = os.getcwd()
    import logging

    logging.getLogger("tickertune").setLevel(logging.WARNING)
    import mlflow  # noqa: F401  - imported once up front so neither side pays for it
    import xgboost  # noqa: F401

    one_run(False, argparse.Namespace(**{**vars(args), "trials": 2}))  # warm caches
    res: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for rep in range(args.reps):
        for tracked in ((False, True) if rep % 2 == 0 else (True, False)):
            res[tracked].append(one_run(tracked, args))
            print(f"rep {rep + 1} {'tracked  ' if tracked else 'untracked'} "
                  f"trial {res[tracked][-1][0] * 1000:7.1f} ms  end-to-end {res[tracked][-1][1] * 1000:7.1f} ms",
                  file=sys.stderr)

    med = {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v)) for k, v in res.items()}
    over_trial = (med[True][0] / med[False][0] - 1) * 100
    over_e2e = (med[True][1] / med[False][1] - 1) * 100
    print(f"\nXGBoost study on {args.ticker}: {args.trials} trials, seed {args.seed}, "
          f"median of {args.reps} alternating reps\n")
    print(f"{'mode':<14}{'per trial (ms)':>16}{'end-to-end per trial (ms)':>28}")
    print(f"{'--no-tracking':<14}{med[False][0] * 1000:>16.1f}{med[False][1] * 1000:>28.1f}")
    print(f"{'tracking on':<14}{med[True][0] * 1000:>16.1f}{med[True][1] * 1000:>28.1f}")
    print(f"{'overhead':<14}{over_trial:>15.1f}%{over_e2e:>27.1f}%")
    print(f"\ntarget: trial overhead <= 5%: {'met' if over_trial <= 5 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
