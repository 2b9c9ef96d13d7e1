"""Property tests over random trees (hypothesis): invariants every cheap engine must keep.

Trees have 1-4 levels, unbalanced (1-5 children per parent, 3-9 rows per leaf), random labels
and row order. For every cheap engine:

* the decomposition sums to the engine's own (native) prediction;
* predictions do not depend on the order of the rows or on the labels of the groups;
* predictions are equivariant under ``y -> a + b y`` and invariant under ``x -> c + d x``;
* a row of a group never seen is predicted with its deepest known ancestor's effects
  (engines with an exact decomposition);
* the formula parser raises nothing but :class:`hierfit.FormulaError` on random text.

Examples are derandomised (reproducible) and few, to keep the suite quick.
"""

from __future__ import annotations

import string
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hierfit
from hierfit.engines import ENGINES

CHEAP = ["ols", "mixed", "lightgbm", "boosted-mixed"]
EXACT = ["ols", "mixed", "boosted-mixed"]  # decompositions are the model's own parts
SETTINGS = settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
LEVELS = ["l1", "l2", "l3", "l4"]


@st.composite
def trees(draw: st.DrawFn) -> tuple[pd.DataFrame, str]:
    """A random unbalanced tree of groups with rows, and the formula of its model."""
    depth = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    label = st.text(alphabet=string.ascii_letters + string.digits + "_ -", min_size=1, max_size=6)
    paths: list[tuple[str, ...]] = [()]
    for d in range(depth):
        children = []
        for p in paths:
            k = draw(st.integers(2 if d == 0 else 1, 5 if d == 0 else 3))
            names = draw(st.lists(label, min_size=k, max_size=k, unique=True))
            children += [p + (n,) for n in names]
        paths = children
    rows = []
    for path in paths:
        for _ in range(draw(st.integers(3, 9))):
            rows.append(path)
    df = pd.DataFrame(rows, columns=LEVELS[:depth])
    n = len(df)
    df["x1"] = rng.normal(size=n)
    df["x2"] = rng.normal(size=n)
    effect = np.zeros(n)
    for d in range(depth):
        codes = pd.factorize(df[LEVELS[: d + 1]].astype(str).agg("/".join, axis=1))[0]
        effect += rng.normal(0, 0.7 / (d + 1), codes.max() + 1)[codes]
    df["y"] = 1.0 + 0.5 * df["x1"] - 0.3 * df["x2"] + effect + rng.normal(0, 0.5, n)
    df = df.sample(frac=1.0, random_state=seed % 1000).reset_index(drop=True)
    formula = f"y ~ x1 + x2 + (1 | {'/'.join(LEVELS[:depth])})"
    return df, formula


def _fit(engine: str, df: pd.DataFrame, formula: str) -> hierfit.FitResult:
    options = ENGINES[engine].fast_options()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hierfit.HierfitWarning)
        return hierfit.fit(formula, df, engine=engine, checks={"few_groups": "ignore", "single_row_groups": "ignore"},
                           **options)


def _predict(fit: hierfit.FitResult, df: pd.DataFrame) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hierfit.HierfitWarning)
        return fit.predict(df)["prediction"].to_numpy()


def _close(a: np.ndarray, b: np.ndarray, engine: str, floor: float = 0.0) -> None:
    """Equal to 1e-8 relative (1e-5 for trees, which sum histograms in float32 in a
    row-order-dependent way); ``floor`` adds the rounding of transformed data themselves."""
    tol = 1e-5 if engine in ("lightgbm", "boosted-mixed") else 1e-8
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.abs(b).max())) + floor)


