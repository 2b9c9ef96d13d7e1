"""Affine invariance end to end: ``y -> a + b y`` and ``x -> c + d x`` for ``mixed`` and ``ols``.

A model with an intercept is the same model after shifting or scaling the outcome or a
predictor (a correlated random slope's covariance transforms with it), so every estimate must
transform exactly -- at any magnitude a double holds. Shifts go up to 1e12, scales from 1e-9 to
1e12. The data lie on a binary grid (multiples of 2**-10, |value| < 64), so ``y + 1e12`` and
``x + 1e12`` are exact doubles and differences measure only the algorithm. Tolerance: 1e-8
relative (what the issue asks), against the largest magnitude involved.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import hierfit

FORMULA = "y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"
RTOL = 1e-8
ENGINES = ["mixed", "ols"]


def _grid(v: pd.Series | np.ndarray) -> np.ndarray:
    return np.round(np.asarray(v, dtype=float) * 1024.0) / 1024.0


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    sim = hierfit.simulate(n_markets=8, n_submarkets=4, rows_per_submarket=15, seed=5, national_name="United_state")
    df = sim.data.copy()
    for col in ("y", "x1", "x2"):
        df[col] = _grid(df[col])
    return df


def _fit(engine: str, df: pd.DataFrame) -> hierfit.FitResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hierfit.HierfitWarning)
        return hierfit.fit(FORMULA, df, engine=engine, national="United_state")


@pytest.fixture(scope="module")
def base(data: pd.DataFrame) -> dict[str, hierfit.FitResult]:
    return {e: _fit(e, data) for e in ENGINES}


def _close(a: np.ndarray, b: np.ndarray, scale: np.ndarray | float) -> None:
    a, b = np.asarray(a, float), np.asarray(b, float)
    assert np.all(np.abs(a - b) <= RTOL * np.maximum(np.abs(scale), 1e-300)), np.max(np.abs(a - b) / np.maximum(np.abs(scale), 1e-300))


def _tables(fit: hierfit.FitResult) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    fe = fit.fixed_effects().set_index("term")
    vc = fit.variance_components()
    ge = fit.group_effects(kind="deviation")
    ge = ge[ge["level"] != "national"].set_index(["level", "group", "term"])  # national rows are the fixed effects
    return fe, vc, ge


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("a", "b"), [(1e3, 1.0), (1e6, 1.0), (1e9, 1.0), (1e12, 1.0), (0.0, 1e-9), (0.0, 1e-3),
                                      (0.0, 1e6), (0.0, 1e12), (5e5, 2.0 ** -3)])
def test_outcome_affine(engine: str, a: float, b: float, data: pd.DataFrame, base: dict[str, hierfit.FitResult]) -> None:
    df = data.copy()
    df["y"] = a + b * df["y"]
    fe0, vc0, ge0 = _tables(base[engine])
    fe1, vc1, ge1 = _tables(_fit(engine, df))
    _close(fe1.loc[["x1", "x2"], "estimate"], b * fe0.loc[["x1", "x2"], "estimate"], b * np.abs(fe0.loc[["x1", "x2"], "estimate"]))
    _close(fe1.loc["Intercept", "estimate"], a + b * fe0.loc["Intercept", "estimate"], max(a, abs(b * fe0.loc["Intercept", "estimate"])))
    _close(fe1["std_error"], b * fe0["std_error"], b * fe0["std_error"])
    sd = vc0["term2"] == ""
    _close(vc1.loc[sd, "sd_or_corr"], b * vc0.loc[sd, "sd_or_corr"], b * vc0.loc[sd, "sd_or_corr"])
    _close(vc1.loc[~sd, "sd_or_corr"], vc0.loc[~sd, "sd_or_corr"], 1.0)
    _close(ge1["estimate"], b * ge0["estimate"], b * np.abs(ge0["estimate"]).max())


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("c", "d"), [(1e6, 1.0), (1e12, 1.0), (0.0, 1e-9), (0.0, 1e12), (-3e4, 250.0)])
def test_predictor_affine(engine: str, c: float, d: float, data: pd.DataFrame, base: dict[str, hierfit.FitResult]) -> None:
    """x1 (a population term and a correlated random slope) moved to c + d x1."""
    df = data.copy()
    df["x1"] = c + d * df["x1"]
    fe0, vc0, ge0 = _tables(base[engine])
    fe1, vc1, ge1 = _tables(_fit(engine, df))
    b1 = fe0.loc["x1", "estimate"]
    _close(fe1.loc["x1", "estimate"], b1 / d, abs(b1 / d))
    _close(fe1.loc["x2", "estimate"], fe0.loc["x2", "estimate"], abs(fe0.loc["x2", "estimate"]))
    intercept = fe0.loc["Intercept", "estimate"] - c * b1 / d
    _close(fe1.loc["Intercept", "estimate"], intercept, max(abs(intercept), abs(c * b1 / d), 1.0))
    # group deviations: slopes scale by 1/d, market intercepts absorb -c/d times the slope
    m_int = ge0.loc[("market", slice(None), "Intercept"), "estimate"].to_numpy()
    m_x1 = ge0.loc[("market", slice(None), "x1"), "estimate"].to_numpy()
    _close(ge1.loc[("market", slice(None), "x1"), "estimate"], m_x1 / d, np.abs(m_x1 / d).max())
    _close(ge1.loc[("market", slice(None), "Intercept"), "estimate"], m_int - c * m_x1 / d,
           max(np.abs(m_int).max(), np.abs(c * m_x1 / d).max()))
    sub0 = ge0.loc[("submarket", slice(None), "Intercept"), "estimate"].to_numpy()
    _close(ge1.loc[("submarket", slice(None), "Intercept"), "estimate"], sub0, np.abs(sub0).max())
    residual0 = vc0.loc[vc0["level"] == "residual", "sd_or_corr"].to_numpy()
    _close(vc1.loc[vc1["level"] == "residual", "sd_or_corr"], residual0, residual0)
