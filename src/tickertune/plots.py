"""Study plots as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger("tickertune")


def save_study_plots(study: Any, out_dir: Path, prefix: str) -> list[Path]:
    """Optimisation history and param importances of `study` as PNGs; returns the files.

    A plot that cannot be drawn yet (importances need two finished trials) is skipped
    with a note, never an error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    out_dir.mkdir(parents=True, exist_ok=True)
    plots = {
        "optimization_history": lambda: ovm.plot_optimization_history(study),
        "param_importances": lambda: ovm.plot_param_importances(study),
    }
    files = []
    for name, draw in plots.items():
        path = out_dir / f"{prefix}_{name}.png"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "experimental" warnings from optuna.visualization
            try:
                ax = draw()
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:
                log.info("skipped %s plot for %s: %s", name, study.study_name, exc)
                plt.close("all")
                continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(8, 5)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        files.append(path)
    return files
