"""Optuna studies: creation or loading, sampler and pruner, and the trial loop.

One trial loop serves every model: the model suggests its params and fits with a
reporter; here the reporter becomes `trial.report` + `should_prune` (and a buffered
metric for tracking). Each trial's run is opened before the fit and closed with the
trial's real end state: COMPLETE, PRUNED or FAIL.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import optuna

from tickertune.errors import ConfigError
from tickertune.models.base import Model, ParamSpace

log = logging.getLogger("tickertune")

DIRECTION = "minimize"  # validation log loss
WORKER_SEED_STRIDE = 100_003  # a prime, far beyond any study's trial count


def study_name(model: str, ticker: str) -> str:
    return f"{model}_tuning_{ticker}"


@dataclass(frozen=True)
class PrunerSpec:
    """An Optuna pruner and the steps at which it can decide anything.

    Every step is reported to Optuna; `should_prune` (a storage read costing ~10 ms on
    SQLite) is asked only at decision steps. For Hyperband and successive halving
    those are the rungs min_resource * reduction_factor**k, where asking at other steps
    always answers False, so the pruning is exactly the same."""

    name: str
    pruner: optuna.pruners.BasePruner
    min_resource: int = 1
    base: int = 0  # geometric rungs when > 1; 0 = every `interval` steps
    interval: int = 1

    def decides_at(self, step: int) -> bool:
        if self.name == "none" or step < self.min_resource:
            return False
        if self.base > 1:
            q = step / self.min_resource
            while q > 1 and q == int(q) and int(q) % self.base == 0:
                q /= self.base
            return q == 1
        return (step - self.min_resource) % self.interval == 0


@dataclass(frozen=True)
class Resources:
    """A pruner's step budget when the steps are not the model's own (CV folds)."""

    min_resource: int
    max_resource: int
    reduction_factor: int = 3


def make_pruner(name: str, model: Model | Resources) -> PrunerSpec:
    """hyperband (default) | asha | median | none, sized by the model's step budget."""
    lo = model.min_resource
    if name == "hyperband":
        rf = getattr(model, "reduction_factor", 3)
        return PrunerSpec(name, optuna.pruners.HyperbandPruner(
            min_resource=lo, max_resource=model.max_resource, reduction_factor=rf), lo, base=rf)
    if name == "asha":
        return PrunerSpec(name, optuna.pruners.SuccessiveHalvingPruner(
            min_resource=1, reduction_factor=2), 1, base=2)
    if name == "median":
        return PrunerSpec(name, optuna.pruners.MedianPruner(
            n_startup_trials=5, n_warmup_steps=lo, interval_steps=lo), lo, interval=lo)
    if name == "none":
        return PrunerSpec(name, optuna.pruners.NopPruner())
    raise ConfigError(f"unknown pruner {name!r}")


@dataclass
class OpenedStudy:
    study: optuna.Study
    created: bool
    n_existing: int
    pruner: PrunerSpec


