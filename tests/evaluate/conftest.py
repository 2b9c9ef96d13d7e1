"""Session fixtures for the evaluation tests: one small simulation, one comparison."""

from __future__ import annotations

import warnings

import pytest

import hierfit
from hierfit.engines import ENGINES

from ..conftest import QUICK_ENGINES


@pytest.fixture(scope="session")
def small_sim():
    return hierfit.simulate(n_markets=6, n_submarkets=4, rows_per_submarket=25, seed=11, national_name="United_state")


@pytest.fixture(scope="session")
def submarket_comparison(small_sim):
    from hierfit.evaluate import compare

    names = QUICK_ENGINES
    options = {n: ENGINES[n].fast_options() for n in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compare(
            small_sim.formula, small_sim.data, engines=names, cv="submarket:3", national="United_state",
            truth=small_sim.truth, options=options, progress=False,
        )  # fmt: skip
