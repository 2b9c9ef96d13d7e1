"""Session fixtures for the report tests: one small comparison and its HTML report."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

import hierfit  # noqa: E402

from ..conftest import quick_comparison  # noqa: E402


@pytest.fixture(scope="session")
def report_sim():
    return hierfit.simulate(n_markets=5, n_submarkets=3, rows_per_submarket=20, seed=8, national_name="United_state")


def _report_engines() -> list[str]:
    """The quick engines, and lightgbm when installed: ``ols`` and a no-pooling ``lightgbm``
    side by side, and a boosted tree to draw, as in the demo's report."""
    from hierfit.engines import ENGINES

    return ["ols", "mixed"] + (["lightgbm"] if ENGINES["lightgbm"].available else [])


@pytest.fixture(scope="session")
def report_comparison(report_sim):
    # small leaves: a tree as wide and deep as the demo's (31 leaves) from 300 rows
    return quick_comparison(report_sim, engines=_report_engines(), options={"lightgbm": {"min_data_in_leaf": 3}})


@pytest.fixture(scope="session")
def report_file(report_comparison, tmp_path_factory):
    from hierfit.report import build_report

    path = tmp_path_factory.mktemp("report") / "report.html"
    build_report(report_comparison, path)
    return path