def check_study(name: str, storage: optuna.storages.BaseStorage,
                attrs: dict[str, Any], n_objectives: int = 1) -> optuna.Study | None:
    """The existing study `name`, or None; refuses one of another mode or split. Writes nothing."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # we log created/loaded ourselves
    try:
        existing = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None
    if len(existing.directions) != n_objectives:
        raise ConfigError(
            f"study {name!r} in this storage has {len(existing.directions)} objective(s), this run "
            f"has {n_objectives}: it belongs to another study mode (use another --storage or mode)"
        )
    if any(d != optuna.study.StudyDirection.MINIMIZE for d in existing.directions):
        raise ConfigError(f"study {name!r} in this storage maximises; tickertune minimises")
    if existing.user_attrs.get("cv_folds", 0) != attrs.get("cv_folds", 0):
        raise ConfigError(f"study {name!r} was tuned with cv_folds={existing.user_attrs.get('cv_folds', 0)},"
                          f" this run asks for {attrs.get('cv_folds', 0)}")
    split_keys = [k for k in attrs if k.endswith(("_start", "_end")) and k.split("_")[0] in
                  ("train", "val", "test")]
    recorded = {k: existing.user_attrs.get(k) for k in split_keys}
    now = {k: attrs[k] for k in split_keys}
    if any(v is not None for v in recorded.values()) and recorded != now:
        raise ConfigError(
            f"study {name!r} was tuned on another split (validation {recorded.get('val_start')}.."
            f"{recorded.get('val_end')}, test from {recorded.get('test_start')}); this data gives "
            f"validation {now.get('val_start')}..{now.get('val_end')}: use the same --data/--start/"
            f"--end, or another --storage")
    return existing


def open_study(
    name: str,
    storage: optuna.storages.BaseStorage,
    pruner: PrunerSpec,
    seed: int,
    attrs: dict[str, Any],
    worker_id: int = 0,
) -> OpenedStudy:
    """Create `name` or load it (load_if_exists), refusing a study of another mode or split.

    The sampler seed is `seed + existing trials` (+ a stride per worker id), so a re-run
    continues the search instead of replaying the random start-up points of the first
    invocation, and parallel workers started together do not sample the same points."""
    n_objectives = 2 if attrs.get("multi_objective") else 1
    existing = check_study(name, storage, attrs, n_objectives)
    n_existing = len(existing.trials) if existing is not None else 0
    sampler = optuna.samplers.TPESampler(seed=seed + n_existing + WORKER_SEED_STRIDE * worker_id,
                                         multivariate=True)
    study = optuna.create_study(
        study_name=name, storage=storage, sampler=sampler, pruner=pruner.pruner,
        directions=[DIRECTION] * n_objectives, load_if_exists=True,
    )
    created = existing is None
    if created:
        for k, v in attrs.items():
            study.set_user_attr(k, v)
        log.info("created new study %s", name)
    else:
        old = study.user_attrs.get("data_fingerprint")
        if old and old != attrs.get("data_fingerprint"):
            log.warning("study %s was started on data with fingerprint %s, now %s (same split dates)",
                        name, old, attrs.get("data_fingerprint"))
        log.info("loaded study %s with %d existing trials", name, n_existing)
    study.set_user_attr("pruner", pruner.name)
    return OpenedStudy(study=study, created=created, n_existing=n_existing, pruner=pruner)


class _RecordingSpace:
    """A ParamSpace that records every declared parameter (name -> kind and range)."""

    def __init__(self, pick: int) -> None:
        self.pick = pick
        self.decls: dict[str, tuple] = {}

    def suggest_float(self, name: str, low: float, high: float, **kw: Any) -> float:
        self.decls[name] = ("float", low, high)
        return low

    def suggest_int(self, name: str, low: int, high: int, **kw: Any) -> int:
        self.decls[name] = ("int", low, high)
        return low

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        self.decls[name] = ("categorical", list(choices))
        return list(choices)[min(self.pick, len(choices) - 1)]


def search_space(model: Model) -> dict[str, tuple]:
    """Every parameter a model can suggest, over all branches of its conditional space."""
    decls: dict[str, tuple] = {}
    for pick in range(4):
        space = _RecordingSpace(pick)
        model.suggest_params(space)
        decls.update(space.decls)
    return decls


_FIXED_WHY = {"seed": "use --seed (each trial adds its number)", "device": "use --device",
              "": "it defines the loss every study minimises"}


def _settable_fixed(model: Model) -> dict[str, Any]:
    """The fixed settings `--set` may change, with their defaults: not the seed (--seed plus
    the trial number), and a string only where the model lists its choices (the objective
    and the metric define the loss every study minimises; the device is --device)."""
    return {k: v for k, v in model.fixed_params(0).items()
            if k != "seed" and (not isinstance(v, str) or k in model.fixed_choices)}


def _checked(model: Model, key: str, value: Any, decl: tuple | None) -> Any:
    where = f"--set {model.name}.{key}={value}"
    if decl is None:  # a fixed setting: keep the type of its default
        default = _settable_fixed(model)[key]
        if isinstance(default, bool):
            if str(value).lower() in ("true", "1", "false", "0"):
                return str(value).lower() in ("true", "1")
            raise ConfigError(f"{where}: expected true or false")
        if isinstance(default, str) and str(value) not in model.fixed_choices[key]:
            raise ConfigError(f"{where}: choose from {', '.join(model.fixed_choices[key])}")
        if isinstance(default, (int, float)) and not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number")
        if isinstance(default, int) and (not float(value).is_integer() or value < 1):
            raise ConfigError(f"{where}: expected a whole number >= 1")
        return type(default)(value) if isinstance(default, (int, float)) else value
    kind = decl[0]
    if kind == "categorical":
        for choice in decl[1]:
            if value == choice or str(value) == str(choice):
                return choice
        raise ConfigError(f"{where}: choose from {', '.join(map(str, decl[1]))}")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number in [{decl[1]}, {decl[2]}]")
    if not decl[1] <= value <= decl[2]:
        raise ConfigError(f"{where}: outside the search range [{decl[1]}, {decl[2]}]")
    if kind == "int":
        if not float(value).is_integer():
            raise ConfigError(f"{where}: expected a whole number")
        return int(value)
    return float(value)


def fixed_by_model(models: list[Model], fixed: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Validate `--set` values and route each to its model(s). A key may be prefixed with
    the model ('xgb.gamma'); a bare key that two chosen models both have is refused."""
    out: dict[str, dict[str, Any]] = {m.name: {} for m in models}
    names = {m.name: m for m in models}
    for key, value in fixed.items():
        prefix, dot, bare = key.partition(".")
        if not dot:
            prefix, bare = "", key
        elif prefix not in names:
            raise ConfigError(f"--set {key}: {prefix!r} is not a model of this run "
                              f"({', '.join(names)})")
        owners = []
        for m in models:
            if prefix and m.name != prefix:
                continue
            space = search_space(m)
            if bare in space or bare in _settable_fixed(m):
                owners.append((m, space.get(bare)))
        if not owners:
            chosen = [m for m in models if not prefix or m.name == prefix]
            valid = ", ".join(sorted({k for m in chosen for k in [*search_space(m), *_settable_fixed(m)]}))
            if any(bare in m.fixed_params(0) for m in chosen):  # a real setting, not a typo
                raise ConfigError(f"--set {key}: fixed, {_FIXED_WHY.get(bare, _FIXED_WHY[''])}; "
                                  f"settable: {valid}")
            raise ConfigError(f"--set {key}: unknown parameter; known: {valid}")
        if not prefix and len(owners) > 1:
            raise ConfigError(f"--set {key}: both models have {bare!r}; write "
                              + " or ".join(f"{m.name}.{bare}" for m, _ in owners))
        for m, decl in owners:
            out[m.name][bare] = _checked(m, bare, value, decl)
    return out


