"""What every model offers the tuner. Models know nothing of Optuna or MLflow.

A model suggests its parameters through any object with `suggest_float`,
`suggest_int` and `suggest_categorical` (an Optuna trial is one), prepares the data
once per study, and fits with a *reporter*: a callable it calls once per boosting
round or epoch with the step and the metrics of that step. The reporter may raise
(the tuner raises to prune); the model lets that exception through.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from tickertune.splits import Split

Reporter = Callable[[int, dict[str, float]], None]


class ParamSpace(Protocol):
    """The part of an Optuna trial a model needs to describe its search space."""

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float: ...

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1,
                    log: bool = False) -> int: ...

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...


@dataclass
class FitResult:
    """What one fit produced: the objective value, final metrics and the fitted model."""

    value: float  # best validation log loss: the objective
    metrics: dict[str, float]  # final metrics (val_logloss, val_accuracy, val_auc, ...)
    steps: int  # rounds / epochs actually run
    model: Any = None  # the fitted booster / network, for registration
    extra: dict[str, Any] = field(default_factory=dict)


class Model(Protocol):
    """A tunable model: search space, once-per-study preparation and a fit."""

    name: str
    step_unit: str  # "round" or "epoch": names the per-step metric namespace
    monitor: str  # the per-step metric the tuner reports to the pruner
    min_resource: int
    max_resource: int
    # Fixed settings that are strings and a user may change (`--set`), with the values the
    # library accepts; other string settings (the objective, the metric, the device) are not.
    fixed_choices: dict[str, tuple[str, ...]]

    def suggest_params(self, space: ParamSpace) -> dict[str, Any]: ...

    def fixed_params(self, seed: int) -> dict[str, Any]: ...

    def prepare(self, split: Split) -> Any: ...

    def fit(self, params: dict[str, Any], prepared: Any, reporter: Reporter) -> FitResult: ...
