"""Paired comparison over folds: mean per-fold difference, its standard error, a verdict only beyond noise."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hierfit.evaluate import paired_differences
from hierfit.evaluate.paired import NOISE_SE, describe
from hierfit.exceptions import SpecError


def _folds(scores: dict[str, list[float]], metric: str = "rmse") -> pd.DataFrame:
    return pd.DataFrame([{"engine": e, "fold": k, metric: v} for e, vals in scores.items() for k, v in enumerate(vals)])


def test_difference_and_standard_error_are_those_of_the_per_fold_differences():
    rng = np.random.default_rng(3)
    ref = rng.uniform(0.9, 1.3, 8)  # folds differ a lot; the pairing removes that
    own = ref - 0.01 + rng.normal(0, 0.02, 8)
    row = paired_differences(_folds({"ols": list(ref), "mixed": list(own)}), "ols").iloc[0]
    d = own - ref
    assert row.n_folds == 8
    assert row.difference == pytest.approx(d.mean())
    assert row.std_error == pytest.approx(d.std(ddof=1) / np.sqrt(8))
    assert row.z == pytest.approx(d.mean() / (d.std(ddof=1) / np.sqrt(8)))
    assert row.score == pytest.approx(own.mean()) and row.reference_score == pytest.approx(ref.mean())


def test_verdict_only_beyond_noise_and_in_the_metric_direction():
    base = np.array([1.0, 1.4, 0.8, 1.2, 1.1])
    jitter = np.array([0.03, -0.02, 0.01, -0.03, 0.01])
    small = paired_differences(_folds({"ols": list(base), "mixed": list(base - 0.0006 + jitter)}), "ols").iloc[0]
    assert abs(small.z) < NOISE_SE and small.verdict == "indistinguishable"
    clear = paired_differences(_folds({"ols": list(base), "mixed": list(base - 0.1 + jitter)}), "ols").iloc[0]
    assert clear.z < -NOISE_SE and clear.verdict == "better"
    worse = paired_differences(_folds({"ols": list(base), "mixed": list(base + 0.1 + jitter)}), "ols").iloc[0]
    assert worse.verdict == "worse"
    # higher is better for the log predictive density
    mlpd = paired_differences(_folds({"ols": list(-base), "mixed": list(-base + 0.1 + jitter)}, "mlpd"), "ols", "mlpd").iloc[0]
    assert mlpd.z > NOISE_SE and mlpd.verdict == "better"
    assert "better than ols" in describe(clear) and "±" in describe(clear)
    assert describe(small).startswith("indistinguishable from ols: RMSE difference -0.0")


def test_only_folds_scored_by_both_are_paired():
    folds = _folds({"ols": [1.0, 1.2, 1.1, 0.9], "mixed": [0.9, 1.1, np.nan, 0.8], "one": [1.0], "none": [np.nan, np.nan]})
    table = paired_differences(folds, "ols").set_index("engine")
    assert table.loc["mixed", "n_folds"] == 3 and table.loc["mixed", "difference"] == pytest.approx(-0.1)
    assert table.loc["one", "verdict"] == "too few folds" and np.isnan(table.loc["one", "std_error"])
    assert table.loc["none", "verdict"] == "not scored"
    assert "not compared with ols" in describe(table.loc["none"].to_dict() | {"engine": "none"})


def test_bad_reference_or_metric_say_what_is_allowed():
    folds = _folds({"ols": [1.0, 1.1], "mixed": [0.9, 1.0]})
    with pytest.raises(SpecError, match="reference engine 'pymc' has no cross-validated folds; engines with folds: mixed, ols"):
        paired_differences(folds, "pymc")
    with pytest.raises(SpecError, match="must be one of: auc, brier, calibration, deviance, log_loss, mae, mlpd, rmse. Got 'coverage'"):
        paired_differences(folds, "ols", "coverage")


def test_comparison_exposes_the_paired_differences_of_its_folds(submarket_comparison):
    comp = submarket_comparison
    table = comp.paired("ols")
    assert list(table.engine) == [e for e in comp.engines if e != "ols"]
    f = comp.folds.pivot(index="fold", columns="engine", values="rmse")
    d = f["mixed"] - f["ols"]
    row = table.set_index("engine").loc["mixed"]
    assert row.n_folds == comp.cv.folds
    assert row.difference == pytest.approx(d.mean()) and row.std_error == pytest.approx(d.std(ddof=1) / np.sqrt(len(d)))