class _FixingSpace:
    """A ParamSpace that answers fixed values for overridden names, Optuna for the rest."""

    def __init__(self, trial: optuna.Trial, fixed: dict[str, Any]) -> None:
        self._trial, self._fixed = trial, fixed

    def suggest_float(self, name: str, low: float, high: float, **kw: Any) -> float:
        return self._fixed[name] if name in self._fixed else self._trial.suggest_float(name, low, high, **kw)

    def suggest_int(self, name: str, low: int, high: int, **kw: Any) -> int:
        return self._fixed[name] if name in self._fixed else self._trial.suggest_int(name, low, high, **kw)

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self._fixed[name] if name in self._fixed else self._trial.suggest_categorical(name, choices)


@dataclass
class TrialContext:
    """What every trial of one study shares: built once, read by each trial."""

    model: Model
    prepared: Any
    ticker: str
    seed: int
    tags: dict[str, str]  # constant tags for every trial run (fingerprint, version, device)
    final_metrics: dict[str, float] = field(default_factory=dict)  # e.g. baselines
    fixed_overrides: dict[str, Any] = field(default_factory=dict)
    # Called with every complete trial's (number, value, FitResult, run id, params):
    # the registry keeps the best fitted models from it.
    on_complete: Callable[[int, float, Any, str | None, dict[str, Any]], None] | None = None
    folds: list[Any] = field(default_factory=list)  # prepared data per walk-forward fold (CV mode)
    multi_objective: bool = False  # return (val log loss, training seconds); no pruning


