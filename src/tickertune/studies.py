"""Read-only views of a study storage (what `tickertune studies` prints)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from tickertune.errors import NotFoundError


def list_studies(storage_url: str) -> list[list[Any]]:
    """One row per study: name, direction(s), trials by state, best value and trial."""
    if storage_url.startswith("sqlite:///") and not Path(storage_url[len("sqlite:///"):]).is_file():
        raise NotFoundError(f"no study database at {storage_url[len('sqlite:///'):]}; "
                            f"run: tickertune tune TICKER")
    import optuna

    from tickertune.tuning import make_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(storage_url)
    rows = []
    for summary in sorted(optuna.get_all_study_summaries(storage, include_best_trial=False),
                          key=lambda s: s.study_name):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        states = Counter(t.state.name for t in study.get_trials(deepcopy=False))
        directions = ",".join(d.name.lower() for d in study.directions)
        best_value = best_trial = None
        if len(study.directions) == 1 and states["COMPLETE"]:
            best_value, best_trial = f"{study.best_value:.5f}", study.best_trial.number
        rows.append([summary.study_name, directions, sum(states.values()), states["COMPLETE"],
                     states["PRUNED"], states["FAIL"], states["RUNNING"], best_value, best_trial])
    return rows
