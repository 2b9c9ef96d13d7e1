"""The command line end to end on a temporary directory, and its one-line errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from hierfit.cli import main

FORMULA = "y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


@pytest.mark.parametrize("ext", [".csv", ".parquet"])
def test_simulate_fit_effects_predict(runner, tmp_path, ext) -> None:
    data = tmp_path / f"data{ext}"
    res = runner.invoke(main, ["simulate", "--out", str(data), "--n-markets", "5", "--n-submarkets", "3", "--rows", "20", "--truth", str(tmp_path / "truth.csv")])
    assert res.exit_code == 0, res.output
    assert "wrote 300 rows" in res.output
    res = runner.invoke(main, ["fit", str(data), "--formula", FORMULA, "--engine", "ols", "--out", str(tmp_path / "fit"), "--national", "United_state"])
    assert res.exit_code == 0, res.output
    assert "United_state (national root)" in res.output
    res = runner.invoke(main, ["effects", str(tmp_path / "fit"), "--kind", "total"])
    assert res.exit_code == 0, res.output
    assert "United_state" in res.output and "Market_01:Sub_1" in res.output
    res = runner.invoke(main, ["effects", str(tmp_path / "fit"), "--table", "fixed", "--out", str(tmp_path / "fixed.csv")])
    assert res.exit_code == 0 and pd.read_csv(tmp_path / "fixed.csv").term.tolist() == ["Intercept", "x1", "x2"]
    new = pd.read_csv(tmp_path / "truth.csv") if ext == ".csv" else None
    assert new is None or {"level", "group", "estimate"} <= set(new.columns)
    res = runner.invoke(main, ["predict", str(tmp_path / "fit"), str(data), "--out", str(tmp_path / "pred.csv"), "--interval", "prediction"])
    assert res.exit_code == 0, res.output
    pred = pd.read_csv(tmp_path / "pred.csv")
    assert len(pred) == 300 and list(pred.columns) == ["prediction", "lower", "upper", "level_used"]


def test_engines_lists_capabilities(runner) -> None:
    res = runner.invoke(main, ["engines"])
    assert res.exit_code == 0
    assert "ols" in res.output and "frequentist" in res.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--engine", "lmer"], "error: The 'engine' argument of fit() must be one of:"),
        (["--formula", "y ~ x1 + | market"], "error: '|' is only allowed inside a group-level term"),
        (["--formula", "y ~ x9 + (1 | market)"], "error: The predictor column 'x9' is not in the data"),
    ],
)
def test_errors_are_one_line_with_exit_code_2(runner, tmp_path, args, message) -> None:
    data = tmp_path / "d.csv"
    runner.invoke(main, ["simulate", "--out", str(data), "--n-markets", "5", "--n-submarkets", "2", "--rows", "5"])
    base = ["fit", str(data), "--formula", FORMULA, "--engine", "ols", "--out", str(tmp_path / "fit")]
    for flag in ("--engine", "--formula"):
        if flag in args:
            i = base.index(flag)
            base[i + 1] = args[args.index(flag) + 1]
    res = runner.invoke(main, base)
    assert res.exit_code == 2
    assert res.output.startswith(message), res.output
    assert res.output.strip().count("\n") == 0


def test_missing_data_file(runner, tmp_path) -> None:
    res = runner.invoke(main, ["fit", str(tmp_path / "nope.csv"), "--formula", FORMULA, "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_stancode_prints_the_program_and_its_data(runner, tmp_path) -> None:
    import hierfit

    if not hierfit.ENGINES["stan"].available:
        pytest.skip("the stan engine needs: pip install 'hierfit[stan]'")
    data = tmp_path / "d.csv"
    runner.invoke(main, ["simulate", "--out", str(data), "--n-markets", "5", "--n-submarkets", "2", "--rows", "5"])
    res = runner.invoke(main, ["stancode", str(data), "--formula", FORMULA, "--data-out", str(tmp_path / "data.json")])
    assert res.exit_code == 0, res.output
    assert "parameters {" in res.output and "model {" in res.output
    assert (tmp_path / "data.json").read_text().startswith("{")


def test_fit_out_is_atomic_and_needs_overwrite(runner, tmp_path) -> None:
    data = tmp_path / "d.csv"
    runner.invoke(main, ["simulate", "--out", str(data), "--n-markets", "5", "--n-submarkets", "2", "--rows", "5"])
    out = tmp_path / "fit"
    base = ["fit", str(data), "--formula", FORMULA, "--engine", "ols", "--out", str(out)]
    assert runner.invoke(main, base).exit_code == 0
    res = runner.invoke(main, base)
    assert res.exit_code == 2 and res.output.startswith("error: ") and "already holds a hierfit save" in res.output
    assert "hierfit fit" not in res.output, "refused before fitting"
    assert runner.invoke(main, [*base, "--overwrite"]).exit_code == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("x")
    res = runner.invoke(main, [*base[:-1], str(mine), "--overwrite"])
    assert res.exit_code == 2 and "not a hierfit save" in res.output and (mine / "keep.txt").exists()


def test_effects_and_predict_refuse_a_damaged_fit(runner, tmp_path) -> None:
    data = tmp_path / "d.csv"
    runner.invoke(main, ["simulate", "--out", str(data), "--n-markets", "5", "--n-submarkets", "2", "--rows", "5"])
    out = tmp_path / "fit"
    runner.invoke(main, ["fit", str(data), "--formula", FORMULA, "--engine", "ols", "--out", str(out)])
    state = out / "engine" / "state.json"
    state.write_text(state.read_text().replace("Intercept", "Intercepr"))
    for args in (["effects", str(out)], ["predict", str(out), str(data), "--out", str(tmp_path / "p.csv")]):
        res = runner.invoke(main, args)
        assert res.exit_code == 2, res.output
        assert "engine/state.json does not match its SHA-256" in res.output
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.filterwarnings("ignore::hierfit.exceptions.FitWarning")  # the model leaves out the submarkets
def test_fit_and_compare_take_weights_offset_and_glmm_options(runner, tmp_path) -> None:
    data = tmp_path / "counts.csv"
    res = runner.invoke(main, ["simulate", "--out", str(data), "--family", "poisson", "--exposure", "--n-markets", "6",
                               "--n-submarkets", "3", "--rows", "15", "--seed", "3"])
    assert res.exit_code == 0, res.output
    frame = pd.read_csv(data)
    frame["log_exposure"] = np.log(frame.exposure)
    frame["w"] = 1 + frame.index % 2
    frame.to_csv(data, index=False)
    formula = "y ~ x1 + x2 + (1 | market)"
    res = runner.invoke(main, ["fit", str(data), "--formula", formula, "--family", "poisson", "--offset", "log_exposure",
                               "--weights", "w", "--out", str(tmp_path / "fit")])
    assert res.exit_code == 0, res.output
    import hierfit

    direct = hierfit.fit(formula, frame, engine="mixed", family="poisson", offset="log_exposure", weights="w")
    saved = hierfit.load(tmp_path / "fit")
    assert saved.statistics["loglik"] == pytest.approx(direct.statistics["loglik"], rel=1e-10)
    # a GLMM option through -o: adaptive quadrature on the single scalar term changes the likelihood
    res = runner.invoke(main, ["fit", str(data), "--formula", formula, "--family", "poisson", "--offset", "log_exposure",
                               "-o", "n_agq=7", "--out", str(tmp_path / "agq")])
    assert res.exit_code == 0, res.output
    assert hierfit.load(tmp_path / "agq").statistics["n_agq"] == 7
    res = runner.invoke(main, ["compare", str(data), "--formula", formula, "--family", "poisson", "--offset", "log_exposure",
                               "-e", "mixed,ols", "--folds", "3"])
    assert res.exit_code == 0, res.output
    assert "mixed" in res.output and "ols" in res.output
