"""Daily OHLCV bars: where they come from and whether they can be trusted.

`load_bars` is the only entry point. It reads the bundled sample, a user's CSV or the
(cached) yfinance download, checks every row and returns a clean, date-indexed frame.
Every problem is raised as a one-line `DataError` that names the file and the row.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from tickertune.errors import ConfigError, DataError

PRICE_COLUMNS = ("open", "high", "low", "close")
COLUMNS = (*PRICE_COLUMNS, "volume")
SAMPLE_TICKERS = ("AAPL", "AMZN", "GOOG", "META", "NFLX", "NVDA")

# Header spellings seen in the wild (Yahoo, Stooq, broker exports) mapped to ours.
_HEADER_ALIASES = {
    "date": "date", "datetime": "date", "timestamp": "date", "time": "date",
    "open": "open", "high": "high", "low": "low", "close": "close",
    "volume": "volume", "vol": "volume",
    "adj close": "adj_close", "adj_close": "adj_close", "adjclose": "adj_close",
    "adjusted": "adj_close", "adjusted close": "adj_close",
}


@dataclass(frozen=True)
class Bars:
    """Validated daily bars of one ticker, with where they came from."""

    ticker: str
    frame: pd.DataFrame  # DatetimeIndex "date"; float columns open, high, low, close, volume
    source: str  # human-readable origin, used in every error message
    fingerprint: str  # short hash of the exact values, tagged on every trial run

    def __len__(self) -> int:
        return len(self.frame)


@dataclass(frozen=True)
class DataSpec:
    """Parsed `--data` value: 'sample', 'csv:PATH' or 'yfinance'."""

    kind: str
    path: Path | None = None

    @classmethod
    def parse(cls, spec: str | None) -> "DataSpec":
        spec = (spec or "sample").strip()
        if spec in ("sample", "yfinance"):
            return cls(spec)
        if spec.startswith("csv:") and len(spec) > 4:
            return cls("csv", Path(spec[4:]).expanduser())
        raise ConfigError(
            f"--data {spec!r} is not a data source; use 'sample', 'csv:PATH' or 'yfinance'"
        )

    def __str__(self) -> str:
        return f"csv:{self.path}" if self.kind == "csv" else self.kind


def parse_date(value: str | None, flag: str) -> pd.Timestamp | None:
    """Parse a --start/--end value (YYYY-MM-DD); None stays None."""
    if value in (None, ""):
        return None
    try:
        return pd.Timestamp(dt.date.fromisoformat(str(value)))
    except ValueError:
        raise ConfigError(f"{flag} {value!r} is not a date; use YYYY-MM-DD") from None


def load_bars(
    ticker: str,
    data: str | DataSpec | None = "sample",
    start: str | None = None,
    end: str | None = None,
) -> Bars:
    """Load, validate and date-restrict the daily bars of `ticker`."""
    spec = data if isinstance(data, DataSpec) else DataSpec.parse(data)
    ticker = ticker.strip().upper()
    if not ticker or not ticker.replace(".", "").replace("-", "").replace("^", "").isalnum():
        raise ConfigError(f"ticker {ticker!r} is not a valid symbol")
    start_ts, end_ts = parse_date(start, "--start"), parse_date(end, "--end")
    if start_ts is not None and end_ts is not None and start_ts > end_ts:
        raise ConfigError(f"--start {start} is after --end {end}")

    if spec.kind == "sample":
        if ticker not in SAMPLE_TICKERS:
            raise DataError(
                f"no data for ticker {ticker!r}: the bundled sample has "
                f"{', '.join(SAMPLE_TICKERS)}; use --data csv:PATH for your own file "
                f"or --data yfinance (pip install 'tickertune[online]') to download"
            )
        ref = resources.files("tickertune") / "sample_data" / f"{ticker}.csv.gz"
        with resources.as_file(ref) as path:
            raw = _read_csv(path, compression="gzip", label=f"sample {ticker}.csv")
        source = f"sample {ticker}.csv"
    elif spec.kind == "csv":
        assert spec.path is not None
        if spec.path.is_dir():
            raise DataError(f"{spec.path}: is a directory, not a CSV file")
        if not spec.path.is_file():
            raise DataError(f"{spec.path}: file not found")
        raw = _read_csv(spec.path, compression="infer", label=str(spec.path))
        source = str(spec.path)
    else:
        path = _yfinance_cached(ticker)
        raw = _read_csv(path, compression="infer", label=str(path))
        source = f"yfinance {ticker} (cached at {path})"

    frame = _validate(raw, source)
    if start_ts is not None:
        frame = frame[frame.index >= start_ts]
    if end_ts is not None:
        frame = frame[frame.index <= end_ts]
    if frame.empty:
        raise DataError(f"{source}: no rows between {start or 'the start'} and {end or 'the end'}")
    return Bars(ticker=ticker, frame=frame, source=source, fingerprint=fingerprint(frame))


def bars_from_frame(df: pd.DataFrame, source: str = "input bars") -> pd.DataFrame:
    """Validate a user's DataFrame of daily bars (a date column or a DatetimeIndex) the same
    way a CSV file is validated; returns float bars indexed by date."""
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"{source}: expected a pandas DataFrame of daily bars, got {type(df).__name__}")
    raw = df.copy()
    if "date" not in [str(c).strip().lower() for c in raw.columns] and isinstance(
            raw.index, pd.DatetimeIndex):
        raw = raw.rename_axis("date").reset_index()
    raw.columns = [_HEADER_ALIASES.get(str(c).strip().lower(), str(c).strip().lower())
                   for c in raw.columns]
    raw = raw.reset_index(drop=True)
    if "date" in raw.columns and isinstance(raw["date"].dtype, pd.DatetimeTZDtype):
        raw["date"] = raw["date"].dt.tz_localize(None)
    if "date" in raw.columns and pd.api.types.is_datetime64_any_dtype(raw["date"]):
        raw["date"] = raw["date"].dt.strftime("%Y-%m-%d")
    return _validate(raw.astype(str).replace({"nan": "", "None": "", "<NA>": ""}), source,
                     first_line=0, unit="row")


def fingerprint(frame: pd.DataFrame) -> str:
    """A short, stable hash of dates and values: equal data, equal fingerprint."""
    h = hashlib.sha256()
    h.update(frame.index.values.astype("datetime64[ns]").astype(np.int64).tobytes())
    h.update(np.ascontiguousarray(frame[list(COLUMNS)].to_numpy(dtype=np.float64)).tobytes())
    return h.hexdigest()[:12]


def _read_csv(path: Path, compression: str, label: str) -> pd.DataFrame:
    try:
        raw = pd.read_csv(path, dtype=str, compression=compression, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise DataError(f"{label}: the file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{label}: not a readable CSV file ({first})") from None
    raw.columns = [_HEADER_ALIASES.get(str(c).strip().lower(), str(c).strip().lower())
                   for c in raw.columns]
    return raw


def _validate(raw: pd.DataFrame, source: str, first_line: int = 2, unit: str = "line") -> pd.DataFrame:
    """Check every row; return float bars indexed by date. File line numbers count the header
    (first_line=2); a DataFrame's rows are numbered from 0 (first_line=0, unit='row')."""
    missing = [c for c in ("date", *COLUMNS) if c not in raw.columns]
    if missing:
        raise DataError(
            f"{source}: missing column {', '.join(repr(c) for c in missing)} "
            f"(found: {', '.join(map(str, raw.columns))})"
        )
    if raw.empty:
        raise DataError(f"{source}: no data rows")
    line = np.arange(len(raw)) + first_line

    out = pd.DataFrame(index=raw.index)
    for col in ("date", *COLUMNS):
        text = raw[col].astype("string").str.strip()
        blank = text.isna() | (text == "") | text.str.lower().isin(["nan", "null", "na", "n/a"])
        if blank.any():
            first = int(np.argmax(blank.to_numpy()))
            run_end = first
            while run_end + 1 < len(blank) and blank.iloc[run_end + 1]:
                run_end += 1
            where = (f"{unit} {line[first]}" if run_end == first
                     else f"{unit}s {line[first]}-{line[run_end]} ({run_end - first + 1} rows)")
            raise DataError(f"{source}: missing value in column {col!r} at {where}")
        if col == "date":
            # Daily bars: the exchange-local calendar date is what counts. Drop a time of
            # day's UTC offset (yfinance writes -05:00 / -04:00 across DST) before parsing.
            text = text.str.replace(r"(?<=\d)(?:Z|[+-]\d{2}:?\d{2})$", "", regex=True)
            parsed = pd.to_datetime(text, errors="coerce", format="mixed")
            bad = parsed.isna().to_numpy()
            if bad.any():
                i = int(np.argmax(bad))
                raise DataError(f"{source}: unreadable date {text.iloc[i]!r} at {unit} {line[i]}")
            if getattr(parsed.dt, "tz", None) is not None:
                parsed = parsed.dt.tz_localize(None)
            out["date"] = parsed.dt.normalize()
        else:
            values = pd.to_numeric(text, errors="coerce")
            bad = (values.isna() | ~np.isfinite(values.fillna(0.0).astype(np.float64))).to_numpy()
            if bad.any():
                i = int(np.argmax(bad))
                raise DataError(
                    f"{source}: non-numeric value {text.iloc[i]!r} in column {col!r} "
                    f"at {unit} {line[i]}"
                )
            out[col] = values.astype(np.float64)

    dates = out["date"].to_numpy()
    dup = np.flatnonzero(dates[1:] == dates[:-1])
    if dup.size:
        i = int(dup[0]) + 1
        raise DataError(
            f"{source}: duplicate date {pd.Timestamp(dates[i]).date()} at {unit}s "
            f"{line[i - 1]} and {line[i]}"
        )
    back = np.flatnonzero(dates[1:] < dates[:-1])
    if back.size:
        i = int(back[0]) + 1
        raise DataError(
            f"{source}: dates not in ascending order: {pd.Timestamp(dates[i]).date()} at {unit} "
            f"{line[i]} comes after {pd.Timestamp(dates[i - 1]).date()}"
        )
    seen = pd.Index(dates)
    if seen.has_duplicates:  # duplicates that are not adjacent (file sorted otherwise)
        i = int(np.argmax(seen.duplicated()))
        raise DataError(f"{source}: duplicate date {pd.Timestamp(dates[i]).date()} at {unit} {line[i]}")

    for col in PRICE_COLUMNS:
        bad = (out[col] <= 0).to_numpy()
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(
                f"{source}: non-positive price {out[col].iloc[i]:g} in column {col!r} at {unit} {line[i]}"
            )
    bad = (out["volume"] < 0).to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{source}: negative volume {out['volume'].iloc[i]:g} at {unit} {line[i]}")
    bad = (out["high"] < out["low"]).to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{source}: high below low at {unit} {line[i]}")

    frame = out.set_index("date")
    frame.index.name = "date"
    return frame[list(COLUMNS)]


