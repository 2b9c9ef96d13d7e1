"""Session fixtures for the plot tests: small fits, drawn on the Agg backend."""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

import hierfit  # noqa: E402
from hierfit.engines import ENGINES  # noqa: E402


def _partial_engine() -> str | None:
    entry = ENGINES.get("mixed")
    if entry is None or not entry.available:
        return None
    try:
        entry.load()
    except Exception:
        return None
    return "mixed"


@pytest.fixture(scope="session")
def plot_sim():
    return hierfit.simulate(n_markets=5, n_submarkets=4, rows_per_submarket=20, seed=4, unbalanced=True, national_name="United_state")


@pytest.fixture(scope="session")
def plot_fits(plot_sim):
    fits = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fits["ols"] = hierfit.fit(plot_sim.formula, plot_sim.data, engine="ols", national="United_state")
        partial = _partial_engine()
        if partial:
            fits[partial] = hierfit.fit(plot_sim.formula, plot_sim.data, engine=partial, national="United_state")
    return fits


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")
