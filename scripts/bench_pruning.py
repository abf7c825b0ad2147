#!/usr/bin/env python
"""Does Hyperband pay for itself on the transformer? Measured side by side in one run.

The transformer study on AAPL runs twice with the same seed and trial count, once with
the Hyperband pruner and once without pruning (both keep early stopping), each in a
fresh SQLite study with tracking off. It prints the total epochs trained, the wall
time and the best validation log loss of each, and the ratios. Targets: Hyperband
trains at most half the epochs, and its best loss is within 2% of no pruning.

    python scripts/bench_pruning.py [--trials 20] [--seed 42] [--start YYYY-MM-DD]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path


def run(pruner: str, args: argparse.Namespace) -> dict[str, float]:
    from tickertune.api import tune
    from tickertune.config import TuneConfig

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TuneConfig(ticker=args.ticker, trials=args.trials, models=("transformer",), seed=args.seed,
                         pruner=pruner, tracking=False, results_dir=Path(tmp), progress=False,
                         start=args.start, device="cpu")
        t0 = time.perf_counter()
        study = tune(cfg).outcomes["transformer"].study
        wall = time.perf_counter() - t0
        trials = study.trials
        epochs = sum(len(t.intermediate_values) for t in trials)
        states = {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
        return {"epochs": epochs, "best": study.best_value, "wall": wall, **states}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--ticker", default="AAPL")
    p.add_argument("--start", default=None)
    args = p.parse_args()
    logging.getLogger("tickertune").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    res = {}
    for pruner in ("none", "hyperband"):
        res[pruner] = run(pruner, args)
        print(f"{pruner}: done in {res[pruner]['wall']:.0f}s", file=sys.stderr)
    print(f"\ntransformer study on {args.ticker}: {args.trials} trials, seed {args.seed}\n")
    print(f"{'pruner':<11}{'epochs':>8}{'complete':>10}{'pruned':>8}{'best val_logloss':>18}{'wall (s)':>10}")
    for name, r in res.items():
        print(f"{name:<11}{r['epochs']:>8}{r['COMPLETE']:>10}{r['PRUNED']:>8}{r['best']:>18.5f}{r['wall']:>10.1f}")
    ratio = res["hyperband"]["epochs"] / res["none"]["epochs"]
    loss_gap = (res["hyperband"]["best"] / res["none"]["best"] - 1) * 100
    print(f"\nepochs hyperband/none: {ratio:.2f} (target <= 0.50: {'met' if ratio <= 0.5 else 'NOT met'})")
    print(f"best loss hyperband vs none: {loss_gap:+.2f}% (target within 2%: "
          f"{'met' if abs(loss_gap) <= 2 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