def make_objective(
    ctx: TrialContext, study: optuna.Study, tracker: Any, pruner: PrunerSpec,
    errors: dict[int, str] | None = None, stop: "StopRequest | None" = None,
) -> Callable[[optuna.Trial], float]:
    """The objective: suggest, fit with a pruning reporter, record, return val log loss.

    A failing trial's error text goes to `errors[trial.number]` (Optuna keeps none).
    `stop`: a Ctrl-C seen while trials run ends the trial at its next step."""
    stop = stop or StopRequest()
    model = ctx.model
    space_fixed = dict(ctx.fixed_overrides)
    unit = "fold" if ctx.folds else model.step_unit

    def objective(trial: optuna.Trial) -> float | tuple[float, float]:
        params = model.suggest_params(_FixingSpace(trial, space_fixed))
        fixed = model.fixed_params(seed=ctx.seed + trial.number)
        fixed.update({k: v for k, v in space_fixed.items() if k not in params})
        if space_fixed:
            trial.set_user_attr("fixed_params", json.dumps(space_fixed, sort_keys=True))
        tags = {
            **ctx.tags,
            "study_name": study.study_name,
            "trial_number": str(trial.number),
            "ticker": ctx.ticker,
            "model": model.name,
        }
        run = tracker.start_trial(
            trial.number, f"{model.name}-trial-{trial.number:04d}", {**fixed, **params}, tags,
            unit, on_created=lambda rid: trial.set_user_attr("mlflow_run_id", rid),
        )
        t0 = time.perf_counter()
        last = {"step": 0}

        def report(step: int, value: float) -> None:
            """One intermediate value to Optuna (not in multi-objective mode: Optuna has none)."""
            last["step"] = step
            stop.check()
            if ctx.multi_objective:
                return
            trial.report(value, step)
            if pruner.decides_at(step) and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at {unit} {step}")

        def reporter(step: int, metrics: dict[str, float]) -> None:
            run.log_step(step, metrics)
            report(step, metrics[model.monitor])

        state, error, end_tags = "FAIL", None, {}
        all_params = {**fixed, **params}
        try:
            stop.check()
            if ctx.folds:
                result, train_seconds = _fit_folds(model, all_params, ctx.folds, run, report,
                                                   lambda step, metrics: stop.check())
            else:
                t_fit = time.perf_counter()
                result = model.fit(all_params, ctx.prepared, reporter)
                train_seconds = time.perf_counter() - t_fit
            if not math.isfinite(result.value):
                raise ValueError(f"objective value is {result.value}")
            if _failed_elsewhere(study, trial):
                raise TrialFailedElsewhere(
                    f"trial {trial.number} was marked FAIL by another worker while it ran (no "
                    f"heartbeat for the grace period); its result is discarded")
            run.log_metrics({**result.metrics, **ctx.final_metrics,
                             **result.extra.get("device_metrics", {}),
                             "train_seconds": train_seconds, "duration_s": time.perf_counter() - t0})
            if ctx.on_complete is not None:
                ctx.on_complete(trial.number, result.value, result, run.run_id(), all_params)
            state = "COMPLETE"
            return (result.value, train_seconds) if ctx.multi_objective else result.value
        except optuna.TrialPruned:
            state = "PRUNED"
            end_tags["pruned_at_step"] = str(last["step"])
            run.log_metrics({**ctx.final_metrics, "duration_s": time.perf_counter() - t0})
            raise
        except BaseException as exc:
            error = f"{type(exc).__name__}: {exc}".strip()
            if isinstance(exc, KeyboardInterrupt):
                error = "KeyboardInterrupt: interrupted by the user (Ctrl-C)"
                end_tags["interrupted"] = "true"
            if errors is not None:
                errors[trial.number] = error
            run.log_metrics({"duration_s": time.perf_counter() - t0})
            raise
        finally:
            run.run_id()  # the trial -> run link must land before Optuna closes the trial
            tracker.end_trial(trial.number, state, error, end_tags)

    return objective


