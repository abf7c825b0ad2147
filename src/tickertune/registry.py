"""The MLflow model registry: the top-k trials of a study, ranked by aliases.

During an invocation `TopK` keeps, in memory, the fitted models of this invocation's
best trials. At the end `register_top_k` merges them with the versions already
registered for the study, logs and registers only the newcomers that are in the
overall top-k, and points the aliases `rank-1` ... `rank-k` at the current top-k,
so aliases move when a better trial arrives, including from a later invocation or a
parallel worker (see `settle_aliases`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("tickertune")

ALIAS = "rank-{}"


def registered_name(ticker: str, model: str) -> str:
    return f"tickertune-{ticker.upper()}-{model}"


@dataclass(order=True)
class Candidate:
    """A complete trial whose fitted model may be registered."""

    value: float
    trial_number: int
    run_id: str | None = field(compare=False, default=None)
    fit: Any = field(compare=False, default=None)  # FitResult
    params: dict[str, Any] = field(compare=False, default_factory=dict)


class TopK:
    """The k best candidates seen so far (lowest value first); the rest are dropped."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.items: list[Candidate] = []

    def offer(self, cand: Candidate) -> bool:
        """Keep `cand` if it is among the k best so far; returns whether it was kept."""
        if self.k <= 0:
            return False
        self.items.append(cand)
        self.items.sort()
        dropped = self.items[self.k:]
        del self.items[self.k:]
        return cand not in dropped


@dataclass
class Ranked:
    alias: str
    version: str
    trial_number: int
    value: float
    new: bool


def _registered_versions(client: Any, name: str, study_name: str) -> list[tuple[float, int, str]]:
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return []
    out = []
    for v in versions:
        tags = v.tags or {}
        if tags.get("study_name") != study_name or "val_logloss" not in tags:
            continue
        out.append((float(tags["val_logloss"]), int(tags["trial_number"]), str(v.version)))
    return out


def settle_aliases(client: Any, name: str, study_name: str, k: int, rounds: int = 10) -> list[Ranked]:
    """Point rank-1..k at the study's best k registered versions, as the registry holds them now.

    Parallel workers register and move aliases at the same time. Each one re-reads the
    registry after writing and repeats until what it reads is consistent, so whichever
    worker writes last has seen every registration before it: the aliases end at the
    true top-k without a lock."""
    from mlflow.exceptions import MlflowException

    ranked: list[Ranked] = []
    for _ in range(rounds):
        top = sorted(_registered_versions(client, name, study_name), key=lambda e: (e[0], e[1]))[:k]
        ranked = [Ranked(ALIAS.format(i), v, t, val, False) for i, (val, t, v) in enumerate(top, start=1)]
        current = {a: str(v) for a, v in client.get_registered_model(name).aliases.items()} if top else {}
        wanted = {r.alias: r.version for r in ranked}
        stale = [a for a in current if a.startswith("rank-") and a[5:].isdigit() and a not in wanted]
        if current.items() >= wanted.items() and not stale:
            return ranked
        try:
            for alias, version in wanted.items():
                if current.get(alias) != version:
                    client.set_registered_model_alias(name, alias, version)
            for alias in stale:  # fewer entries than before (a smaller --top-k)
                client.delete_registered_model_alias(name, alias)
        except MlflowException as exc:
            # Another worker wrote the same alias at the same moment (a unique-key clash
            # on a database store): read again and retry after a short random pause.
            log.debug("registry: alias write clashed (%s); reading again", exc)
            time.sleep(random.uniform(0.05, 0.3))
    log.warning("registry: the %s aliases did not settle in %d rounds (other workers keep "
                "moving them); the last worker to finish will set them", name, rounds)
    return ranked


def register_top_k(
    *,
    ticker: str,
    model: Any,  # the Model object (its export() writes the weights)
    prepared: Any,
    study_name: str,
    candidates: list[Candidate],
    k: int,
    meta: dict[str, Any],
    val_dates: Any,
    bars: Any,
) -> list[Ranked]:
    """Register the newcomers of the study's top-k and move the rank aliases to the top-k."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from tickertune.serving import BarsModel, example_bars, log_bars_model, save_model_dir

    client = MlflowClient()
    name = registered_name(ticker, model.name)
    existing = _registered_versions(client, name, study_name)
    known = {trial for _, trial, _ in existing}
    pool: list[tuple[float, int, Any]] = [(v, t, ver) for v, t, ver in existing]
    pool += [(c.value, c.trial_number, c) for c in candidates
             if c.trial_number not in known and c.run_id is not None]
    top = sorted(pool, key=lambda e: (e[0], e[1]))[:k]

    new_versions: set[str] = set()
    for value, trial, ref in top:
        if not isinstance(ref, Candidate):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            exported = model.export(ref.fit, prepared, out)
            save_model_dir(out, model.name, exported, {
                **meta, "trial_number": trial, "val_logloss": value, "params": ref.params,
                **({"window": ref.params["window"]} if "window" in ref.params else {}),
            }, val_dates, ref.fit.extra["val_proba"])
            info = log_bars_model(ref.run_id, {"model_dir": str(out)}, BarsModel,
                                  example_bars(bars, 120), {model.name})
        tags = {"study_name": study_name, "trial_number": str(trial), "val_logloss": repr(value),
                "data_fingerprint": str(meta.get("data_fingerprint")), "ticker": ticker,
                "model": model.name}
        with contextlib.redirect_stderr(io.StringIO()):  # its "Successfully registered" lines
            mv = mlflow.register_model(info.model_uri, name, tags=tags)
        new_versions.add(str(mv.version))
    ranked = [Ranked(r.alias, r.version, r.trial_number, r.value, r.version in new_versions)
              for r in settle_aliases(client, name, study_name, k)] if top else []
    for r in ranked:
        log.info("registry: %s@%s -> version %s (trial %d, val_logloss %.5f)%s", name, r.alias,
                 r.version, r.trial_number, r.value, " new" if r.new else "")
    return ranked
