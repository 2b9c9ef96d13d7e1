"""Small seeded data sets for the scikit-learn estimators (each fit takes well under a second)."""

from __future__ import annotations

import pytest

import hierfit


@pytest.fixture(scope="session")
def sim() -> hierfit.Simulation:
    """6 markets x 4 submarkets x 15 rows (360 rows), gaussian."""
    return hierfit.simulate(n_markets=6, n_submarkets=4, rows_per_submarket=15, seed=3, national_name="United_state")


@pytest.fixture(scope="session")
def bernoulli_sim() -> hierfit.Simulation:
    """5 markets x 3 submarkets x 20 rows (300 rows), a 0/1 outcome."""
    return hierfit.simulate(n_markets=5, n_submarkets=3, rows_per_submarket=20, seed=4, family="bernoulli",
                            national_name="United_state")