class TrialFailedElsewhere(RuntimeError):
    """Another worker failed this (live) trial: its heartbeat was late."""


def _failed_elsewhere(study: optuna.Study, trial: optuna.Trial) -> bool:
    # One storage read per trial; Optuna would otherwise refuse the result in a way
    # that kills the worker (an assertion inside optimize).
    return study._storage.get_trial(trial._trial_id).state != optuna.trial.TrialState.RUNNING


def _fit_folds(model: Model, params: dict[str, Any], folds: list[Any], run: Any,
               report: Callable[[int, float], None],
               inner: Callable[[int, dict[str, float]], None]) -> tuple[Any, float]:
    """Fit every walk-forward fold; report the running mean loss after each (step = fold).
    `inner` hears each fold's rounds/epochs (a Ctrl-C is noticed there, not a fold later)."""
    import numpy as np

    from tickertune.models.base import FitResult

    losses, seconds, last = [], 0.0, None
    for i, prepared in enumerate(folds, start=1):
        t_fit = time.perf_counter()
        last = model.fit(params, prepared, inner)
        seconds += time.perf_counter() - t_fit
        losses.append(last.value)
        run.log_step(i, {"val_logloss": last.metrics["val_logloss"],
                         "val_accuracy": last.metrics["val_accuracy"], "val_auc": last.metrics["val_auc"]})
        report(i, float(np.mean(losses)))
    mean = float(np.mean(losses))
    metrics = {"val_logloss": mean, "val_logloss_std": float(np.std(losses)), "n_folds": float(len(folds))}
    return FitResult(value=mean, metrics=metrics, steps=len(folds), model=None), seconds


class StopRequest:
    """Set by the first Ctrl-C (or SIGTERM) while trials run; checked at every step."""

    def __init__(self) -> None:
        self.requested = False
        self.at = 0.0  # time.monotonic() of the request

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt("interrupted by the user (Ctrl-C)")


