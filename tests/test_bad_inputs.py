"""The bad-input catalogue: each case, the error (a ``HierfitError`` subclass) and its message.

Every row feeds one documented bad input to the public API and asserts the exception type and
a fragment of its message (which names the column / value and the next step). Nothing may
escape as a raw ``ValueError``/``LinAlgError`` from a numerical library.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import hierfit
from hierfit.exceptions import DataError, EngineError, FormulaError, HierarchyError, HierfitError, SpecError


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    sim = hierfit.simulate(n_markets=6, n_submarkets=3, rows_per_submarket=12, seed=11)
    df = sim.data.copy()
    df["x1b"] = 2.0 * df["x1"]
    df["const"] = 5.0
    levels = sorted(df["market"].unique())
    df["mx"] = df["market"].map({m: 0.7 * i for i, m in enumerate(levels)})  # constant within each market
    return df


def _fit(formula: str, **kwargs: Any) -> Callable[[pd.DataFrame], Any]:
    def run(df: pd.DataFrame) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", hierfit.HierfitWarning)
            return hierfit.fit(formula, df, **kwargs)

    return run


def _fit_limited_engine(formula: str, **kwargs: Any) -> Callable[[pd.DataFrame], Any]:
    """Fit with a third-party engine (``ols`` re-registered) that fits gaussian outcomes only and
    takes no offsets: every built-in engine fits every family and takes offsets, but an engine
    plugged in through ``register`` may not, and must be refused before any work."""
    def run(df: pd.DataFrame) -> Any:
        from dataclasses import replace

        from hierfit.engines import ENGINES, register

        ols = ENGINES["ols"]
        caps = replace(ols.capabilities, families=("gaussian",), offsets=False, weights=False)
        register(replace(ols, name="gaussian-only", capabilities=caps))
        try:
            return _fit(formula, engine="gaussian-only", **kwargs)(df)
        finally:
            del ENGINES["gaussian-only"]

    return run


def _with(column: str, values: Any, formula: str = "y ~ x1 + (1 | market)", **kwargs: Any) -> Callable[[pd.DataFrame], Any]:
    def run(df: pd.DataFrame) -> Any:
        df = df.copy()
        df[column] = values(df) if callable(values) else values
        return _fit(formula, **kwargs)(df)

    return run


def _predict_with_inf(df: pd.DataFrame) -> Any:
    fit = _fit("y ~ x1 + (1 | market)")(df)
    bad = df.copy()
    bad.loc[bad.index[2], "x1"] = np.inf
    return fit.predict(bad)


_INF = lambda d: d["x1"].where(d.index != d.index[4], np.inf)  # noqa: E731
_NEG_INF = lambda d: d["x1"].where(d.index != d.index[4], -np.inf)  # noqa: E731

#: case -> (call on the data, expected error type, message fragment)
CATALOGUE: dict[str, tuple[Callable[[pd.DataFrame], Any], type[HierfitError], str]] = {
    # non-finite values
    "+inf in a predictor": (_with("x1", _INF), DataError, "Column 'x1' has 1 infinite value (+inf"),
    "+inf in a predictor, ols": (_with("x1", _INF, engine="ols"), DataError, "Column 'x1' has 1 infinite value"),
    "+inf in a predictor, lightgbm": (_with("x1", _INF, engine="lightgbm"), DataError, "Column 'x1' has 1 infinite value"),
    "-inf in a slope column": (_with("x1", _NEG_INF, formula="y ~ x2 + (1 + x1 | market)"), DataError, "(-inf; rows"),
    "inf in predict() rows": (_predict_with_inf, DataError, "Column 'x1' has 1 infinite value"),
    "a transform undefined somewhere (log of 0)": (_with("x2", lambda d: np.abs(d["x2"]).where(d.index != d.index[0], 0.0),
                                                         formula="y ~ np.log(x2) + (1 | market)"),
                                                   DataError, "'np.log(x2)' is not finite at 1 rows"),
    # identification
    "collinear predictors (x1b = 2 x1)": (_fit("y ~ x1 + x1b + (1 | market)"), DataError, "'x1b' = 2*x1 + a constant"),
    "collinear predictors, ols": (_fit("y ~ x1 + x1b + (1 | market)", engine="ols"), DataError, "collinear"),
    "collinear predictors, lightgbm": (_fit("y ~ x1 + x1b + (1 | market)", engine="lightgbm"), DataError, "collinear"),
    "constant predictor beside the intercept": (_fit("y ~ x1 + const + (1 | market)"), DataError, "'const' is constant"),
    "market-level predictor beside market effects, ols": (_fit("y ~ x1 + mx + (1 | market)", engine="ols"), DataError,
                                                          "population column 'mx'"),
    # too little data, degenerate outcomes
    "one row": (lambda d: _fit("y ~ x1 + (1 | market)")(d.head(1)), DataError, "The data have 1 row, but the model has 2"),
    "two rows": (lambda d: _fit("y ~ x1 + (1 | market)", engine="ols")(d.head(2)), DataError, "at least 3"),
    "bernoulli outcome all 0": (_with("y", 0.0, family="bernoulli", engine="lightgbm"), DataError,
                                "[degenerate_outcome] The outcome 'y' is 0 in every row"),
    "bernoulli outcome all 1": (_with("y", 1.0, family="bernoulli", engine="lightgbm"), DataError, "runs off to +infinity"),
    "poisson outcome all 0": (_with("y", 0.0, family="poisson", engine="lightgbm"), DataError, "a poisson model's intercept"),
    "constant gaussian outcome": (_with("y", 3.0), DataError, "is 3 in every row"),
    # engine options, checked from each engine's option table before any work
    "option of the wrong type (n_draws='abc')": (_fit("y ~ x1 + (1 | market)", engine="mixed", n_draws="abc"), EngineError,
                                                 "option 'n_draws' must be an integer >= 10; got 'abc' (str)"),
    "option out of range (maxiter=0)": (_fit("y ~ x1 + (1 | market)", engine="mixed", maxiter=0), EngineError,
                                        "option 'maxiter' must be an integer >= 1; got 0"),
    "bool option given a string (reml='no')": (_fit("y ~ x1 + (1 | market)", engine="mixed", reml="no"), EngineError,
                                               "option 'reml' must be True or False (or None); got 'no'"),
    "negative count option (num_boost_round=-5)": (_fit("y ~ x1 + (1 | market)", engine="lightgbm", num_boost_round=-5),
                                                   EngineError, "'num_boost_round' must be an integer >= 1; got -5"),
    "choice option (slope_features='x')": (_fit("y ~ x1 + (1 | market)", engine="lightgbm", slope_features="x"), EngineError,
                                           "must be one of: 'auto', 'onehot', 'trees'"),
    "unknown engine option": (_fit("y ~ x1 + (1 | market)", engine="mixed", draws=5), EngineError, "has no option 'draws'"),
    # spec and formula
    "unknown engine": (_fit("y ~ x1 + (1 | market)", engine="lmer"), EngineError, "must be one of: boosted-mixed"),
    "unknown family": (_fit("y ~ x1 + (1 | market)", family="gamma"), SpecError, "Got 'gamma'"),
    "unknown link": (_fit("y ~ x1 + (1 | market)", family="bernoulli", link="log"), SpecError, "allows the links"),
    "family the engine cannot fit": (_fit_limited_engine("y ~ x1 + (1 | market)", family="poisson"), SpecError,
                                     "Engines for 'poisson'"),
    "link the engine cannot fit": (_fit("y ~ x1 + (1 | market)", engine="lightgbm", family="bernoulli", link="probit"), SpecError,
                                   "fits only the default link of family 'bernoulli' (logit); got link='probit'. Engines for the probit link: mixed, ols"),
    "offset the engine cannot take": (_fit_limited_engine("y ~ x1 + offset(x2) + (1 | market)"), SpecError,
                                      "does not take offsets"),
    "unreadable formula": (_fit("y ~ x1 + | market"), FormulaError, "⟨|⟩"),
    "doubled parentheses": (_fit("y ~ x1 + ((1 | market))"), FormulaError, "write (1 | market), not ((1 | market))"),
    "'|||'": (_fit("y ~ x1 + (1 ||| market)"), FormulaError, "'|||' is not an operator"),
    "a call hierfit does not know": (_fit("y ~ x1 + foo(x2) + (1 | market)"), SpecError, "The formula calls foo(...)"),
    "brms-style binomial outcome": (_fit("y | trials(n) ~ x1 + (1 | market)"), FormulaError, "cbind(successes, failures)"),
    "binomial without cbind": (_fit("y ~ x1 + (1 | market)", family="binomial"), SpecError, "write the outcome as cbind"),
    "hierarchy= with '/' nesting": (_fit("y ~ x1 + (1 | market/submarket)", hierarchy=("market", "submarket")), SpecError,
                                    "Use one of the two"),
    "missing column": (_fit("y ~ x9 + (1 | market)"), DataError, "'x9' is not in the data"),
    "missing values": (_with("x1", lambda d: d["x1"].where(d.index > 3)), DataError, "missing values in columns"),
    "outcome outside the family": (_with("y", lambda d: np.round(d["y"]), family="bernoulli", engine="lightgbm"), DataError,
                                   "needs 0/1 outcomes"),
    "a child under two parents": (_fit("y ~ x1 + (1 | market) + (1 | submarket)", hierarchy=("market", "submarket")),
                                  HierarchyError, "each child needs exactly one parent"),
    "no group-level term for mixed": (_fit("y ~ x1", engine="mixed"), SpecError, "needs at least one group-level term"),
}


@pytest.mark.parametrize("case", list(CATALOGUE))
def test_bad_input_gets_a_clear_error(case: str, data: pd.DataFrame) -> None:
    call, error, fragment = CATALOGUE[case]
    with pytest.raises(error) as info:
        call(data)
    assert fragment in str(info.value), f"{case}: {info.value}"


def test_collinear_columns_are_dropped_when_asked(data: pd.DataFrame) -> None:
    """checks={'rank_deficient': 'warn'}: lme4's behaviour, said once, and new data follow."""
    with pytest.warns(hierfit.exceptions.DataCheckWarning, match="Dropped collinear population-level column 'x1b'"):
        fit = hierfit.fit("y ~ x1 + x1b + (1 | market)", data, checks={"rank_deficient": "warn", "few_groups": "ignore"})
    assert fit.fixed_effects()["term"].tolist() == ["Intercept", "x1"]
    ref = _fit("y ~ x1 + (1 | market)")(data)
    np.testing.assert_allclose(fit.predict(data)["prediction"], ref.predict(data)["prediction"], rtol=1e-10)
    assert [d.check for d in fit.diagnostics].count("rank_deficient") == 1