def cache_dir() -> Path:
    """Where downloads are cached: $TICKERTUNE_CACHE_DIR or ~/.cache/tickertune."""
    return Path(os.environ.get("TICKERTUNE_CACHE_DIR", Path.home() / ".cache" / "tickertune"))


def _yfinance_cached(ticker: str) -> Path:
    """Return a CSV of the full daily history, downloading it at most once a day."""
    path = cache_dir() / "yfinance" / f"{ticker}.csv"
    if path.is_file() and dt.date.fromtimestamp(path.stat().st_mtime) == dt.date.today():
        return path
    try:
        import yfinance  # noqa: PLC0415 - optional extra
    except ImportError:
        if path.is_file():
            return path
        raise ConfigError(
            "--data yfinance needs the optional extra: pip install 'tickertune[online]'"
        ) from None
    try:
        hist = yfinance.Ticker(ticker).history(period="max", interval="1d", auto_adjust=False)
    except Exception as exc:  # network errors come in many types
        if path.is_file():
            return path  # stale cache beats no data
        raise DataError(f"yfinance {ticker}: download failed ({exc})") from None
    if hist is None or hist.empty:
        if path.is_file():
            return path
        raise DataError(
            f"no data for ticker {ticker!r} from yfinance; the bundled sample has "
            f"{', '.join(SAMPLE_TICKERS)}, or use --data csv:PATH"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    hist = hist.reset_index()
    hist["Date"] = pd.to_datetime(hist["Date"]).dt.tz_localize(None).dt.date
    tmp = path.with_suffix(".tmp")
    hist[["Date", "Open", "High", "Low", "Close", "Volume"]].to_csv(tmp, index=False)
    tmp.replace(path)
    return path
