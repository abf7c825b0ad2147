"""The Python API a user imports; the CLI is a thin shell over it.

`tune(config)` runs one invocation end to end, in the order that keeps bad input
from writing anything: data -> features -> split (all checks) -> tracking reachable
-> studies -> parent run -> trials -> summary, best-params JSON and plots.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from tickertune.config import TuneConfig, mask_secrets
from tickertune.data import load_bars
from tickertune.device import device_tags
from tickertune.features import build_features
from tickertune.splits import chronological_split, walk_forward_folds
from tickertune.version import code_version

log = logging.getLogger("tickertune")


@dataclass
class TuneResult:
    """What `tune` did: per model the study outcome, and where things were written."""

    config: TuneConfig
    outcomes: dict[str, Any] = field(default_factory=dict)  # model -> tuning.StudyOutcome
    best: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> best entry
    best_params_path: Path | None = None
    parent_run_id: str | None = None
    tracking_uri: str | None = None
    tracking_errors: list[str] = field(default_factory=list)
    registered: dict[str, list[Any]] = field(default_factory=dict)  # model -> [registry.Ranked]
    evaluations: dict[str, Any] = field(default_factory=dict)  # model -> evaluation.Evaluation of rank-1


@dataclass
class _Plan:
    """Everything checked before the first write: data, split, models, studies, tracking."""

    bars: Any
    split: Any
    folds: list[Any]
    models: list[Any]
    fixed: dict[str, dict[str, Any]]
    study_attrs: dict[str, Any]
    storage: Any  # storage.Storage
    names: dict[str, str]  # model -> study name
    tracker: Any


def _plan(config: TuneConfig) -> _Plan:
    """Run every check in the order that keeps bad input from writing anything."""
    from tickertune import tuning
    from tickertune.models import get_model
    from tickertune.storage import Heartbeat, open_storage
    from tickertune.tracking import MlflowTracker, NullTracker, check_reachable

    bars = load_bars(config.ticker, config.data, config.start, config.end)
    features = build_features(bars.frame)
    split = chronological_split(features, source=bars.source)
    folds = walk_forward_folds(split, config.cv_folds, bars.source) if config.cv_folds else []
    models = [get_model(name, device=config.device) for name in config.models]
    if config.tracking:
        check_reachable(config.tracking_url)

    fixed = tuning.fixed_by_model(models, config.fixed_params)
    study_attrs = {
        "ticker": bars.ticker,
        "objective": "val_logloss",
        "data_source": bars.source,
        "data_fingerprint": bars.fingerprint,
        "data_spec": str(config.data),
        "start": config.start or "",
        "end": config.end or "",
        "features": features.names,
        "gap": split.gap,
        **split.dates(),
        "cv_folds": config.cv_folds,
        "multi_objective": config.multi_objective,
        **({"fold_val_starts": [str(split.features.dates[f.val.start].date()) for f in folds]}
           if folds else {}),
        "created_by": code_version(),
    }
    n_obj = 2 if config.multi_objective else 1
    # Storage and studies (read-only), then tracking.
    storage = open_storage(config.storage_url, Heartbeat(config.heartbeat_interval, config.grace_period))
    names = {m.name: tuning.study_name(m.name, bars.ticker) + config.study_suffix for m in models}
    for m in models:
        tuning.check_study(names[m.name], storage.optuna, study_attrs, n_obj)
    tracker = (MlflowTracker(config.tracking_url, config.experiment_name,
                             config.heartbeat_interval, config.grace_period)
               if config.tracking else NullTracker())
    tracker.prepare()
    return _Plan(bars, split, folds, models, fixed, study_attrs, storage, names, tracker)


def preflight(config: TuneConfig) -> str | None:
    """Check `config` as `tune` would (data, split, --set, storage, studies, tracking),
    writing no study and no run; raises the same one-line errors. Returns the MLflow
    experiment id the runs will go to (None without tracking)."""
    return getattr(_plan(config).tracker, "experiment_id", None)


def tune(config: TuneConfig, *, pruner: Any = None) -> TuneResult:
    """Tune every model of `config` on its ticker; append `config.trials` trials to each study.

    `pruner`: an Optuna pruner object to use instead of `config.pruner` (asked at every step)."""
    from tickertune import tuning
    from tickertune.registry import Candidate, TopK
    from tickertune.results import best_entry, write_best_params

    plan = _plan(config)
    bars, split, folds, models, fixed = plan.bars, plan.split, plan.folds, plan.models, plan.fixed
    study_attrs, storage, names, tracker = plan.study_attrs, plan.storage.optuna, plan.names, plan.tracker
    if tracker.enabled and plan.storage.stale is not None:
        plan.storage.stale.listeners.append(tracker.close_stale_trial)

    result = TuneResult(config=config, tracking_uri=getattr(tracker, "tracking_uri", None))
    opened: dict[str, Any] = {}
    base = split.baselines(split.val)
    status = "FAILED"
    try:
        if config.multi_objective:
            log.info("pruning is off with --multi-objective: Optuna cannot prune a trial on several "
                     "objectives, so every trial runs to its end (early stopping still applies)")
        for m in models:
            if config.multi_objective:
                spec = tuning.make_pruner("none", m)
            elif pruner is not None:
                spec = tuning.PrunerSpec(type(pruner).__name__, pruner)
            else:
                spec = tuning.make_pruner(config.pruner, tuning.Resources(1, config.cv_folds, 3)
                                          if folds else m)
            opened[m.name] = tuning.open_study(names[m.name], storage, spec, config.seed,
                                               {**study_attrs, "model": m.name}, config.worker_id)
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        parent_tags = {"ticker": bars.ticker, "models": ",".join(config.models),
                       "data_fingerprint": bars.fingerprint, "code_version": code_version(),
                       "kind": "tuning", "storage_kind": plan.storage.kind,
                       **({"worker_id": str(config.worker_id)} if config.worker_id else {}),
                       # --workers under `mlflow run`: the project run that started us
                       **({"project_run_id": os.environ["TICKERTUNE_PROJECT_RUN_ID"]}
                          if os.environ.get("TICKERTUNE_PROJECT_RUN_ID") else {})}
        parent_params = {**config.masked(), "data_rows": str(len(bars)), **split.dates()}
        worker = f"-w{config.worker_id}" if config.worker_id else ""
        result.parent_run_id = tracker.start_parent(
            f"tune-{bars.ticker}-{'-'.join(config.models)}-{stamp}{worker}", parent_params, parent_tags)
        if tracker.enabled:
            try:
                tracker.close_dead_invocations()
            except Exception as exc:  # noqa: BLE001 - housekeeping must not stop the tuning
                log.warning("could not close the runs of dead invocations: %s", mask_secrets(str(exc)))
        if tracker.enabled:
            log.info("tracking to %s (experiment id %s, parent run %s)",
                     mask_secrets(str(tracker.tracking_uri)), tracker.experiment_id, result.parent_run_id)
        trial_tags = {"data_fingerprint": bars.fingerprint, "code_version": code_version(),
                      **device_tags()}
        progress = sys.stderr.isatty() if config.progress is None else config.progress
        for model in models:
            prepared = model.prepare(split)
            # The registry ranks single-split validation losses; other modes register nothing.
            plain = not folds and not config.multi_objective
            keep = TopK((config.top_k if model.name == "transformer" else 1) if plain else 0)
            ctx = tuning.TrialContext(
                model=model, prepared=prepared, ticker=bars.ticker, seed=config.seed,
                tags=trial_tags, final_metrics=base.as_dict("baseline_val_"),
                fixed_overrides=fixed[model.name],
                folds=[model.prepare(f) for f in folds], multi_objective=config.multi_objective,
                on_complete=(lambda n, v, fit, rid, params, keep=keep: keep.offer(
                    Candidate(v, n, rid, fit, params))) if tracker.enabled else None,
            )
            try:
                result.outcomes[model.name] = tuning.run_study(
                    opened[model.name], ctx, tracker, config.trials, progress)
            finally:
                if tracker.enabled and keep.k and tracker.writer is not None:
                    tracker.writer.flush()  # the trial runs exist before models are logged to them
                    result.registered[model.name] = _register(
                        model, prepared, keep, opened[model.name].study, bars, split, result)
                    if result.registered[model.name]:
                        _evaluate_rank_1(model.name, bars, split, tracker, result)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        # Whatever happened, the JSON and the parent reflect every trial that finished. A
        # Ctrl-C here must not cut these writes short (a JSON missing, runs left RUNNING): it
        # is held until they are done, then stops the process as usual (the parent KILLED).
        # A second one cuts the summary short; closing the runs holds one press of its own.
        with _signals_held() as held:
            try:
                for name, op in opened.items():
                    entry = best_entry(op.study)
                    if entry is not None:
                        result.best[name + config.study_suffix] = entry
                if result.best:
                    result.best_params_path = write_best_params(config.results_dir, bars.ticker, result.best)
                if tracker.enabled and result.parent_run_id:
                    _summarise_parent(tracker, [op.study for op in opened.values()], result, base)
            finally:
                with _signals_held() as held_closing:
                    result.tracking_errors = (tracker.finish("KILLED" if held or held_closing else status)
                                              + result.tracking_errors)
    return result


@contextlib.contextmanager
def _signals_held() -> Iterator[list[int]]:
    """Let the block finish through one Ctrl-C/SIGTERM (it is raised afterwards); a second
    one interrupts at once. Yields the signals seen so far (empty: none). Off the main
    thread, signals are left alone."""
    seen: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return

    def record(signum: int, _frame: Any) -> None:
        seen.append(signum)
        if len(seen) > 1:
            raise KeyboardInterrupt(f"signal {signum}")
        print("tickertune: finishing the final writes first (Ctrl-C again to stop at once)",
              file=sys.stderr, flush=True)

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig, old in previous.items():
        if old not in (signal.SIG_IGN, signal.SIG_DFL, None):
            signal.signal(sig, record)
    try:
        yield seen
    finally:
        for sig, old in previous.items():
            if old is not None:
                signal.signal(sig, old)
    if seen:
        raise KeyboardInterrupt(f"signal {seen[0]}")


def _register(model: Any, prepared: Any, keep: Any, study: Any, bars: Any, split: Any,
              result: TuneResult) -> list[Any]:
    """Register this invocation's entrants into the study's top-k; never fails the tuning."""
    from optuna.trial import TrialState

    from tickertune.registry import register_top_k

    meta = {"ticker": bars.ticker, "study_name": study.study_name, "features": split.features.names,
            "data_fingerprint": bars.fingerprint, "data_source": bars.source,
            "code_version": code_version(), **split.dates()}
    try:
        # Only trials the study holds as COMPLETE: another worker may have failed one (its
        # heartbeat was late) after its objective had offered it.
        complete = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
        return register_top_k(
            ticker=bars.ticker, model=model, prepared=prepared, study_name=study.study_name,
            candidates=[c for c in keep.items if c.trial_number in complete], k=keep.k, meta=meta,
            val_dates=split.features.dates[split.val.rows], bars=bars.frame)
    except Exception as exc:  # noqa: BLE001 - the study is done; report, do not lose it
        msg = mask_secrets(f"registry: {type(exc).__name__}: {exc}".splitlines()[0])
        log.error("%s", msg)
        result.tracking_errors.append(msg)
        return []


def _evaluate_rank_1(model: str, bars: Any, split: Any, tracker: Any, result: TuneResult) -> None:
    """Score the registry's rank-1 on the test segment for the parent run's summary.

    Reporting only: nothing is selected on the test segment."""
    from tickertune.ensemble import load_model
    from tickertune.evaluation import evaluate

    try:
        loaded = load_model(bars.ticker, model, "rank-1")
        dates = split.features.dates[split.test.rows]
        p = loaded.predict_proba(bars.frame).reindex(dates).to_numpy()
        ev = evaluate(split.y(split.test), p, split.y(split.train), loaded.label)
    except Exception as exc:  # noqa: BLE001 - a summary must not fail the tuning
        log.warning("could not evaluate %s rank-1 on the test segment: %s", model, mask_secrets(str(exc)))
        return
    result.evaluations[model] = ev
    tracker.log_parent(metrics={f"{model}.{k}": v for k, v in ev.metrics("test_").items()},
                       tags={f"{model}.verdict": ev.verdict})


def _summarise_parent(tracker: Any, studies: list[Any], result: TuneResult, base: Any) -> None:
    """Study summary metrics, best params, the JSON and plots on the parent run."""
    from tickertune import tuning
    from tickertune.plots import save_study_plots

    if tracker.writer is not None:
        tracker.writer.flush()  # trial runs first, so the parent's summary is the last word
    metrics: dict[str, float] = {"baseline_val_logloss": base.logloss,
                                 "baseline_val_accuracy": base.accuracy}
    params: dict[str, str] = {}
    tags: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files: list[tuple[Path, str | None]] = []
        for study in studies:
            model = study.user_attrs.get("model", study.study_name.split("_")[0])
            counts = tuning.state_counts(study)
            for state in ("COMPLETE", "PRUNED", "FAIL"):
                metrics[f"{model}.n_{state.lower()}"] = counts[state]
            outcome = result.outcomes.get(model)
            if outcome is not None:
                metrics[f"{model}.n_added"] = sum(outcome.added.values())
            entry = result.best.get(model + result.config.study_suffix)
            summary = {"study_name": study.study_name, "trials_by_state": counts, "best": entry}
            if entry is not None and "pareto_front" in entry:
                metrics[f"{model}.pareto_size"] = len(entry["pareto_front"])
            elif entry is not None:
                metrics[f"{model}.best_val_logloss"] = entry["best_value"]
                tags[f"{model}.best_trial"] = str(entry["best_trial"])
                params.update({f"{model}.best.{k}": str(v) for k, v in entry["params"].items()})
            path = Path(tmp) / f"{model}_study_summary.json"
            path.write_text(json.dumps(summary, indent=2))
            files.append((path, "summary"))
            files += [(p, "plots") for p in save_study_plots(study, Path(tmp), model)]
        if result.best_params_path is not None:
            files.append((result.best_params_path, "best_params"))
        tracker.log_parent(params=params, metrics=metrics, tags=tags, artifacts=files)
