"""Loading and validating daily bars: the bundled sample, user CSVs and bad input.

Bad files are fed through the real CLI (a subprocess) so the tests cover the whole
path a user sees: exit code, the one-line message on stderr, and that nothing at all
was written (no results dir, no MLflow store) when the data is rejected.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tickertune.data import COLUMNS, SAMPLE_TICKERS, load_bars
from tickertune.errors import DataError
from tickertune.features import build_features
from tickertune.splits import chronological_split

SIX = ("AAPL", "AMZN", "GOOG", "META", "NFLX", "NVDA")


@pytest.fixture(scope="module")
def aapl() -> pd.DataFrame:
    return load_bars("AAPL").frame


# --------------------------------------------------------------------------- sample


def test_sample_ticker_list_is_the_six():
    assert tuple(SAMPLE_TICKERS) == SIX


@pytest.mark.parametrize("ticker", SIX)
def test_sample_loads(ticker):
    bars = load_bars(ticker, "sample")
    f = bars.frame
    assert bars.ticker == ticker
    assert len(bars) == len(f) == 2699
    assert f.index[0] == pd.Timestamp("2013-01-02")
    assert f.index[-1] == pd.Timestamp("2023-09-21")
    assert list(f.columns) == ["open", "high", "low", "close", "volume"]
    assert all(f[c].dtype == np.float64 for c in f.columns)
    assert isinstance(f.index, pd.DatetimeIndex)
    assert f.index.name == "date"
    assert f.index.is_unique
    assert f.index.is_monotonic_increasing
    assert np.isfinite(f.to_numpy()).all()
    assert (f[["open", "high", "low", "close"]] > 0).all().all()
    assert (f["high"] >= f["low"]).all()


@pytest.mark.parametrize("ticker", SIX)
def test_fingerprint_stable_and_sensitive_to_start(ticker):
    a = load_bars(ticker)
    b = load_bars(ticker)
    assert re.fullmatch(r"[0-9a-f]{12}", a.fingerprint)
    assert a.fingerprint == b.fingerprint
    later = load_bars(ticker, start="2013-01-03")
    assert len(later) == 2698
    assert later.fingerprint != a.fingerprint
    assert load_bars(ticker, start="2015-06-01").fingerprint != later.fingerprint


def test_fingerprints_differ_between_tickers():
    assert len({load_bars(t).fingerprint for t in SIX}) == len(SIX)


def test_date_window_restricts_rows():
    bars = load_bars("AAPL", "sample", start="2020-01-01", end="2020-12-31")
    f = bars.frame
    assert f.index[0] == pd.Timestamp("2020-01-02")
    assert f.index[-1] == pd.Timestamp("2020-12-31")
    assert len(f) == 253
    assert (f.index.year == 2020).all()
    full = load_bars("AAPL").frame
    pd.testing.assert_frame_equal(f, full.loc["2020-01-01":"2020-12-31"])


def test_unknown_ticker_offline_lists_sample_and_csv():
    with pytest.raises(DataError) as info:
        load_bars("ZZZZ", "sample")
    msg = str(info.value)
    assert "ZZZZ" in msg
    for t in SIX:
        assert t in msg
    assert "csv:PATH" in msg
    assert "\n" not in msg


# --------------------------------------------------------------------------- CSV headers


def _write_variant(frame: pd.DataFrame, path: Path, variant: str) -> None:
    d = frame.reset_index()
    d["date"] = d["date"].dt.strftime("%Y-%m-%d")
    if variant == "lower":
        d = d[["date", *COLUMNS]]
    elif variant == "upper":
        d = d[["date", *COLUMNS]].rename(columns=str.upper)
    elif variant == "yahoo":
        d["adj"] = d["close"] * 0.9  # an adjusted close that must be ignored
        d = d[["date", "open", "high", "low", "close", "adj", "volume"]]
        d.columns = ["Date", "Open", "High", "Low", "Close", "Adj Close", "Volume"]
        d["Volume"] = d["Volume"].astype(np.int64)  # Yahoo writes whole numbers
    else:  # pragma: no cover
        raise AssertionError(variant)
    d.to_csv(path, index=False)


@pytest.mark.parametrize("variant", ["lower", "upper", "yahoo"])
def test_csv_header_variants_match_sample(tmp_path, aapl, variant):
    path = tmp_path / f"aapl_{variant}.csv"
    _write_variant(aapl, path, variant)
    header = path.read_text().splitlines()[0]
    expected_header = {
        "lower": "date,open,high,low,close,volume",
        "upper": "DATE,OPEN,HIGH,LOW,CLOSE,VOLUME",
        "yahoo": "Date,Open,High,Low,Close,Adj Close,Volume",
    }[variant]
    assert header == expected_header

    bars = load_bars("aapl", f"csv:{path}")
    assert bars.ticker == "AAPL"
    assert bars.source == str(path)
    pd.testing.assert_frame_equal(bars.frame, aapl, check_exact=True, check_freq=False)
    assert bars.fingerprint == load_bars("AAPL").fingerprint


def test_csv_missing_file_is_data_error(tmp_path):
    path = tmp_path / "nope.csv"
    with pytest.raises(DataError, match=re.escape(f"{path}: file not found")):
        load_bars("AAPL", f"csv:{path}")


# --------------------------------------------------------------------------- bad data via CLI

SLICE = slice(500, 1500)  # a valid 1000-row window of the AAPL sample


def _slice_frame(aapl: pd.DataFrame) -> pd.DataFrame:
    d = aapl.iloc[SLICE].reset_index()
    d["date"] = d["date"].dt.strftime("%Y-%m-%d")
    return d.astype(object)  # so a cell can hold text like "abc"


def _line(row: int) -> int:
    """1-based file line of 0-based data row `row` (line 1 is the header)."""
    return row + 2


def _iso(d: pd.DataFrame, row: int) -> str:
    return str(d.loc[row, "date"])


# Each case: (id, mutate(d) -> d, expected problem text after "PATH: ").
def _missing_column(d):
    return d.drop(columns="volume"), "missing column 'volume' (found: date, open, high, low, close)"


def _non_numeric(d):
    d.loc[15, "close"] = "abc"
    return d, f"non-numeric value 'abc' in column 'close' at line {_line(15)}"


def _nan_run(d):
    d.loc[100:102, "close"] = ""
    return d, f"missing value in column 'close' at lines {_line(100)}-{_line(102)} (3 rows)"


def _single_blank(d):
    d.loc[40, "open"] = ""
    return d, f"missing value in column 'open' at line {_line(40)}"


def _duplicate_date(d):
    d.loc[200, "date"] = d.loc[199, "date"]
    return d, f"duplicate date {_iso(d, 199)} at lines {_line(199)} and {_line(200)}"


def _unsorted(d):
    a, b = d.loc[300].copy(), d.loc[301].copy()
    d.loc[300], d.loc[301] = b, a
    # Row 301 now holds the earlier date, which comes after the later one at row 300.
    return d, (f"dates not in ascending order: {_iso(d, 301)} at line {_line(301)} "
               f"comes after {_iso(d, 300)}")


def _zero_close(d):
    d.loc[400, "close"] = 0
    return d, f"non-positive price 0 in column 'close' at line {_line(400)}"


def _negative_close(d):
    d.loc[400, "close"] = -5.5
    return d, f"non-positive price -5.5 in column 'close' at line {_line(400)}"


def _too_few_rows(d):
    return d.iloc[:150], ("too few rows: 150 bars, at least 480 needed (look-back 50, gaps 50, "
                          "train/val/test >= 200/50/50); widen --start/--end")


def _infinite_price(d):
    d.loc[400, "close"] = "inf"
    return d, f"non-numeric value 'inf' in column 'close' at line {_line(400)}"


BAD_CASES = [
    pytest.param(_missing_column, id="missing-column"),
    pytest.param(_non_numeric, id="non-numeric"),
    pytest.param(_nan_run, id="nan-run"),
    pytest.param(_single_blank, id="single-blank"),
    pytest.param(_duplicate_date, id="duplicate-date"),
    pytest.param(_unsorted, id="unsorted"),
    pytest.param(_zero_close, id="zero-close"),
    pytest.param(_negative_close, id="negative-close"),
    pytest.param(_too_few_rows, id="too-few-rows"),
    pytest.param(_infinite_price, id="infinite-price"),
]


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path}/mlflow.db"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env["TICKERTUNE_CACHE_DIR"] = str(tmp_path / "cache")
    return subprocess.run(
        [sys.executable, "-m", "tickertune", "tune", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )


def _assert_nothing_written(tmp_path: Path, allowed: set[str]) -> None:
    assert not (tmp_path / "results").exists()
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "mlruns").exists()
    assert {p.name for p in tmp_path.iterdir()} == allowed


def test_valid_slice_is_valid(tmp_path, aapl):
    """Control: the unbroken slice loads and splits, so each break alone causes the error."""
    path = tmp_path / "ok.csv"
    _slice_frame(aapl).to_csv(path, index=False)
    bars = load_bars("AAPL", f"csv:{path}")
    pd.testing.assert_frame_equal(bars.frame, aapl.iloc[SLICE], check_exact=True, check_freq=False)
    chronological_split(build_features(bars.frame), source=bars.source)


@pytest.mark.parametrize("mutate", BAD_CASES)
def test_bad_csv_rejected_by_cli(tmp_path, aapl, mutate):
    d, expected = mutate(_slice_frame(aapl))
    path = tmp_path / "bad.csv"
    d.to_csv(path, index=False)

    proc = _cli(tmp_path, "AAPL", "--data", f"csv:{path}", "--trials", "1",
                "--results-dir", str(tmp_path / "results"))

    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert proc.stderr.endswith("\n")
    prefix = f"tickertune: error: {path}: "
    assert lines[0].startswith(prefix), lines[0]
    problem = lines[0][len(prefix):]
    if isinstance(expected, re.Pattern):
        assert expected.fullmatch(problem), problem
    else:
        assert problem == expected
    _assert_nothing_written(tmp_path, {"bad.csv"})


@pytest.mark.parametrize(
    "args, expected",
    [
        pytest.param(["--start", "2021-01-01", "--end", "2020-01-01"],
                     "tickertune: error: --start 2021-01-01 is after --end 2020-01-01",
                     id="start-after-end"),
        pytest.param(["--start", "notadate"],
                     "tickertune: error: --start 'notadate' is not a date; use YYYY-MM-DD",
                     id="start-not-a-date"),
        pytest.param(["--end", "2020-13-01"],
                     "tickertune: error: --end '2020-13-01' is not a date; use YYYY-MM-DD",
                     id="end-not-a-date"),
    ],
)
def test_bad_dates_rejected(tmp_path, args, expected):
    proc = _cli(tmp_path, "AAPL", "--trials", "1", "--results-dir", str(tmp_path / "results"), *args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [expected]
    _assert_nothing_written(tmp_path, set())


@pytest.mark.parametrize("value", ["0", "-3"])
def test_trials_must_be_positive(tmp_path, value):
    proc = _cli(tmp_path, "AAPL", "--trials", value, "--results-dir", str(tmp_path / "results"))
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "--trials" in last
    assert last.endswith(f"argument --trials: must be at least 1 (got {value})"), last
    _assert_nothing_written(tmp_path, set())
