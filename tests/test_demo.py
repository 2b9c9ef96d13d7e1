"""hierfit demo: runs the comparison, prints the table, writes the report (small data here)."""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

import hierfit  # noqa: E402
from hierfit import demo  # noqa: E402
from hierfit.engines import ENGINES  # noqa: E402
from hierfit.engines.registry import Capabilities, EngineEntry  # noqa: E402


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    sim = hierfit.simulate(n_markets=5, n_submarkets=3, rows_per_submarket=20, seed=2, national_name=demo.NATIONAL)
    out = tmp_path_factory.mktemp("demo") / "demo-report.html"
    lines: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        comp = demo.run_demo(out=out, engines=["ols"], sim=sim, echo=lines.append, progress=False, cv="submarket:3")
    return comp, out, "\n".join(lines), sim


def test_demo_writes_the_report_and_prints_the_table(demo_run):
    comp, out, printed, sim = demo_run
    assert out.is_file() and out.read_text().startswith("<!DOCTYPE html>")
    assert f"report: {out.resolve()}" in printed
    assert "cv_rmse" in printed and "submarket_err" in printed
    assert "oracle knowing every effect but the held-out submarket's" in printed
    row = demo.short_table(comp).set_index("engine").loc["ols"]
    assert row.cv_rmse == pytest.approx(comp.summary().rmse.iloc[0], abs=1e-3)
    # the held-out RMSE cannot beat the oracle that knows all but the new submarket's effect
    assert row.cv_rmse > demo.oracle_rmse(sim) - 0.05


def test_demo_skips_engines_that_are_not_installed(monkeypatch, tmp_path):
    ghost = EngineEntry(
        name="ghost", module="hierfit.engines.ghost", summary="test", requires=("no_such_module_xyz",), extra="ghost",
        capabilities=Capabilities("none", "none", False, False, ("gaussian",), "exact"),
    )  # fmt: skip
    monkeypatch.setitem(ENGINES, "ghost", ghost)
    sim = hierfit.simulate(n_markets=5, n_submarkets=2, rows_per_submarket=10, seed=1)
    lines: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        comp = demo.run_demo(out=None, engines=["ghost", "ols"], sim=sim, echo=lines.append, progress=False, cv="kfold:2")
    assert "ghost: skipped, not installed (pip install 'hierfit[ghost]')" in "\n".join(lines)
    assert comp.engines == ["ols"]


def test_demo_options_are_the_engines_fast_options_and_unknown_names_are_errors(monkeypatch):
    from hierfit.engines import ENGINES

    assert demo.demo_options("mixed") == ENGINES["mixed"].fast_options()
    module = ENGINES["ols"].load()
    monkeypatch.setattr(module, "FAST_OPTIONS", {"rcond": 1e-9, "draws": 10}, raising=False)
    with pytest.raises(hierfit.EngineError, match="has no option 'draws'"):
        demo.demo_options("ols")
