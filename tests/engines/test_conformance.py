"""One contract, every engine: each registered and installed engine passes the same checks.

Fits use each engine module's ``FAST_OPTIONS`` on a small simulated tree and are made once per
session. An engine whose optional dependencies are missing is skipped with the install hint.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import hierfit
from hierfit.engines import ENGINES
from hierfit.exceptions import HierfitWarning

FORMULA = "y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"
FIXED = ["term", "estimate", "std_error", "lower", "upper"]
VARIANCE = ["level", "term1", "term2", "variance", "sd_or_corr"]
GROUP = ["level", "group", "parent", "term", "kind", "estimate", "std_error", "lower", "upper", "n_rows"]


def _engine_fit(name: str, data: pd.DataFrame):
    entry = ENGINES[name]
    if not entry.available:
        pytest.skip(f"engine {name!r} not installed: pip install 'hierfit[{entry.extra or name}]'")
    options = entry.fast_options()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierfitWarning)
        return hierfit.fit(FORMULA, data, engine=name, national="United_state", **options)


@pytest.fixture(scope="session")
def conformance_data(small_sim) -> pd.DataFrame:
    return small_sim.data


@pytest.fixture(scope="session")
def fits(conformance_data):
    cache: dict[str, hierfit.FitResult] = {}

    def get(name: str) -> hierfit.FitResult:
        if name not in cache:
            cache[name] = _engine_fit(name, conformance_data)
        return cache[name]

    return get


ENGINE_NAMES = sorted(ENGINES)


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_tables_follow_the_contract(engine, fits) -> None:
    fit = fits(engine)
    fe = fit.fixed_effects()
    assert list(fe.columns) == FIXED
    assert fe.term.tolist() == ["Intercept", "x1", "x2"]
    assert list(fit.variance_components().columns) == VARIANCE
    ge = fit.group_effects()
    assert list(ge.columns) == GROUP
    assert ge.iloc[0][["level", "group", "term"]].tolist() == ["national", "United_state", "Intercept"]
    assert set(ge.kind) == {"deviation", "total"}
    assert set(ge.level) == {"national", "market", "submarket"}
    assert ((ge.lower <= ge.estimate + 1e-9) | ge.lower.isna()).all()
    assert fit.summary().startswith(f"hierfit fit -- engine '{engine}'")


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_totals_are_national_plus_deviations(engine, fits) -> None:
    ge = fits(engine).group_effects().set_index(["level", "group", "term", "kind"])["estimate"]
    national = ge["national", "United_state", "Intercept", "total"]
    for (level, group, term, kind), value in ge.items():
        if level != "submarket" or kind != "total":
            continue
        market = group.split(":")[0]
        expected = national + ge["market", market, "Intercept", "deviation"] + ge["submarket", group, "Intercept", "deviation"]
        assert value == pytest.approx(expected, abs=1e-8)


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_prediction_and_decomposition_equal_the_engines_own_prediction(engine, fits, conformance_data) -> None:
    """``predict`` and ``decompose`` against the engine's native computation of the linear
    predictor (the booster's raw score, the network's forward pass, X beta + Z b from the
    solver's solution, the posterior mean): a wrong map from estimates to rows fails here."""
    fit = fits(engine)
    parts = fit.decompose(conformance_data)
    assert parts.columns[0] == "national"
    assert {"market[Intercept]", "market[x1]", "submarket[Intercept]", "population"} <= set(parts.columns)
    native = fit.engine_fit.native_linear_predictor(fit.encoding.apply(conformance_data))
    link = fit.predict(conformance_data, scale="link")["prediction"].to_numpy()
    scale = max(1.0, float(np.abs(native).max()))
    np.testing.assert_allclose(link, native, rtol=0, atol=1e-8 * scale)
    np.testing.assert_allclose(parts.sum(axis=1).to_numpy(), native, rtol=0, atol=1e-8 * scale)
    response = fit.predict(conformance_data)["prediction"].to_numpy()
    np.testing.assert_allclose(response, fit.spec.family.inverse_link(native), rtol=1e-10, atol=1e-10)
    pd.testing.assert_index_equal(parts.index, conformance_data.index)


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_predict_keeps_rows_and_order(engine, fits, conformance_data) -> None:
    fit = fits(engine)
    perm = conformance_data.sample(frac=1.0, random_state=1)
    a = fit.predict(conformance_data, interval="prediction")
    b = fit.predict(perm, interval="prediction")
    assert list(a.columns) == ["prediction", "lower", "upper", "level_used"]
    pd.testing.assert_index_equal(b.index, perm.index)
    np.testing.assert_allclose(b.prediction.to_numpy(), a.loc[perm.index].prediction.to_numpy(), rtol=1e-10, atol=1e-10)
    if ENGINES[engine].capabilities.uncertainty != "none":
        assert (a.lower <= a.prediction).all() and (a.prediction <= a.upper).all()
    else:
        assert a.lower.isna().all()


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_save_load_round_trip(engine, fits, conformance_data, tmp_path) -> None:
    fit = fits(engine)
    fit.save(tmp_path / "fit")
    back = hierfit.load(tmp_path / "fit")
    assert back.engine == engine
    pd.testing.assert_frame_equal(back.predict(conformance_data), fit.predict(conformance_data))
    pd.testing.assert_frame_equal(back.group_effects(), fit.group_effects())
    pd.testing.assert_frame_equal(back.fixed_effects(), fit.fixed_effects())


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_unseen_groups_fall_back(engine, fits, conformance_data) -> None:
    fit = fits(engine)
    rows = conformance_data.head(3).copy()
    rows.loc[rows.index[0], "submarket"] = "Sub_new"
    rows.loc[rows.index[1], "market"] = "Market_new"
    with pytest.warns(hierfit.UnseenGroupsWarning, match="Market_new"):
        pred = fit.predict(rows)
    assert pred.level_used.tolist() == ["market", "national", "submarket"]
    assert np.isfinite(pred.prediction).all()
    with pytest.warns(hierfit.UnseenGroupsWarning):
        parts = fit.decompose(rows)
    assert parts.loc[rows.index[0], "submarket[Intercept]"] == 0.0
    assert parts.loc[rows.index[1], ["market[Intercept]", "market[x1]"]].abs().sum() == 0.0
