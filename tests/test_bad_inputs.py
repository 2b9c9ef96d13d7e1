"""The bad-input catalogue: each case, the error (a ``HierfitError`` subclass) and its message.

Every row feeds one documented bad input to the public API and asserts the exception type and
a fragment of its message (which names the column / value and the next step). Nothing may
escape as a raw ``ValueError``/``LinAlgError`` from a numerical library.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest

import hierfit
from hierfit.exceptions import DataError, EngineError, FormulaError, HierarchyError, HierfitError, SpecError


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    sim = hierfit.simulate(n_markets=6, n_submarkets=3, rows_per_submarket=12, seed=11)
    df = sim.data.copy()
    df["x1b"] = 2.0 * df["x1"]
    df["const"] = 5.0
    return df


def _fit(formula: str, **kwargs: Any) -> Callable[[pd.DataFrame], Any]:
    def run(df: pd.DataFrame) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", hierfit.HierfitWarning)
            return hierfit.fit(formula, df, **kwargs)

    return run


def _with(column: str, values: Any, formula: str = "y ~ x1 + (1 | market)", **kwargs: Any) -> Callable[[pd.DataFrame], Any]:
    def run(df: pd.DataFrame) -> Any:
        df = df.copy()
        df[column] = values(df) if callable(values) else values
        return _fit(formula, **kwargs)(df)

    return run


#: case -> (call on the data, expected error type, message fragment)
CATALOGUE: dict[str, tuple[Callable[[pd.DataFrame], Any], type[HierfitError], str]] = {
    "collinear predictors (x1b = 2 x1)": (_fit("y ~ x1 + x1b + (1 | market)"), DataError, "'x1b' = 2*x1 + a constant"),
    "collinear predictors, ols": (_fit("y ~ x1 + x1b + (1 | market)", engine="ols"), DataError, "collinear"),
    "constant predictor beside the intercept": (_fit("y ~ x1 + const + (1 | market)"), DataError, "'const' is constant"),
    "unknown engine": (_fit("y ~ x1 + (1 | market)", engine="lmer"), EngineError, "must be one of: boosted-mixed"),
    "unknown family": (_fit("y ~ x1 + (1 | market)", family="gamma"), SpecError, "Got 'gamma'"),
    "unknown link": (_fit("y ~ x1 + (1 | market)", family="bernoulli", link="log"), SpecError, "allows the links"),
    "unknown engine option": (_fit("y ~ x1 + (1 | market)", engine="mixed", draws=5), EngineError, "has no option 'draws'"),
    "family the engine cannot fit": (_fit("y ~ x1 + (1 | market)", engine="ols", family="poisson"), SpecError,
                                     "Engines for 'poisson'"),
    "unreadable formula": (_fit("y ~ x1 + | market"), FormulaError, "⟨|⟩"),
    "missing column": (_fit("y ~ x9 + (1 | market)"), DataError, "'x9' is not in the data"),
    "missing values": (_with("x1", lambda d: d["x1"].where(d.index > 3)), DataError, "missing values in columns"),
    "outcome outside the family": (_with("y", lambda d: np.round(d["y"]), family="bernoulli", engine="lightgbm"), DataError,
                                   "needs 0/1 outcomes"),
    "a child under two parents": (_fit("y ~ x1 + (1 | market) + (1 | submarket)", hierarchy=("market", "submarket")),
                                  HierarchyError, "each child needs exactly one parent"),
    "no group-level term for mixed": (_fit("y ~ x1", engine="mixed"), SpecError, "needs at least one group-level term"),
}


@pytest.mark.parametrize("case", list(CATALOGUE))
def test_bad_input_gets_a_clear_error(case: str, data: pd.DataFrame) -> None:
    call, error, fragment = CATALOGUE[case]
    with pytest.raises(error) as info:
        call(data)
    assert fragment in str(info.value), f"{case}: {info.value}"


def test_collinear_columns_are_dropped_when_asked(data: pd.DataFrame) -> None:
    """checks={'rank_deficient': 'warn'}: lme4's behaviour, said once, and new data follow."""
    with pytest.warns(hierfit.exceptions.DataCheckWarning, match="Dropped collinear population-level column 'x1b'"):
        fit = hierfit.fit("y ~ x1 + x1b + (1 | market)", data, checks={"rank_deficient": "warn", "few_groups": "ignore"})
    assert fit.fixed_effects()["term"].tolist() == ["Intercept", "x1"]
    ref = _fit("y ~ x1 + (1 | market)")(data)
    np.testing.assert_allclose(fit.predict(data)["prediction"], ref.predict(data)["prediction"], rtol=1e-10)
    assert [d.check for d in fit.diagnostics].count("rank_deficient") == 1
