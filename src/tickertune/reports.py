"""`tickertune report TICKER`: study plots as PNGs, an index.html, and an MLflow run with both.

Everything goes to `<results_dir>/reports/<TICKER>/`: per study `<study_name>_<plot>.png`
and one self-contained `index.html` (inline CSS, no scripts, no external URLs)."""

from __future__ import annotations

import datetime as dt
import html
import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tickertune.config import mask_secrets
from tickertune.errors import NotFoundError
from tickertune.plots import MO_TARGETS

log = logging.getLogger("tickertune")

SPLIT_KEYS = [f"{seg}_{edge}" for seg in ("train", "val", "test") for edge in ("start", "end")]
STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING")

CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ccc;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:left}th{background:#f3f3f3}img{max-width:100%;display:block;margin:1em 0;
border:1px solid #eee}.note{color:#666}"""


@dataclass
class ReportResult:
    """What `build_report` wrote: the folder, every file in it (PNGs then index), the run."""

    out_dir: Path
    files: list[Path]
    index: Path
    run_id: str | None
    studies: list[str]


def build_report(ticker: str, storage_url: str, results_dir: Path, tracking: bool = True,
                 experiment: str = "tickertune") -> ReportResult:
    """Plot every study of `ticker` in `storage_url`, write index.html, log both to MLflow.

    Raises NotFoundError when the storage (a missing SQLite file is never created) holds
    no study of the ticker."""
    ticker = ticker.strip().upper()
    studies = _load_studies(ticker, storage_url)
    out_dir = Path(results_dir) / "reports" / ticker
    out_dir.mkdir(parents=True, exist_ok=True)
    images = {s.study_name: save_report_plots(s, out_dir) for s in studies}
    index = out_dir / "index.html"
    index.write_text(render_index(ticker, studies, images), encoding="utf-8")
    files = [p for s in studies for p in images[s.study_name]] + [index]
    log.info("report of %s: %d files in %s", ticker, len(files), out_dir)
    run_id = _log_report(ticker, files, experiment) if tracking else None
    return ReportResult(out_dir=out_dir, files=files, index=index, run_id=run_id,
                        studies=[s.study_name for s in studies])


def _load_studies(ticker: str, storage_url: str) -> list[Any]:
    """The ticker's studies (`<model>_tuning_<T>`, with `_mo` or `_cv<K>` for the other modes)."""
    missing = NotFoundError(f"no study of {ticker} in {mask_secrets(storage_url)}; "
                            f"run: tickertune tune {ticker}")
    if (storage_url.startswith("sqlite:///") and storage_url != "sqlite:///:memory:"
            and not Path(storage_url[len("sqlite:///"):]).is_file()):
        raise missing  # checked first: opening the storage would create the file
    import optuna

    from tickertune.storage import make_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(storage_url)
    pattern = re.compile(rf"[A-Za-z0-9]+_tuning_{re.escape(ticker)}(_mo|_cv\d+)?")
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
                   if pattern.fullmatch(s.study_name))
    if not names:
        raise missing
    return [optuna.load_study(study_name=n, storage=storage) for n in names]


def save_report_plots(study: Any, out_dir: Path) -> list[Path]:
    """Every plot of the study as `<study_name>_<plot>.png` in `out_dir`; returns the files."""
    from tickertune.plots import save_plots

    return save_plots(study, out_dir, study.study_name)


def _fmt(value: Any) -> str:
    """A value for the page: floats to 6 significant digits, everything else as str."""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _table(rows: list[tuple[Any, Any]], head: tuple[str, str] | None = None) -> str:
    """An escaped two-column HTML table."""
    e = html.escape
    top = f"<tr><th>{e(head[0])}</th><th>{e(head[1])}</th></tr>" if head else ""
    body = "".join(f"<tr><th>{e(str(k))}</th><td>{e(_fmt(v))}</td></tr>" for k, v in rows)
    return f"<table>{top}{body}</table>"


def _study_section(study: Any, images: list[Path]) -> str:
    """One study's summary, best params, split dates and images as HTML."""
    e = html.escape
    states = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    multi = len(study.directions) > 1
    rows: list[tuple[Any, Any]] = [("direction(s)", ", ".join(d.name.lower() for d in study.directions))]
    rows += [(f"trials {s}", states[s]) for s in STATES]
    best_params: dict[str, Any] = {}
    if multi:
        front = study.best_trials
        rows.append((f"Pareto-front size ({' / '.join(MO_TARGETS)})", len(front)))
    elif states["COMPLETE"]:
        best = study.best_trial
        rows += [("best value", f"{best.value:.5f}"), ("best trial", best.number)]
        best_params = best.params
    parts = [f"<h2>{e(study.study_name)}</h2>", _table(rows)]
    if best_params:
        parts += ["<h3>Best params</h3>", _table(sorted(best_params.items()), ("param", "value"))]
    if multi and study.best_trials:
        head = "".join(f"<th>{e(h)}</th>" for h in ["trial", *MO_TARGETS, "params"])
        body = "".join(
            "<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in
                             [t.number, *(f"{v:.5g}" for v in t.values),
                              ", ".join(f"{k}={v}" for k, v in sorted(t.params.items()))]) + "</tr>"
            for t in sorted(study.best_trials, key=lambda t: t.values))
        parts += ["<h3>Pareto front</h3>", f"<table><tr>{head}</tr>{body}</table>"]
    splits = [(k, study.user_attrs[k]) for k in SPLIT_KEYS if k in study.user_attrs]
    if splits:
        parts += ["<h3>Split dates</h3>", _table(splits)]
    if images:
        parts += [f'<img src="{e(p.name)}" alt="{e(p.stem)}">' for p in images]
    else:
        parts.append('<p class="note">No plot could be drawn yet.</p>')
    return "\n".join(parts)


def render_index(ticker: str, studies: list[Any], images: dict[str, list[Path]]) -> str:
    """The self-contained index.html of a report (inline CSS, no scripts, no external URLs)."""
    e = html.escape
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    sections = "\n".join(_study_section(s, images.get(s.study_name, [])) for s in studies)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>tickertune report: {e(ticker)}</title><style>{CSS}</style></head>\n<body>"
            f"<h1>tickertune report: {e(ticker)}</h1>"
            f'<p class="note">{len(studies)} studies, written {e(stamp)}</p>\n{sections}\n</body></html>\n')


def _log_report(ticker: str, files: list[Path], experiment: str) -> str:
    """One MLflow run `report-<TICKER>-<timestamp>` with the files under `report/`; its id."""
    from tickertune.tracking import closing_run, experiment_id, quiet_mlflow

    quiet_mlflow()
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run = client.create_run(experiment_id(client, experiment), run_name=f"report-{ticker}-{stamp}",
                            tags={"kind": "report", "ticker": ticker})
    rid = run.info.run_id
    with closing_run(client, rid):
        for f in files:
            client.log_artifact(rid, str(f), "report")
    return rid
