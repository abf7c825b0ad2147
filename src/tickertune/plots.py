"""Study plots as PNG files (matplotlib, no display needed).

One place draws every plot: the parent run's summary (history and importances, or the
Pareto front) and `tickertune report` (all of them) both call `save_plots`."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("tickertune")

MO_TARGETS = ["val_logloss", "train_seconds"]
SUMMARY_PLOTS = ("optimization_history", "param_importances", "pareto_front")


def study_plotters(study: Any) -> dict[str, Callable[[], Any]]:
    """The plots a study can get, by name, each as a function returning matplotlib axes."""
    from optuna.visualization import matplotlib as ovm

    if len(study.directions) > 1:  # multi-objective: the front, and the loss as the target
        first = {"target": lambda t: t.values[0], "target_name": MO_TARGETS[0]}
        return {
            "optimization_history": lambda: ovm.plot_optimization_history(study, **first),
            "parallel_coordinate": lambda: ovm.plot_parallel_coordinate(study, **first),
            "timeline": lambda: ovm.plot_timeline(study),
            "pareto_front": lambda: ovm.plot_pareto_front(study, target_names=MO_TARGETS),
        }
    return {
        "optimization_history": lambda: ovm.plot_optimization_history(study),
        "param_importances": lambda: ovm.plot_param_importances(study),
        "intermediate_values": lambda: ovm.plot_intermediate_values(study),
        "parallel_coordinate": lambda: ovm.plot_parallel_coordinate(study),
        "timeline": lambda: ovm.plot_timeline(study),
    }


def cannot_draw(study: Any, name: str) -> str | None:
    """Why `name` would be an empty plot for this study, or None when it has data."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if name == "timeline":
        return None if trials else "no trials"
    if name == "intermediate_values":
        return None if any(t.intermediate_values for t in trials) else "no intermediate values"
    if name == "param_importances" and len(complete) < 2:
        return "needs two complete trials"
    return None if complete else "no complete trials"


def save_plots(study: Any, out_dir: Path, prefix: str, names: tuple[str, ...] | None = None) -> list[Path]:
    """Draw the study's plots (all, or those in `names`) as `<prefix>_<plot>.png`.

    A plot that cannot be drawn is skipped with a logged note (and a stale PNG of the
    same name is removed), never an error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for name, draw in study_plotters(study).items():
        if names is not None and name not in names:
            continue
        path = out_dir / f"{prefix}_{name}.png"
        path.unlink(missing_ok=True)
        reason = cannot_draw(study, name)
        ax = None
        if reason is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna.visualization's "experimental" warnings
                try:
                    ax = draw()
                except (ValueError, RuntimeError, ZeroDivisionError) as exc:
                    reason = str(exc)
        if ax is None:
            log.info("skipped %s plot for %s: %s", name, study.study_name, reason)
            plt.close("all")
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(9, 5.5)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        files.append(path)
    return files


def save_study_plots(study: Any, out_dir: Path, prefix: str) -> list[Path]:
    """The parent run's plots: optimisation history and importances (or the Pareto front)."""
    return save_plots(study, out_dir, prefix, SUMMARY_PLOTS)