@contextlib.contextmanager
def graceful_stop() -> Iterator[StopRequest]:
    """While trials run, the first Ctrl-C/SIGTERM ends the current trial at its next
    step (never between Optuna creating a trial and its MLflow run existing); a second
    one stops at once. Elsewhere, and off the main thread, signals are left alone."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, _frame: Any) -> None:
        # A second signal within a second is the same request (systemd TERMs the whole
        # group while our launcher passes on a SIGINT); a later one means "now".
        if stop.requested and time.monotonic() - stop.at > 1.0:
            raise KeyboardInterrupt(f"signal {signum}")
        if stop.requested:
            return
        stop.requested, stop.at = True, time.monotonic()
        print("tickertune: stopping at the current trial's next step (Ctrl-C again to stop at once)",
              file=sys.stderr, flush=True)

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    # SIGINT as Python sets it (not ignored, as in a background job); SIGTERM only where
    # the caller made it an interrupt (the CLI does), never where it would terminate.
    if previous[signal.SIGINT] is signal.default_int_handler:
        signal.signal(signal.SIGINT, handler)
    if previous[signal.SIGTERM] not in (signal.SIG_DFL, signal.SIG_IGN, None):
        signal.signal(signal.SIGTERM, handler)
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            if old is not None:
                signal.signal(sig, old)


@dataclass
class StudyOutcome:
    """The study after this invocation, and what this invocation added."""

    study: optuna.Study
    added: Counter  # states of the trials this invocation ran
    first_number: int


def run_study(
    opened: OpenedStudy,
    ctx: TrialContext,
    tracker: Any,
    n_trials: int,
    progress: bool,
) -> StudyOutcome:
    """Run exactly `n_trials` more trials (any end state) on the study."""
    study = opened.study
    added: Counter = Counter()
    errors: dict[int, str] = {}
    bar = _progress_bar(n_trials, f"{ctx.model.name} {ctx.ticker}") if progress else None

    def on_trial_end(st: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
        added[t.state.name] += 1
        try:
            best = (f"pareto front: {len(st.best_trials)} trials" if ctx.multi_objective
                    else f"best={st.best_value:.5f} (trial {st.best_trial.number})")
        except ValueError:
            best = "best=n/a"
        if t.state == optuna.trial.TrialState.COMPLETE:
            what = (f"val_logloss={t.values[0]:.5f} train_seconds={t.values[1]:.2f}"
                    if ctx.multi_objective else f"val_logloss={t.value:.5f}")
        elif t.state == optuna.trial.TrialState.PRUNED:
            steps = t.last_step if t.last_step is not None else 0
            unit = "fold" if ctx.folds else ctx.model.step_unit
            what = f"pruned after {steps} {unit}{'' if steps == 1 else 's'}"
        else:
            what = "failed: " + errors.get(t.number, "unknown error").splitlines()[0][:200]
        dur = t.duration.total_seconds() if t.duration else 0.0
        line = f"[{ctx.model.name}] trial {t.number} {t.state.name} {what} {best} {dur:.1f}s"
        if bar is not None:
            bar.set_postfix_str(best)
            bar.update(1)
            if t.state == optuna.trial.TrialState.FAIL:
                bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # we print one line per trial instead
    try:
        with graceful_stop() as stop:
            objective = make_objective(ctx, study, tracker, opened.pruner, errors, stop)
            started = [0]
            current: list[optuna.Trial] = []

            def counted(trial: optuna.Trial) -> Any:
                started[0] += 1
                current[:] = [trial]
                return objective(trial)

            while started[0] < n_trials:
                try:
                    study.optimize(counted, n_trials=n_trials - started[0],
                                   callbacks=[on_trial_end, lambda st, t: stop.check()],
                                   catch=(Exception,), gc_after_trial=False)
                except (ValueError, AssertionError) as exc:
                    # Another worker saw no heartbeat from this live trial for the grace
                    # period and failed it; Optuna then refuses our result. Go on.
                    cause = exc if isinstance(exc, ValueError) else exc.__context__
                    if "Cannot tell a" not in str(cause):
                        raise
                    added["FAIL"] += 1
                    number = current[0].number if current else "?"
                    why = (f"trial {number} was marked FAIL by another worker as it ended (no "
                           f"heartbeat for --grace-period: a stalled storage?); its result is discarded")
                    log.warning("[%s] %s", ctx.model.name, why)
                    if current:  # its run was ended FINISHED a moment before the refusal
                        tracker.fail_trial_run(current[0].user_attrs.get("mlflow_run_id"), why)
                    stop.check()
    finally:
        if bar is not None:
            bar.close()
    return StudyOutcome(study=study, added=added, first_number=opened.n_existing)


def _progress_bar(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="trial", file=sys.stderr, dynamic_ncols=True)


def state_counts(study: optuna.Study) -> dict[str, int]:
    """Trials of the whole study by state: COMPLETE, PRUNED, FAIL, RUNNING, WAITING."""
    c = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    return {s.name: c.get(s.name, 0) for s in optuna.trial.TrialState}
