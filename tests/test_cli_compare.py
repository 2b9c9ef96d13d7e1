"""`hierfit compare` and `hierfit report` on the command line."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from hierfit.cli import main  # noqa: E402

FORMULA = "y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    runner = CliRunner()
    res = runner.invoke(main, ["simulate", "--out", str(d / "data.csv"), "--truth", str(d / "truth.csv"), "--n-markets", "5", "--n-submarkets", "3", "--rows", "15", "--seed", "3"])
    assert res.exit_code == 0, res.output
    return d


def test_compare_prints_scores_and_saves_a_comparison_with_report(files):
    out = files / "cmp"
    res = CliRunner().invoke(main, ["compare", str(files / "data.csv"), "-f", FORMULA, "--engines", "ols", "--cv", "submarket", "--folds", "3", "--out", str(out), "--national", "US"])
    assert res.exit_code == 0, res.output
    assert "rmse" in res.output and "ols" in res.output
    meta = json.loads((out / "hierfit.json").read_text())
    assert meta["kind"] == "comparison" and meta["cv"] == {"level": "submarket", "folds": 3, "seed": 0} and meta["fitted"] == ["ols"]
    assert (out / "report.html").is_file() and (out / "fits" / "ols" / "hierfit.json").is_file()
    assert "report.html" in meta["files"], "the report is part of the atomic, checksummed save"
    res = CliRunner().invoke(main, ["compare", str(files / "data.csv"), "-f", FORMULA, "--engines", "ols", "--cv", "kfold:2", "--out", str(out)])
    assert res.exit_code == 2 and "already holds a hierfit save" in res.output and "--overwrite" in res.output
    assert "rmse" not in res.output, "an occupied --out is refused before the comparison runs"
    res = CliRunner().invoke(main, ["compare", str(files / "data.csv"), "-f", FORMULA, "--engines", "ols", "--cv", "kfold:2", "--out", str(out), "--overwrite"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "hierfit.json").read_text())["cv"]["level"] is None


def test_compare_with_the_truth_file_of_simulate_scores_recovery(files):
    """`simulate --truth` writes the file `compare --truth` reads: recovery joins the scores,
    the saved comparison and its report."""
    out = files / "cmp-truth"
    res = CliRunner().invoke(main, ["compare", str(files / "data.csv"), "-f", FORMULA, "-e", "ols", "--cv", "submarket", "--folds", "3",
                                    "--truth", str(files / "truth.csv"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "recovery_rmse_submarket[Intercept]" in res.output and "recovery_rmse_market[x1]" in res.output
    assert json.loads((out / "hierfit.json").read_text())["truth"] is True
    html = (out / "report.html").read_text()
    assert "<h2>Recovery of the truth</h2>" in html
    from hierfit.evaluate import Comparison

    rmse = Comparison.load(out).summary().set_index("engine").loc["ols", "recovery_rmse_submarket[Intercept]"]
    assert 0 < rmse < 0.6  # 15 rows per submarket: totals known to about 1/sqrt(15) = 0.26
    # without --truth: no recovery
    res = CliRunner().invoke(main, ["compare", str(files / "data.csv"), "-f", FORMULA, "-e", "ols", "--cv", "kfold:2"])
    assert res.exit_code == 0 and "recovery_rmse" not in res.output


def test_compare_refuses_a_truth_file_without_the_effect_columns(files):
    res = CliRunner().invoke(main, ["compare", str(files / "data.csv"), "-f", FORMULA, "-e", "ols", "--cv", "kfold:2",
                                    "--truth", str(files / "data.csv")])
    assert res.exit_code == 2
    assert "error: 'truth' must be a simulation's truth (sim.truth) or a table with columns estimate, group, kind, level, term" in res.output
    assert "hierfit simulate --truth FILE" in res.output and "rmse" not in res.output


def test_report_command_on_comparison_and_fit_dirs(files):
    runner = CliRunner()
    cmp_dir = files / "cmp2"
    res = runner.invoke(main, ["compare", str(files / "data.csv"), "-f", FORMULA, "-e", "ols", "--cv", "kfold:2", "--out", str(cmp_dir), "--no-report"])
    assert res.exit_code == 0, res.output
    assert not (cmp_dir / "report.html").exists()
    res = runner.invoke(main, ["report", str(cmp_dir), "--out", str(files / "r1.html")])
    assert res.exit_code == 0, res.output
    assert "Engine comparison" in (files / "r1.html").read_text()
    res = runner.invoke(main, ["fit", str(files / "data.csv"), "-f", "y ~ x1 + (1 | market)", "-e", "ols", "--out", str(files / "fit")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["report", str(files / "fit"), "--out", str(files / "r2.html"), "--data", str(files / "data.csv"), "--truth", str(files / "truth.csv")])
    assert res.exit_code == 0, res.output
    html = (files / "r2.html").read_text()
    assert "Predictive checks" in html and "Recovery of the truth" in html


def test_engine_options_on_the_command_line_reach_the_engine(files):
    res = CliRunner().invoke(main, ["compare", str(files / "data.csv"), "-f", FORMULA, "-e", "ols", "--cv", "kfold:2", "-o", "ols.rcond=1e-8"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["compare", str(files / "data.csv"), "-f", FORMULA, "-e", "ols", "--cv", "kfold:2", "-o", "ols.bogus=1"])
    assert res.exit_code == 0 and "failed: ols: EngineError: Engine 'ols' has no option 'bogus'" in res.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-e", "lmer"], "error: The 'engine' argument of fit() must be one of:"),
        (["-e", "ols", "--cv", "store"], "error: cv level 'store' is not a level of the formula"),
        (["-e", "ols", "--cv", "market", "--folds", "9"], "error: Leaving out market groups in 9 folds needs at least 9 market groups"),
    ],
)
def test_errors_are_one_line_and_exit_2(files, args, message):
    res = CliRunner().invoke(main, ["compare", str(files / "data.csv"), "-f", FORMULA, *args])
    assert res.exit_code == 2
    assert message in res.output
    assert len([line for line in res.output.splitlines() if line.startswith("error:")]) == 1


def test_report_of_a_directory_that_is_neither(files, tmp_path):
    res = CliRunner().invoke(main, ["report", str(tmp_path), "--out", str(tmp_path / "x.html")])
    assert res.exit_code == 2 and "neither a saved fit" in res.output
    res = CliRunner().invoke(main, ["report", str(tmp_path / "nope"), "--out", str(tmp_path / "x.html")])
    assert res.exit_code == 2 and res.output.strip().count("\n") == 0 and "is not a directory" in res.output
