"""`tickertune` command line: a thin shell over tickertune.api.

Only the standard library is imported at module level, so `tickertune --help`
answers instantly; each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

from tickertune import __version__
from tickertune.errors import NotFoundError, TickertuneError

log = logging.getLogger("tickertune")

DEFAULT_TRIALS = 20


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise TickertuneError(f"--set {item!r} is not KEY=VALUE")
        value: Any = raw.strip()
        for cast in (int, float):
            try:
                value = cast(raw)
                break
            except ValueError:
                continue
        out[key.strip()] = value
    return out


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


def _where(p: argparse.ArgumentParser, tracking: bool = True) -> None:
    """The options that say where the studies (and the MLflow store) are."""
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL (default $TICKERTUNE_STORAGE, else sqlite:///RESULTS_DIR/tuning.db)")
    p.add_argument("--results-dir", default="results", type=Path, help="default ./results")
    if tracking:
        p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI")
        p.add_argument("--experiment", default=None, help="MLflow experiment (default tickertune)")


def _bootstrap(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tickertune",
        description="Per-ticker hyperparameter tuning (Optuna) with every trial tracked in MLflow.",
    )
    p.add_argument("--version", action="version", version=f"tickertune {__version__}")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("tune", help="add trials to a ticker's studies (creates them on first use)",
                       description="Tune a model for one ticker. Each invocation adds --trials "
                       "trials to the persistent study and logs one nested MLflow run per trial.")
    t.add_argument("ticker", help="ticker symbol, e.g. AAPL")
    t.add_argument("--trials", type=_positive_int, default=DEFAULT_TRIALS,
                   help=f"trials to add to each study (default {DEFAULT_TRIALS})")
    t.add_argument("--model", default="xgb", choices=["xgb", "transformer", "all"],
                   help="model to tune: xgb (default), transformer, or all (both)")
    t.add_argument("--top-k", type=int, default=3,
                   help="transformer checkpoints kept in the model registry (default 3)")
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="transformer device (default auto: cuda when available)")
    t.add_argument("--pruner", default="hyperband", choices=["hyperband", "asha", "median", "none"],
                   help="pruner (default hyperband)")
    t.add_argument("--seed", type=int, default=42, help="base seed for sampler and models (default 42)")
    t.add_argument("--cv-folds", type=int, default=0, metavar="K",
                   help="walk-forward cross-validation with K expanding folds (own study: *_cvK)")
    t.add_argument("--multi-objective", action="store_true",
                   help="minimise (val log loss, training seconds); own study *_mo; no pruning")
    t.add_argument("--storage", default=None,
                   help="Optuna storage URL (default $TICKERTUNE_STORAGE, else sqlite:///RESULTS_DIR/tuning.db)")
    t.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    t.add_argument("--experiment", default=None,
                   help="MLflow experiment (default $MLFLOW_EXPERIMENT_NAME, else 'tickertune')")
    t.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    t.add_argument("--data", default="sample", metavar="SPEC",
                   help="'sample' (bundled, default), 'csv:PATH' or 'yfinance'")
    t.add_argument("--start", default=None, metavar="YYYY-MM-DD", help="first date to use")
    t.add_argument("--end", default=None, metavar="YYYY-MM-DD", help="last date to use")
    t.add_argument("--results-dir", default="results", type=Path,
                   help="where the study database and best params go (default ./results)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="fix a model parameter instead of searching it (repeatable)")
    w = t.add_argument_group("parallel workers and crash recovery")
    w.add_argument("--workers", type=_positive_int, default=1, metavar="N",
                   help="run N worker processes on the study, sharing --trials (default 1); "
                   "use --storage postgresql://... (or journal:PATH on one machine)")
    w.add_argument("--worker-id", type=int, default=0, metavar="I",
                   help="distinct per worker started by hand (scripts/launch_workers.sh), so "
                   "workers started together do not sample the same first points (default 0)")
    w.add_argument("--heartbeat-interval", type=int, default=10, metavar="S",
                   help="seconds between a running trial's heartbeats on SQLite/PostgreSQL "
                   "storage; 0 turns crash recovery off (default 10)")
    w.add_argument("--grace-period", type=int, default=60, metavar="S",
                   help="seconds without a heartbeat before a trial's worker counts as dead: "
                   "the trial is marked FAIL, retried once, its MLflow run closed (default 60)")
    bar = t.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="show a progress bar (default: when stderr is a terminal)")
    bar.add_argument("--no-progress", dest="progress", action="store_false")
    t.set_defaults(func=cmd_tune)

    s = sub.add_parser("studies", help="list the studies in a storage",
                       description="Each study with its direction, trials by state and best value.")
    _where(s, tracking=False)
    s.set_defaults(func=cmd_studies)

    e = sub.add_parser("ensemble", help="score the registered models and their mean on the test segment",
                       description="Load tickertune-<TICKER>-transformer@rank-1..k (and the best "
                       "XGBoost), average their probabilities on the test segment tuning never "
                       "saw, print and log the scores beside the baselines.")
    e.add_argument("ticker")
    e.add_argument("--top-k", type=int, default=3, help="transformer ranks to include (default 3)")
    e.add_argument("--include-xgb", action="store_true", help="add tickertune-<TICKER>-xgb@rank-1")
    e.add_argument("--register", action="store_true",
                   help="log the ensemble as the pyfunc model tickertune-<TICKER>-ensemble")
    _where(e)
    _bootstrap(e)
    e.set_defaults(func=cmd_ensemble)

    v = sub.add_parser("evaluate", help="score a registered model on the test segment, with intervals",
                       description="Log loss, accuracy, AUC and Brier score on the held-out test "
                       "segment beside the two baselines, a paired block-bootstrap 95%% interval of "
                       "the gains, a verdict, and calibration plots; logged as an MLflow run.")
    v.add_argument("ticker")
    v.add_argument("--model", default="transformer", choices=["transformer", "xgb", "ensemble"])
    v.add_argument("--alias", default="rank-1", help="registry alias (default rank-1)")
    v.add_argument("--top-k", type=int, default=3, help="ensemble: transformer ranks (default 3)")
    v.add_argument("--include-xgb", action="store_true", help="ensemble: add the best XGBoost")
    _bootstrap(v)
    _where(v)
    v.set_defaults(func=cmd_evaluate)

    a = sub.add_parser("audit", help="leakage audit of a ticker's studies and registered models",
                       description="Past-only features, disjoint segments with gaps, scaler fitted on "
                       "train only, test segment untouched by tuning. Exit 1 when a check fails.")
    a.add_argument("ticker")
    _where(a)
    a.add_argument("--no-tracking", action="store_true", help="skip the registered-model checks")
    a.set_defaults(func=cmd_audit)

    r = sub.add_parser("report", help="study plots and an index.html under results/reports/<TICKER>/",
                       description="Optimisation history, param importances, intermediate values, "
                       "parallel coordinates, timeline (Pareto front for multi-objective studies) as "
                       "PNGs with an index.html, also logged as an MLflow run.")
    r.add_argument("ticker")
    _where(r)
    r.add_argument("--no-tracking", action="store_true")
    r.set_defaults(func=cmd_report)

    g = sub.add_parser("generic-params", help="one configuration for several tickers",
                       description="Median (or mean) of each numeric best param and the most common "
                       "value of each categorical over the tickers' best params, written to "
                       "results/best_params/generic.json.")
    g.add_argument("tickers", nargs="+")
    g.add_argument("--agg", default="median", choices=["median", "mean"])
    g.add_argument("--evaluate", action="store_true",
                   help="fit each ticker with the generic and with its own best params; print and log the table")
    g.add_argument("--model", default="xgb", choices=["xgb", "transformer"], help="for --evaluate")
    g.add_argument("--seed", type=int, default=42)
    _where(g)
    g.set_defaults(func=cmd_generic)

    c = sub.add_parser("cluster", help="group tickers by return behaviour",
                       description="k-means on each ticker's return profile (volatility, "
                       "autocorrelations, skew, kurtosis, correlation with the others); prints each "
                       "cluster with a representative to tune, and logs the result to MLflow.")
    c.add_argument("tickers", nargs="+")
    c.add_argument("--k", type=int, default=2)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--no-tracking", action="store_true")
    _where(c)
    c.set_defaults(func=cmd_cluster)

    q = sub.add_parser("sql", help="run a read-only SQL query on the study database",
                       description="Print the rows of one query on the study database (Optuna's "
                       "schema; see docs/queries.sql for a cookbook). SQLite is opened read-only.")
    q.add_argument("query", help='e.g. "SELECT study_name FROM studies"')
    _where(q, tracking=False)
    q.set_defaults(func=cmd_sql)

    b = sub.add_parser("best", help="print a ticker's best-params JSON")
    b.add_argument("ticker")
    b.add_argument("--results-dir", default="results", type=Path)
    b.set_defaults(func=cmd_best)
    return p


def cmd_tune(args: argparse.Namespace) -> int:
    from tickertune.api import tune
    from tickertune.config import TuneConfig, mask_secrets

    config = TuneConfig(
        ticker=args.ticker, trials=args.trials, models=(args.model,), pruner=args.pruner,
        seed=args.seed, storage=args.storage or None, tracking_uri=args.tracking_uri or None,
        tracking=not args.no_tracking, experiment=args.experiment, data=args.data or "sample",
        start=args.start or None, end=args.end or None, results_dir=args.results_dir,
        fixed_params=_parse_set(args.set), progress=args.progress, top_k=args.top_k,
        device=args.device, cv_folds=args.cv_folds, multi_objective=args.multi_objective,
        heartbeat_interval=args.heartbeat_interval, grace_period=args.grace_period,
        worker_id=args.worker_id,
    )
    if args.workers > 1:
        return _tune_workers(args, config)
    from tickertune.workers import watch_launcher

    watch_launcher()
    result = tune(config)
    print()
    for name, outcome in result.outcomes.items():
        added = ", ".join(f"{n} {s.lower()}" for s, n in sorted(outcome.added.items()))
        entry = result.best.get(name + config.study_suffix)
        if entry is not None and "pareto_front" in entry:
            print(f"{outcome.study.study_name}: added {added}; Pareto front: {len(entry['pareto_front'])} "
                  f"of {entry['n_trials']} trials (pruning is off in this mode):")
            _print_table(["trial", "val_logloss", "train_seconds", "params"],
                         [[p["trial"], f"{p['values'][0]:.5f}", f"{p['values'][1]:.3f}",
                           ", ".join(f"{k}={_short(v)}" for k, v in p["params"].items())]
                          for p in entry["pareto_front"]])
            continue
        best = (f"best val_logloss {entry['best_value']:.5f} (trial {entry['best_trial']} of "
                f"{entry['n_trials']})" if entry else "no complete trial yet")
        print(f"{outcome.study.study_name}: added {added}; {best}")
    for name, ranked in result.registered.items():
        for r in ranked:
            print(f"registered: models:/tickertune-{config.ticker}-{name}@{r.alias} -> version "
                  f"{r.version} (trial {r.trial_number}, val_logloss {r.value:.5f})")
    for name, ev in result.evaluations.items():
        print(f"test segment ({ev.n} days, never used for tuning), {ev.verdict}")
    if result.best_params_path:
        print(f"best params: {result.best_params_path}")
    if result.registered.get("transformer") or result.registered.get("xgb"):
        print(f"score them on the held-out test segment: tickertune ensemble {config.ticker}"
              f"{' --include-xgb' if result.registered.get('xgb') else ''}")
    if result.parent_run_id:
        uri = mask_secrets(str(result.tracking_uri))
        print(f"MLflow parent run {result.parent_run_id} at {uri}")
        if uri.startswith("sqlite:"):
            print(f"  open the UI: mlflow ui --backend-store-uri {uri}")
    print(f"study storage: {mask_secrets(config.storage_url)}")
    more = (f"mlflow run . -P ticker={config.ticker} -P trials=200" if os.environ.get("MLFLOW_RUN_ID")
            else f"tickertune tune {config.ticker} --trials 200")
    print(f"a bigger search: {more}  (each run adds trials to the same study)")
    if not result.best:
        print("tickertune: error: no trial has completed in any study; see the errors above",
              file=sys.stderr)
        return 1
    if result.tracking_errors:
        print(f"tickertune: {len(result.tracking_errors)} tracking writes failed; first: "
              f"{result.tracking_errors[0]}", file=sys.stderr)
        return 1
    return 0


def _tune_workers(args: argparse.Namespace, config: Any) -> int:
    """--workers N: check everything once here, then start N ordinary tune processes."""
    from tickertune.api import preflight
    from tickertune.config import mask_secrets
    from tickertune.errors import ConfigError
    from tickertune.storage import in_memory, kind_of
    from tickertune.workers import launch

    if in_memory(config.storage_url):  # each worker would tune (and lose) a study of its own
        raise ConfigError(
            f"--workers {args.workers} needs a storage every worker can open: "
            f"{mask_secrets(config.storage_url)} lives in one process; use a file "
            f"(sqlite:///results/tuning.db), journal:PATH or postgresql://...")
    if kind_of(config.storage_url) == "sqlite":
        log.warning("%d workers on one SQLite file: they take turns writing (busy timeout); "
                    "for real parallel work use --storage postgresql://... or journal:PATH",
                    args.workers)
    experiment_id = preflight(config)  # bad input fails once, before any worker starts
    env = {}
    if os.environ.get("MLFLOW_RUN_ID"):
        # Under `mlflow run`: each worker is its own parent run in the project run's
        # experiment (N processes cannot share one parent's params and summary).
        env = {"MLFLOW_RUN_ID": None, "MLFLOW_EXPERIMENT_ID": experiment_id,
               "TICKERTUNE_PROJECT_RUN_ID": os.environ["MLFLOW_RUN_ID"]}
    argv = (["-q"] if args.quiet else []) + args.argv[args.argv.index("tune") + 1:]
    code = launch(argv, config.trials, args.workers, first_id=max(1, config.worker_id), env=env)
    print(f"\n{args.workers} workers done; study storage: {mask_secrets(config.storage_url)} "
          f"(tickertune studies --storage ... lists every trial)")
    return code


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def cmd_studies(args: argparse.Namespace) -> int:
    from tickertune.studies import list_studies

    from tickertune.config import TuneConfig

    url = args.storage or TuneConfig(ticker="X", results_dir=args.results_dir).storage_url
    rows = list_studies(url)
    if not rows:
        print("no studies yet")
        return 0
    headers = ["study", "direction", "trials", "complete", "pruned", "fail", "running", "best value",
               "best trial"]
    _print_table(headers, rows)
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    return _evaluate(args, "ensemble")


def cmd_evaluate(args: argparse.Namespace) -> int:
    return _evaluate(args, args.model)


def _evaluate(args: argparse.Namespace, model: str) -> int:
    from tickertune.config import TuneConfig
    from tickertune.ensemble import evaluate_registered

    cfg = TuneConfig(ticker=args.ticker, results_dir=args.results_dir, storage=args.storage,
                     tracking_uri=args.tracking_uri, experiment=args.experiment)
    if args.top_k < 1 and model == "ensemble" and not args.include_xgb:
        raise TickertuneError(f"--top-k must be at least 1 (got {args.top_k})")
    if args.n_boot < 100:
        raise TickertuneError(f"--n-boot must be at least 100 (got {args.n_boot})")
    report = evaluate_registered(
        cfg.ticker, cfg.storage_url, model, alias=getattr(args, "alias", "rank-1"),
        top_k=args.top_k, include_xgb=args.include_xgb, register=getattr(args, "register", False),
        n_boot=args.n_boot, seed=args.seed, tracking_uri=cfg.tracking_url,
        experiment=cfg.experiment_name)
    d, ev = report.split_dates, report.evaluation
    print(f"{cfg.ticker}: test segment {d['test_start']} .. {d['test_end']} ({report.n_test} days, "
          f"never seen by tuning); intervals: paired block bootstrap, {ev.n_boot} resamples of "
          f"{ev.block}-day blocks, seed {ev.seed}")
    print(report.text())
    print(f"\nMLflow run {report.run_id} (calibration plots in its artifacts)")
    if report.registered_version:
        print(f"registered: models:/tickertune-{cfg.ticker}-ensemble/{report.registered_version}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from tickertune.audit import run_audit
    from tickertune.config import TuneConfig

    cfg = TuneConfig(ticker=args.ticker, results_dir=args.results_dir, storage=args.storage,
                     tracking_uri=args.tracking_uri)
    if cfg.tracking_url and not args.no_tracking:
        import mlflow

        mlflow.set_tracking_uri(cfg.tracking_url)
    checks = run_audit(cfg.ticker, cfg.storage_url, tracking=not args.no_tracking)
    for c in checks:
        print(c.line())
    failed = [c for c in checks if c.passed is False]
    print(f"\n{cfg.ticker}: {len(checks) - len(failed)} of {len(checks)} checks passed or skipped, "
          f"{len(failed)} failed")
    return 1 if failed else 0


def _tracking_uri(args: argparse.Namespace) -> None:
    from tickertune.config import TuneConfig

    uri = TuneConfig(ticker="X", tracking_uri=args.tracking_uri).tracking_url
    if uri:
        import mlflow

        mlflow.set_tracking_uri(uri)


def cmd_report(args: argparse.Namespace) -> int:
    from tickertune.config import TuneConfig
    from tickertune.reports import build_report

    cfg = TuneConfig(ticker=args.ticker, results_dir=args.results_dir, storage=args.storage,
                     experiment=args.experiment)
    if not args.no_tracking:
        _tracking_uri(args)
    res = build_report(cfg.ticker, cfg.storage_url, cfg.results_dir, tracking=not args.no_tracking,
                       experiment=cfg.experiment_name)
    print(f"{len(res.files)} files for {', '.join(res.studies)} in {res.out_dir}")
    print(f"open: {res.index}")
    if res.run_id:
        print(f"MLflow run {res.run_id}")
    return 0


def cmd_generic(args: argparse.Namespace) -> int:
    import tempfile

    from tickertune.across import generic_params, generic_path, transfer_table
    from tickertune.config import TuneConfig
    from tickertune.tracking import log_summary_run

    doc = generic_params(args.tickers, args.results_dir, args.agg)
    print(f"{generic_path(args.results_dir)} ({args.agg} over {', '.join(doc['tickers'])}):")
    print(json.dumps(doc["models"], indent=2))
    if not args.evaluate:
        return 0
    table = transfer_table(doc["tickers"], args.results_dir, doc, model=args.model, seed=args.seed)
    print(f"\n{args.model}: own best params against the generic ones (validation segment):")
    _print_table(list(table.columns), [[_short(v) for v in row] for row in table.itertuples(index=False)])
    _tracking_uri(args)
    cfg = TuneConfig(ticker="X", experiment=args.experiment)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "generic_transfer.csv"
        table.to_csv(path, index=False)
        metrics = {f"{r.ticker}.{col}": getattr(r, col) for r in table.itertuples(index=False)
                   for col in ("own_logloss", "generic_logloss", "difference")}
        rid = log_summary_run(cfg.experiment_name, f"generic-params-{args.model}",
                              {"kind": "generic-params"}, {"tickers": ",".join(doc["tickers"]),
                                                           "agg": args.agg, "model": args.model},
                              metrics, [path, generic_path(args.results_dir)])
    print(f"\nMLflow run {rid}")
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    import tempfile

    from tickertune.across import cluster, return_profile
    from tickertune.config import TuneConfig
    from tickertune.tracking import log_summary_run

    groups = cluster(args.tickers, k=args.k, seed=args.seed)
    for i, g in enumerate(groups, start=1):
        print(f"cluster {i}: {', '.join(g.members)}  (tune: {g.representative})")
    if args.no_tracking:
        return 0
    _tracking_uri(args)
    cfg = TuneConfig(ticker="X", experiment=args.experiment)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "return_profile.csv"
        profile = return_profile(args.tickers)
        profile["cluster"] = [next(i for i, g in enumerate(groups, 1) if t in g.members) for t in profile.index]
        profile.to_csv(path)
        rid = log_summary_run(
            cfg.experiment_name, f"cluster-k{args.k}", {"kind": "cluster"},
            {"tickers": ",".join(profile.index), "k": args.k, "seed": args.seed,
             **{f"cluster_{i}": f"{', '.join(g.members)} (tune {g.representative})"
                for i, g in enumerate(groups, 1)}},
            {}, [path])
    print(f"MLflow run {rid}")
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    from tickertune.config import TuneConfig
    from tickertune.studies import run_sql

    url = args.storage or TuneConfig(ticker="X", results_dir=args.results_dir).storage_url
    cols, rows = run_sql(url, args.query)
    if cols:
        _print_table(cols, rows)
    print(f"({len(rows)} row{'' if len(rows) == 1 else 's'})")
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    from tickertune.results import best_params_path, read_best_params

    doc = read_best_params(args.results_dir, args.ticker)
    if doc is None:
        raise NotFoundError(
            f"no best params for {args.ticker.upper()} at {best_params_path(args.results_dir, args.ticker)}; "
            f"run: tickertune tune {args.ticker.upper()}")
    print(json.dumps(doc, indent=2))
    return 0


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for j, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if j == 0:
            print("  ".join("-" * w for w in widths))


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    from tickertune.config import MaskedStream, MaskSecrets, mask_secrets

    streams = sys.stdout, sys.stderr
    if not isinstance(sys.stderr, MaskedStream):  # whatever prints (MLflow, Optuna, a traceback)
        sys.stdout, sys.stderr = MaskedStream(sys.stdout), MaskedStream(sys.stderr)
    logging.basicConfig(format="%(message)s", stream=sys.stderr)
    for handler in logging.getLogger().handlers:  # whichever library logs, no password shows
        if not any(isinstance(f, MaskSecrets) for f in handler.filters):
            handler.addFilter(MaskSecrets())
    log.setLevel(logging.WARNING if args.quiet else logging.INFO)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # a URL may hold a password
    # A scheduler's SIGTERM (kill, systemd, Kubernetes) stops a run the way Ctrl-C does.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return args.func(args)
    except TickertuneError as exc:
        print(f"tickertune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("tickertune: interrupted; finished trials are saved", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - a bug or a library error: the traceback, masked
        import traceback

        print(mask_secrets(traceback.format_exc()).rstrip(), file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        sys.stdout, sys.stderr = streams


if __name__ == "__main__":
    sys.exit(main())
