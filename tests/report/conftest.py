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


@pytest.fixture(scope="session")
def report_comparison(report_sim):
    return quick_comparison(report_sim)


@pytest.fixture(scope="session")
def report_file(report_comparison, tmp_path_factory):
    from hierfit.report import build_report

    path = tmp_path_factory.mktemp("report") / "report.html"
    build_report(report_comparison, path)
    return path