def test_separation_is_named(data: pd.DataFrame) -> None:
    df = data.assign(y=(data["x1"] > 0.2).astype(float))
    with pytest.warns(hierfit.exceptions.DataCheckWarning, match="Predictor 'x1' completely separates the outcome 'y'"):
        hierfit.fit("y ~ x1 + (1 | market)", df, engine="lightgbm", family="bernoulli", checks={"few_groups": "ignore"})


def test_lightgbm_intervals_warn_instead_of_silent_nan(data: pd.DataFrame) -> None:
    fit = _fit("y ~ x1 + (1 | market)", engine="lightgbm")(data)
    with pytest.warns(hierfit.exceptions.FitWarning, match="no uncertainty to give intervals from"):
        pred = fit.predict(data, interval="prediction")
    assert pred["lower"].isna().all()


# ----------------------------------------------------------------------------- the command line
CLI = [sys.executable, "-m", "hierfit.cli"]
FORMULA = "y ~ x1 + (1 | market)"


def _run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + args, capture_output=True, text=True, timeout=300, **kwargs)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, data: pd.DataFrame) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli")
    out = {"good": d / "good.csv", "latin": d / "latin.csv", "binary": d / "binary.csv", "empty": d / "empty.csv", "dir": d}
    data.to_csv(out["good"], index=False)
    data.assign(market=data["market"] + "é").to_csv(out["latin"], index=False, encoding="latin-1")
    out["binary"].write_bytes(bytes(range(256)) * 20)
    out["empty"].write_text("")
    return out