@pytest.mark.parametrize("engine", CHEAP)
@SETTINGS
@given(tree=trees())
def test_decomposition_sums_to_the_native_prediction(engine: str, tree: tuple[pd.DataFrame, str]) -> None:
    df, formula = tree
    fit = _fit(engine, df, formula)
    native = fit.engine_fit.native_linear_predictor(fit.encoding.apply(df))
    np.testing.assert_allclose(fit.decompose(df).sum(axis=1).to_numpy(), native, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("engine", CHEAP)
@SETTINGS
@given(tree=trees(), perm_seed=st.integers(0, 10_000))
def test_row_order_and_labels_do_not_matter(engine: str, tree: tuple[pd.DataFrame, str], perm_seed: int) -> None:
    df, formula = tree
    base = _predict(_fit(engine, df, formula), df)
    rng = np.random.default_rng(perm_seed)
    perm = rng.permutation(len(df))
    shuffled = df.iloc[perm].reset_index(drop=True)
    _close(_predict(_fit(engine, shuffled, formula), shuffled), base[perm], engine)
    relabelled = df.copy()
    for col in [c for c in LEVELS if c in df.columns]:
        labels = sorted(df[col].unique())
        new = {old: f"g{k:03d}" for k, old in zip(rng.permutation(len(labels)), labels)}
        relabelled[col] = df[col].map(new)
    _close(_predict(_fit(engine, relabelled, formula), relabelled), base, engine)


@pytest.mark.parametrize("engine", CHEAP)
@SETTINGS
@given(tree=trees(), a=st.sampled_from([-1e4, 3.5, 1e6]), b=st.sampled_from([1e-3, 0.5, 2.0 ** 10]),
       c=st.sampled_from([-50.0, 1e3]), d=st.sampled_from([0.01, 3.0]))
def test_affine_changes_of_outcome_and_predictor(engine: str, tree: tuple[pd.DataFrame, str], a: float, b: float,
                                                 c: float, d: float) -> None:
    df, formula = tree
    base = _predict(_fit(engine, df, formula), df)
    moved = df.assign(y=a + b * df["y"])
    # a + b y rounds y to |a| eps in its own units: |a| eps / b in y's (the data's own floor)
    floor = 8 * np.finfo(float).eps * abs(a) / b
    _close((_predict(_fit(engine, moved, formula), moved) - a) / b, base, engine, floor)
    shifted = df.assign(x1=c + d * df["x1"])
    _close(_predict(_fit(engine, shifted, formula), shifted), base, engine)


@pytest.mark.parametrize("engine", EXACT)
@SETTINGS
@given(tree=trees())
def test_unseen_groups_use_their_deepest_known_ancestor(engine: str, tree: tuple[pd.DataFrame, str]) -> None:
    df, formula = tree
    levels = [c for c in LEVELS if c in df.columns]
    fit = _fit(engine, df, formula)
    row = df.iloc[[0]].copy()
    parts = fit.decompose(row)
    deepest = levels[-1]
    new = row.assign(**{deepest: "never-seen"})
    with pytest.warns(hierfit.UnseenGroupsWarning):
        pred = fit.predict(new, scale="link")
    expected = parts.drop(columns=[f"{deepest}[Intercept]"]).sum(axis=1).to_numpy()
    np.testing.assert_allclose(pred["prediction"].to_numpy(), expected, rtol=1e-10, atol=1e-10)
    assert pred["level_used"].iloc[0] == (levels[-2] if len(levels) > 1 else "national")


FORMULA_ALPHABET = "yx12 ~+-*:/|()01,.abc_`"


@settings(max_examples=400, deadline=None, derandomize=True)
@given(text=st.text(alphabet=FORMULA_ALPHABET, max_size=40))
def test_the_parser_raises_only_formula_errors(text: str) -> None:
    try:
        hierfit.parse_formula(text)
    except hierfit.FormulaError:
        pass


@settings(max_examples=150, deadline=None, derandomize=True)
@given(rhs=st.lists(st.sampled_from(["x", "1", "0", "(1 | g)", "(x || g)", "(1 + x | g/h)", "offset(x)", "x:z", "(",
                                     ")", "|", "||", "+", "-", "~", "cbind(y, n)"]), max_size=8))
def test_the_parser_on_formula_like_token_soup(rhs: list[str]) -> None:
    try:
        hierfit.parse_formula("y ~ " + " ".join(rhs))
    except hierfit.FormulaError:
        pass
