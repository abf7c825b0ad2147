"""One settings object for a tuning invocation, built by the CLI or by user code.

Storage and tracking URLs live here and nowhere else; `masked()` is what gets
printed or logged, so a password in a URL never leaves this module in clear.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from tickertune.errors import ConfigError

PRUNERS = ("hyperband", "asha", "median", "none")
DEFAULT_EXPERIMENT = "tickertune"
STORAGE_ENV = "TICKERTUNE_STORAGE"

# user:password@host, where the password may itself hold '@' (up to the last '@' of the URL).
# A database URL is read the SQLAlchemy way: everything between 'user:' and that '@' is the
# password, unencoded '/', '?' and '#' included ('postgresql://u:2024/pw@host/db'). Any
# other URL is read the urllib way: digits and then '/', '?' or '#' are a port and a path
# (http://host:5000/x?to=a@b.c holds no password, and a URL after it is still read).
_DB_SCHEME = r"(?i:postgres(?:ql)?|mysql|mariadb|mssql|oracle|sqlite|cockroachdb)(?:\+[a-zA-Z0-9_]+)?"
_PASSWORD_IN_URL = re.compile(
    r"(?<![a-zA-Z0-9+.\-])(?P<head>(?:" + _DB_SCHEME + r"://[^:/\s]*:"
    r"|[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/\s]*:(?!\d+[/?#])))(?P<pw>\S*?)@(?=[^@\s]*$|[^@\s]*\s)")
_PASSWORD_PARAM = re.compile(r"(?P<head>[?&;](?:password|passwd|pwd)=)(?P<pw>[^&\s]+)", re.I)


def mask_secrets(text: str) -> str:
    """Replace passwords in URLs (`scheme://user:pw@host`, `?password=pw`) with ***."""
    text = _PASSWORD_IN_URL.sub(r"\g<head>***@", text)
    return _PASSWORD_PARAM.sub(r"\g<head>***", text)


class MaskSecrets(logging.Filter):
    """A log filter that masks passwords in every record, whatever library wrote it
    (MLflow's own exception texts quote the tracking URL as given)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record: logging reports it itself
            return True
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


class MaskedStream:
    """A text stream that masks passwords in everything written to it: the CLI wraps
    stdout and stderr, so no library's log line, warning or traceback prints one."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def write(self, text: str) -> int:
        self._inner.write(mask_secrets(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, encoding...
        return getattr(self._inner, name)


@dataclass
class TuneConfig:
    """Everything one `tickertune tune` invocation needs to know."""

    ticker: str
    trials: int = 20
    models: tuple[str, ...] = ("xgb",)
    pruner: str = "hyperband"
    seed: int = 42
    storage: str | None = None  # Optuna storage URL; default sqlite:///<results_dir>/tuning.db
    tracking_uri: str | None = None  # MLflow; default MLFLOW_TRACKING_URI, then MLflow's own
    tracking: bool = True
    experiment: str | None = None  # default MLFLOW_EXPERIMENT_NAME, then "tickertune"
    data: str = "sample"
    start: str | None = None
    end: str | None = None
    results_dir: Path = field(default_factory=lambda: Path("results"))
    fixed_params: dict[str, Any] = field(default_factory=dict)  # override sampled params
    progress: bool | None = None  # None: a bar when stderr is a terminal
    top_k: int = 3  # transformer checkpoints kept in the registry (XGBoost: the best one)
    device: str = "auto"  # transformer: auto | cpu | cuda
    cv_folds: int = 0  # > 1: walk-forward cross-validation with this many folds
    multi_objective: bool = False  # minimise (val log loss, training seconds); no pruning
    heartbeat_interval: int = 10  # seconds; RDB storages (SQLite, PostgreSQL); 0 = off
    grace_period: int = 60  # seconds without a heartbeat before a trial counts as dead
    worker_id: int = 0  # distinct per parallel worker: its sampler starts elsewhere

    def __repr__(self) -> str:  # a traceback or a log line may show it: no password in clear
        items = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self))
        return f"TuneConfig({mask_secrets(items)})"

    def __post_init__(self) -> None:
        self.ticker = self.ticker.strip().upper()
        self.results_dir = Path(self.results_dir)
        if isinstance(self.models, str):
            self.models = (self.models,)
        if tuple(self.models) == ("all",):
            self.models = ("xgb", "transformer")
        if self.top_k < 0:
            raise ConfigError(f"--top-k must be 0 or more (got {self.top_k})")
        if self.cv_folds < 0 or self.cv_folds == 1:
            raise ConfigError(f"--cv-folds must be 2 or more (got {self.cv_folds})")
        if self.cv_folds and self.multi_objective:
            raise ConfigError("--cv-folds and --multi-objective cannot be combined")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"unknown device {self.device!r}; choose from auto, cpu, cuda")
        if self.trials < 1:
            raise ConfigError(f"--trials must be at least 1 (got {self.trials})")
        if self.pruner not in PRUNERS:
            raise ConfigError(f"unknown pruner {self.pruner!r}; choose from {', '.join(PRUNERS)}")
        if self.worker_id < 0:
            raise ConfigError(f"--worker-id must be 0 or more (got {self.worker_id})")
        if self.heartbeat_interval < 0:
            raise ConfigError(f"--heartbeat-interval must be 0 (off) or more (got {self.heartbeat_interval})")
        if self.heartbeat_interval and self.grace_period <= self.heartbeat_interval:
            raise ConfigError(f"--grace-period ({self.grace_period} s) must be longer than "
                              f"--heartbeat-interval ({self.heartbeat_interval} s)")
        from tickertune.models import MODEL_NAMES  # light: no heavy imports

        for m in self.models:
            if m not in MODEL_NAMES:
                raise ConfigError(f"unknown model {m!r}; choose from {', '.join(MODEL_NAMES)}")

    @property
    def study_suffix(self) -> str:
        """Each study mode has its own study: '', '_cv<K>' or '_mo'."""
        return f"_cv{self.cv_folds}" if self.cv_folds else ("_mo" if self.multi_objective else "")

    @property
    def storage_url(self) -> str:
        """The Optuna storage URL actually used: --storage, else $TICKERTUNE_STORAGE (which
        keeps a password off the command line, where `ps` shows it), else SQLite."""
        if self.storage or os.environ.get(STORAGE_ENV):
            return self.storage or os.environ[STORAGE_ENV]
        return f"sqlite:///{(self.results_dir / 'tuning.db').as_posix()}"

    @property
    def tracking_url(self) -> str | None:
        """Explicit tracking URI, else MLFLOW_TRACKING_URI, else None (MLflow's default)."""
        return self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None

    @property
    def experiment_name(self) -> str:
        return self.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT

    def masked(self) -> dict[str, str]:
        """The settings as strings, with secrets masked: safe to print and to log."""
        out = {k: v for k, v in asdict(self).items() if k not in ("fixed_params", "progress")}
        out["models"] = ",".join(self.models)
        out["storage"] = self.storage_url
        out["tracking_uri"] = self.tracking_url or "(mlflow default)"
        out["results_dir"] = str(self.results_dir)
        for k, v in self.fixed_params.items():
            out[f"fixed.{k}"] = v
        return {k: mask_secrets(str(v)) for k, v in out.items() if v not in (None, "")}
