"""Across tickers: generic params, the own-vs-generic transfer table, return-profile clusters."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tickertune.across import (
    PROFILE_COLUMNS, TRANSFER_COLUMNS, Cluster, cluster, generic_params, return_profile,
    transfer_table,
)
from tickertune.data import SAMPLE_TICKERS
from tickertune.errors import ConfigError, NotFoundError
from tickertune.results import write_best_params

XGB = {
    "AAPL": {"n_estimators": 50, "learning_rate": 0.05, "max_depth": 3, "subsample": 0.8,
             "colsample_bytree": 0.7, "gamma": 0.01, "min_child_weight": 2.0,
             "reg_alpha": 0.001, "reg_lambda": 1.0},
    "AMZN": {"n_estimators": 100, "learning_rate": 0.02, "max_depth": 6, "subsample": 0.6,
             "colsample_bytree": 0.9, "gamma": 0.5, "min_child_weight": 10.0,
             "reg_alpha": 0.1, "reg_lambda": 0.01},
    "GOOG": {"n_estimators": 50, "learning_rate": 0.2, "max_depth": 4, "subsample": 0.95,
             "colsample_bytree": 0.5, "gamma": 2.0, "min_child_weight": 1.5,
             "reg_alpha": 5.0, "reg_lambda": 3.0},
}
# window/d_model/scheduler are categorical in the search space; num_layers is "int".
TRANSFORMER = {
    "AAPL": {"window": 20, "d_model": 32, "nhead": 2, "num_layers": 1, "dim_feedforward": 64,
             "dropout": 0.1, "lr": 0.001, "weight_decay": 1e-4, "batch_size": 128,
             "scheduler": "step", "step_size": 4, "gamma": 0.5},
    "AMZN": {"window": 10, "d_model": 64, "nhead": 4, "num_layers": 2, "dim_feedforward": 64,
             "dropout": 0.2, "lr": 0.0005, "weight_decay": 1e-3, "batch_size": 64,
             "scheduler": "cosine", "eta_min_ratio": 0.1},
    "GOOG": {"window": 30, "d_model": 64, "nhead": 2, "num_layers": 2, "dim_feedforward": 128,
             "dropout": 0.05, "lr": 0.002, "weight_decay": 1e-5, "batch_size": 256,
             "scheduler": "step", "step_size": 7, "gamma": 0.8},
}
BEST = {"AAPL": 0.6921, "AMZN": 0.6905, "GOOG": 0.6930}


def _entry(params: dict, value: float) -> dict:
    return {"metric": "val_logloss", "best_value": value, "best_trial": 3, "params": params}


@pytest.fixture()
def results(tmp_path: Path) -> Path:
    """Best-params files of three tickers, written by hand (transformer for all three)."""
    for t in XGB:
        write_best_params(tmp_path, t, {"xgb": _entry(XGB[t], BEST[t]),
                                        "transformer": _entry(TRANSFORMER[t], BEST[t] + 0.001)})
    return tmp_path


@pytest.mark.parametrize("agg,fn", [("median", np.median), ("mean", np.mean)])
def test_generic_numeric_params_are_the_aggregate(results: Path, agg: str, fn) -> None:
    out = generic_params(list(XGB), results, agg=agg)
    on_disk = json.loads((results / "best_params" / "generic.json").read_text())
    assert on_disk["models"] == out["models"]
    assert on_disk["tickers"] == ["AAPL", "AMZN", "GOOG"] and on_disk["agg"] == agg
    assert on_disk["updated_at"]

    xgb = on_disk["models"]["xgb"]
    assert xgb["n_tickers"] == 3 and xgb["sources"] == BEST
    for name in ("learning_rate", "subsample", "colsample_bytree", "gamma",
                 "min_child_weight", "reg_alpha", "reg_lambda"):
        assert xgb["params"][name] == pytest.approx(fn([XGB[t][name] for t in XGB]), rel=1e-12)
        assert isinstance(xgb["params"][name], float)
    for name in ("n_estimators", "max_depth"):  # ints stay ints (rounded half up)
        value = fn([XGB[t][name] for t in XGB])
        assert xgb["params"][name] == int(np.floor(value + 0.5))
        assert isinstance(xgb["params"][name], int)
    if agg == "median":
        assert xgb["params"]["max_depth"] == 4 and xgb["params"]["n_estimators"] == 50
    else:  # mean 4.33 -> 4, 66.7 -> 67
        assert xgb["params"]["max_depth"] == 4 and xgb["params"]["n_estimators"] == 67


def test_generic_categoricals_are_the_mode_with_first_ticker_tie_rule(results: Path) -> None:
    tr = generic_params(["AAPL", "AMZN", "GOOG"], results)["models"]["transformer"]["params"]
    assert tr["scheduler"] == "step"  # 2 of 3
    assert tr["d_model"] == 64  # categorical (not the median 64 by chance: mode 2 of 3)
    assert tr["nhead"] == 2 and tr["num_layers"] == 2
    assert isinstance(tr["num_layers"], int)
    # window 20 / 10 / 30 and batch_size 128 / 64 / 256: all tied, the first ticker's wins,
    # never the median of the choices.
    assert tr["window"] == 20 and tr["batch_size"] == 128
    assert tr["dim_feedforward"] == 64  # 2 of 3, although the median of 64, 64, 128 is 64 too
    # step branch: its params aggregated over the tickers that have them; cosine's dropped.
    assert tr["step_size"] == int(np.floor(np.median([4, 7]) + 0.5)) == 6
    assert tr["gamma"] == pytest.approx(np.median([0.5, 0.8]))
    assert "eta_min_ratio" not in tr
    assert tr["dropout"] == pytest.approx(np.median([0.1, 0.2, 0.05]))

    # Another order, another tie winner.
    tr = generic_params(["GOOG", "AMZN", "AAPL"], results)["models"]["transformer"]["params"]
    assert tr["window"] == 30 and tr["batch_size"] == 256


def test_generic_model_in_some_tickers_and_plain_categoricals(tmp_path: Path) -> None:
    write_best_params(tmp_path, "AAPL", {"xgb": _entry({"max_depth": 3, "flag": True,
                                                        "mode": "b", "extra_int": 7}, 0.69)})
    write_best_params(tmp_path, "NVDA", {"xgb": _entry({"max_depth": 5, "flag": False,
                                                        "mode": "a", "extra_int": 8}, 0.68),
                                         "transformer": _entry(TRANSFORMER["AAPL"], 0.70)})
    out = generic_params(["aapl", "NVDA"], tmp_path)
    xgb = out["models"]["xgb"]
    assert xgb["params"]["flag"] is True and xgb["params"]["mode"] == "b"  # tie: first ticker
    assert xgb["params"]["max_depth"] == 4  # median 4.0 -> int 4
    assert xgb["params"]["extra_int"] == 8  # not in the search space, all ints: 7.5 -> 8
    assert isinstance(xgb["params"]["extra_int"], int)
    assert out["models"]["transformer"]["n_tickers"] == 1
    assert out["models"]["transformer"]["sources"] == {"NVDA": 0.70}
    assert out["models"]["transformer"]["params"]["window"] == 20


def test_generic_uses_the_lowest_loss_pareto_point(tmp_path: Path) -> None:
    write_best_params(tmp_path, "AAPL", {"xgb": _entry({"max_depth": 3}, 0.69)})
    write_best_params(tmp_path, "NVDA", {"xgb": {"metric": ["val_logloss", "train_seconds"],
                                                 "pareto_front": [
                                                     {"trial": 1, "values": [0.695, 1.0],
                                                      "params": {"max_depth": 2}},
                                                     {"trial": 4, "values": [0.688, 9.0],
                                                      "params": {"max_depth": 7}}]}})
    xgb = generic_params(["AAPL", "NVDA"], tmp_path)["models"]["xgb"]
    assert xgb["sources"] == {"AAPL": 0.69, "NVDA": 0.688}
    assert xgb["params"]["max_depth"] == 5  # median of 3 and 7


def test_generic_errors(results: Path) -> None:
    with pytest.raises(ConfigError, match="agg"):
        generic_params(list(XGB), results, agg="mode")
    with pytest.raises(NotFoundError, match=r"NFLX.*tickertune tune NFLX"):
        generic_params(["AAPL", "NFLX"], results)
    assert not (results / "best_params" / "generic.json").exists()


def test_transfer_table_own_vs_generic(tmp_path: Path) -> None:
    tiny = {"n_estimators": 50, "learning_rate": 0.1, "max_depth": 2, "subsample": 0.8,
            "colsample_bytree": 0.8, "gamma": 1e-3, "min_child_weight": 5.0,
            "reg_alpha": 1e-3, "reg_lambda": 1.0}
    write_best_params(tmp_path, "AAPL", {"xgb": _entry(tiny, 0.69)})
    write_best_params(tmp_path, "AMZN", {"xgb": _entry({**tiny, "max_depth": 4,
                                                        "learning_rate": 0.05}, 0.69)})
    generic = generic_params(["AAPL", "AMZN"], tmp_path)
    table = transfer_table(["AAPL", "AMZN"], tmp_path, generic, model="xgb", start="2019-01-01")
    assert list(table.columns) == list(TRANSFER_COLUMNS)
    assert list(table["ticker"]) == ["AAPL", "AMZN"]
    nums = table[["own_logloss", "generic_logloss", "difference", "baseline_logloss"]].to_numpy()
    assert np.isfinite(nums).all()
    assert np.allclose(table["difference"], table["generic_logloss"] - table["own_logloss"])
    assert (table["own_logloss"].between(0.5, 0.9)).all()
    assert table["generic_verdict"].str.contains("baseline").all()

    # Generic params equal to the own params: identical fits, identical scores.
    same = {"models": {"xgb": {"params": dict(tiny)}}}
    table = transfer_table(["AAPL"], tmp_path, same, model="xgb", start="2019-01-01")
    assert table.loc[0, "own_logloss"] == table.loc[0, "generic_logloss"]
    assert table.loc[0, "difference"] == 0.0

    with pytest.raises(ConfigError, match="transformer"):
        transfer_table(["AAPL"], tmp_path, same, model="transformer")


def test_return_profile_columns() -> None:
    prof = return_profile(["AAPL", "NVDA", "META"])
    assert list(prof.columns) == list(PROFILE_COLUMNS)
    assert list(prof.index) == ["AAPL", "NVDA", "META"]
    assert np.isfinite(prof.to_numpy()).all()
    assert (prof["ann_volatility"].between(0.1, 1.0)).all()
    assert (prof["mean_corr"].between(0.0, 1.0)).all()


def test_cluster_sample_tickers_is_deterministic_and_a_partition() -> None:
    tickers = list(SAMPLE_TICKERS)
    first = cluster(tickers, k=2, seed=0)
    assert cluster(tickers, k=2, seed=0) == first
    assert len(first) == 2 and all(isinstance(c, Cluster) for c in first)
    members = [t for c in first for t in c.members]
    assert sorted(members) == sorted(tickers)  # each ticker in exactly one cluster
    for c in first:
        assert c.members and c.representative in c.members
        assert set(c.centroid) == set(PROFILE_COLUMNS)
    assert [c.members for c in cluster(tickers, k=1, seed=3)] == [tickers]
    six = cluster(tickers, k=6, seed=1)
    assert sorted(c.representative for c in six) == sorted(tickers)


@pytest.mark.parametrize("k", [0, 7])
def test_cluster_k_out_of_range(k: int) -> None:
    with pytest.raises(ConfigError):
        cluster(list(SAMPLE_TICKERS), k=k)
