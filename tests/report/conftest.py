"""Session fixtures for the report tests: one small comparison and its HTML report."""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

import hierfit  # noqa: E402
from hierfit.engines import ENGINES  # noqa: E402

from ..conftest import QUICK_ENGINES  # noqa: E402


@pytest.fixture(scope="session")
def report_sim():
    return hierfit.simulate(n_markets=5, n_submarkets=3, rows_per_submarket=20, seed=8, national_name="United_state")


@pytest.fixture(scope="session")
def report_comparison(report_sim):
    from hierfit.evaluate import compare

    names = QUICK_ENGINES
    options = {n: ENGINES[n].fast_options() for n in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compare(report_sim.formula, report_sim.data, engines=names, cv="submarket:3", national="United_state", truth=report_sim.truth, options=options, progress=False)


@pytest.fixture(scope="session")
def report_file(report_comparison, tmp_path_factory):
    from hierfit.report import build_report

    path = tmp_path_factory.mktemp("report") / "report.html"
    build_report(report_comparison, path)
    return path
