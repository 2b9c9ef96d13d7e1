"""Session fixtures for the evaluation tests: one small simulation, one comparison."""

from __future__ import annotations

import pytest

import hierfit

from ..conftest import quick_comparison


@pytest.fixture(scope="session")
def small_sim():
    return hierfit.simulate(n_markets=6, n_submarkets=4, rows_per_submarket=25, seed=11, national_name="United_state")


@pytest.fixture(scope="session")
def submarket_comparison(small_sim):
    return quick_comparison(small_sim)