#: case -> (file key, message fragment); every one prints one line and exits with 2
CLI_CASES = {
    "latin-1 encoded file": ("latin", "is not UTF-8 text (byte 0xe9"),
    "binary file": ("binary", "looks binary (it contains NUL bytes)"),
    "empty file": ("empty", "is empty; write a header row"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_unreadable_files_are_one_line(case: str, files: dict[str, Path]) -> None:
    key, fragment = CLI_CASES[case]
    r = _run(["fit", str(files[key]), "-f", FORMULA, "--out", str(files["dir"] / f"out-{key}")])
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and fragment in lines[0], r.stderr


def test_cli_never_creates_output_folders(files: dict[str, Path]) -> None:
    target = files["dir"] / "missing" / "deeper" / "fit"
    r = _run(["fit", str(files["good"]), "-f", FORMULA, "--out", str(target)])
    assert r.returncode == 2 and "does not exist" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (files["dir"] / "missing").exists()
    r = _run(["simulate", "--out", str(files["dir"] / "nowhere" / "sim.csv")])
    assert r.returncode == 2 and not (files["dir"] / "nowhere").exists()


def test_ctrl_c_aborts_cleanly_with_no_partial_output(files: dict[str, Path], tmp_path: Path) -> None:
    """SIGINT during a long fit: one line, exit code 130, and nothing written."""
    big = tmp_path / "big.csv"
    hierfit.simulate(n_markets=20, n_submarkets=10, rows_per_submarket=200, seed=2).data.to_csv(big, index=False)
    target = tmp_path / "fit"
    proc = subprocess.Popen(CLI + ["fit", str(big), "-f", "y ~ x1 + x2 + (1 | market/submarket)", "-e", "neural",
                                   "-o", "max_epochs=400", "-o", "patience=400", "--out", str(target)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a test run started in the background (`make test &`) ignores SIGINT, and
                            # so would the CLI, which inherits it: give the CLI Ctrl-C as at a terminal
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(8)  # importing torch and starting to train
    # On a loaded machine the first Ctrl-C can land while a native library (torch's import)
    # holds the signal; a user presses it again, and so does this test (bounded).
    for _ in range(6):
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=20)
            break
        except subprocess.TimeoutExpired:
            continue
    else:
        proc.kill()
        _, err = proc.communicate()
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning:")]
    assert lines == ["interrupted: nothing was written"], err
    assert not target.exists()
