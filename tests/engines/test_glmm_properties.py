"""Properties of the GLMM core that hold exactly, whatever the data.

Every generator is seeded.  Equalities are checked at 1e-6 (estimates from two separate
optimisations agree to the optimiser's accuracy, ~1e-8 in practice), gradients at 1e-6
relative to central differences, and diagnostics on data built to trigger (or not) each
flag.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special

from hierfit.engines.mixed import _glmm_kernels as K
from hierfit.engines.mixed._blocks import make_plan
from hierfit.engines.mixed._glmm_laplace import laplace_gradient
from hierfit.engines.mixed._glmm_pirls import pirls
from hierfit.engines.mixed._glmm_setup import prepare
from hierfit.engines.mixed._suffstats import compute_rows, make_layout
from hierfit.engines.mixed.glmm import GlmmSolution, RandomBlock, fit_glmm
from hierfit.model.family import get_family


def _tree(seed: int, n: int = 1200, markets: int = 12, subs: int = 4, slope_sd: float = 0.3,
          ) -> dict[str, np.ndarray]:
    """Seeded nested data: market (with a random slope on x1) and submarket effects."""
    rng = np.random.default_rng(seed)
    market = rng.integers(0, markets, n)
    sub = market * subs + rng.integers(0, subs, n)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    bm = rng.normal(size=(markets, 2)) * np.array([0.6, slope_sd])
    bs = rng.normal(0.0, 0.4, markets * subs)
    eta = -0.2 + 0.5 * x1 - 0.4 * x2 + bm[market, 0] + bm[market, 1] * x1 + bs[sub]
    return {"market": market, "sub": sub, "x1": x1, "x2": x2, "eta": eta, "rng": rng,
            "M": np.array(markets), "S": np.array(subs)}


def _blocks(d: dict[str, np.ndarray], slope: bool = True) -> list[RandomBlock]:
    n = d["x1"].size
    zm = np.column_stack([np.ones(n), d["x1"]]) if slope else np.ones(n)
    M, S = int(d["M"]), int(d["S"])
    return [RandomBlock(d["sub"], M * S, np.ones(n)), RandomBlock(d["market"], M, zm)]


def _X(d: dict[str, np.ndarray]) -> np.ndarray:
    return np.column_stack([np.ones(d["x1"].size), d["x1"], d["x2"]])


def _bernoulli(d: dict[str, np.ndarray]) -> np.ndarray:
    return (d["rng"].uniform(size=d["eta"].size) < special.expit(d["eta"])).astype(float)


def _same(a: GlmmSolution, b: GlmmSolution, tol: float = 1e-6) -> None:
    assert a.converged and b.converged
    assert a.loglik == pytest.approx(b.loglik, rel=1e-9, abs=1e-7)
    np.testing.assert_allclose(a.beta, b.beta, atol=tol)
    np.testing.assert_allclose(a.theta, b.theta, atol=tol)
    np.testing.assert_allclose(a.se_beta, b.se_beta, rtol=1e-4)
    for ra, rb in zip(a.ranef, b.ranef):
        np.testing.assert_allclose(ra, rb, atol=10 * tol)


# ----------------------------------------------------------------------------- weights
def test_integer_weights_equal_replicated_rows() -> None:
    d = _tree(1)
    y = _bernoulli(d)
    w = d["rng"].integers(1, 4, y.size).astype(float)
    fam = get_family("bernoulli")
    weighted = fit_glmm(_X(d), y, _blocks(d), fam, weights=w)
    rep = np.repeat(np.arange(y.size), w.astype(int))
    blocks = [RandomBlock(b.group_index[rep], b.n_groups, np.asarray(b.Z)[rep]) for b in _blocks(d)]
    replicated = fit_glmm(_X(d)[rep], y[rep], blocks, fam)
    _same(weighted, replicated)


def test_aggregated_binomial_equals_bernoulli_expansion() -> None:
    rng = np.random.default_rng(2)
    g = np.repeat(np.arange(25), 4)  # 25 groups x 4 covariate cells
    x = np.tile([-1.0, -0.3, 0.4, 1.2], 25)
    trials = rng.integers(1, 9, g.size).astype(float)
    p = special.expit(0.3 + 0.8 * x + rng.normal(0, 0.7, 25)[g])
    succ = rng.binomial(trials.astype(int), p).astype(float)
    X = np.column_stack([np.ones(g.size), x])
    agg = fit_glmm(X, succ, [RandomBlock(g, 25, np.ones(g.size))], get_family("binomial"),
                   trials=trials)
    rows = np.repeat(np.arange(g.size), trials.astype(int))
    first = np.concatenate([[0], np.cumsum(trials)[:-1]]).astype(int)
    yb = (np.arange(rows.size) - first[rows] < succ[rows]).astype(float)
    bern = fit_glmm(X[rows], yb, [RandomBlock(g[rows], 25, np.ones(rows.size))],
                    get_family("bernoulli"))
    np.testing.assert_allclose(agg.beta, bern.beta, atol=1e-6)
    np.testing.assert_allclose(agg.theta, bern.theta, atol=1e-6)
    # The binomial likelihood carries the binomial coefficients; the Bernoulli one does not.
    log_choose = float(np.sum(special.gammaln(trials + 1) - special.gammaln(succ + 1)
                              - special.gammaln(trials - succ + 1)))
    assert agg.loglik - bern.loglik == pytest.approx(log_choose, abs=1e-6)
    assert agg.deviance == pytest.approx(sum(agg.family.unit_deviance(succ, agg.fitted(), trials)))


# ----------------------------------------------------------------------------- offsets
@pytest.mark.parametrize("family", ["poisson", "bernoulli"])
def test_offset_equals_a_fixed_coefficient(family: str) -> None:
    """Fixing x2's coefficient at its estimate through an offset reproduces the optimum."""
    d = _tree(3)
    y = _bernoulli(d) if family == "bernoulli" else d["rng"].poisson(np.exp(d["eta"])).astype(float)
    fam = get_family(family)
    full = fit_glmm(_X(d), y, _blocks(d), fam)
    off = full.beta[2] * d["x2"]
    reduced = fit_glmm(_X(d)[:, :2], y, _blocks(d), fam, offset=off)
    assert reduced.loglik == pytest.approx(full.loglik, abs=1e-7)
    np.testing.assert_allclose(reduced.beta, full.beta[:2], atol=1e-6)
    np.testing.assert_allclose(reduced.theta, full.theta, atol=1e-6)
    np.testing.assert_allclose(reduced.linear_predictor, full.linear_predictor, atol=1e-6)


def test_row_order_invariance() -> None:
    d = _tree(4)
    y = _bernoulli(d)
    fam = get_family("bernoulli")
    a = fit_glmm(_X(d), y, _blocks(d), fam)
    perm = np.random.default_rng(40).permutation(y.size)
    blocks = [RandomBlock(b.group_index[perm], b.n_groups, np.asarray(b.Z)[perm]) for b in _blocks(d)]
    b = fit_glmm(_X(d)[perm], y[perm], blocks, fam)
    _same(a, b)
    np.testing.assert_allclose(b.linear_predictor, a.linear_predictor[perm], atol=1e-6)


# ----------------------------------------------------------------------------- gradients
def _gradient_case(family: str, link: str | None, information: str | None, crossed: bool,
                   use_numba: bool) -> tuple[np.ndarray, np.ndarray]:
    d = _tree(5, n=900)
    rng = np.random.default_rng(50)
    fam = get_family(family, link)
    n = d["x1"].size
    blocks = _blocks(d)
    if crossed:
        blocks.append(RandomBlock(rng.integers(0, 7, n), 7, np.column_stack([np.ones(n), d["x2"]])))
    mu = fam.link.inverse(0.5 * d["eta"])
    disp = 2.5 if fam.has_dispersion else None
    trials = rng.integers(1, 5, n).astype(float) if fam.has_trials else None
    y = fam.sample(rng, mu, trials, disp)
    weights = rng.uniform(0.5, 2.0, n)
    fit = prepare(_X(d), y, blocks, fam, trials=trials, weights=weights, offset=0.1 * d["x2"],
                  n_agq=1, information=information, nb_theta=disp, use_numba=use_numba)
    prob = fit.prob
    nt = prob.spec.size
    x = np.concatenate([np.where(prob.spec.lower == 0, 0.6, -0.2) * np.linspace(1, 0.5, nt),
                        [0.1, 0.3, -0.2]])

    def mode(z: np.ndarray):  # type: ignore[no-untyped-def]
        return pirls(prob, prob.factor_T(z[:nt]), z[nt:], disp, np.zeros(prob.q),
                     grad=True, tol=1e-24)

    m = mode(x)
    assert m.converged
    gt, gb = laplace_gradient(prob, m, prob.factor_T(x[:nt]), disp)
    h = 1e-5
    fd = np.array([(mode(x + h * e).objective - mode(x - h * e).objective) / (2 * h)
                   for e in np.eye(x.size)])
    return np.concatenate([gt, gb]), fd


@pytest.mark.parametrize("family,link,information,crossed,use_numba", [
    ("bernoulli", None, None, False, True),      # fused compiled passes
    ("bernoulli", None, None, True, True),       # crossed factor in the dense root
    ("binomial", None, None, True, False),       # numpy row passes
    ("poisson", None, None, False, True),
    ("negative_binomial", None, "observed", False, True),   # glmmTMB's Laplace
    ("negative_binomial", None, "expected", True, True),    # glmer.nb's Laplace
    ("bernoulli", "probit", "expected", False, True),       # non-canonical link
])
def test_laplace_gradient_matches_central_differences(
        family: str, link: str | None, information: str | None, crossed: bool,
        use_numba: bool) -> None:
    g, fd = _gradient_case(family, link, information, crossed, use_numba)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-6 * np.max(np.abs(fd)))


# ----------------------------------------------------------------------------- kernels
def test_row_kernels_match_compute_rows() -> None:
    d = _tree(6, n=700)
    rng = np.random.default_rng(60)
    n = d["x1"].size
    blocks = _blocks(d) + [RandomBlock(rng.integers(0, 5, n), 5, np.column_stack([np.ones(n), d["x2"]]))]
    plan, _ = make_plan(blocks, n)
    X = _X(d)
    xc, xs = np.array([0.0, 0.2, -0.1]), np.array([1.0, 1.5, 0.8])
    maps = [(np.r_[0.0, np.full(f.K - 1, 0.3)], np.r_[1.0, np.full(f.K - 1, 2.0)]) for f in plan.factors]
    lay = make_layout(plan, 3)
    rl = K.make_row_layout(plan, make_layout(plan, 0), maps)
    w, r = rng.uniform(0.1, 2.0, n), rng.normal(size=n)
    ref = compute_rows(X, r, plan, lay, (np.r_[xc, 0.0], np.r_[xs, 1.0]), maps, weights=w)
    for use in (True, False):
        got = K.accumulate(rl, w, r, X, xc, xs, use_numba=use)
        for a, b in zip(ref, got):
            np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-10)
    bvec = rng.normal(size=int(rl.vbase[-1]))
    np.testing.assert_allclose(K.linpred(rl, r, bvec), K.linpred(rl, r, bvec, use_numba=False),
                               atol=1e-12)
    s1, s2 = K.scatter(rl, w, r)
    t1, t2 = K.scatter(rl, w, r, use_numba=False)
    np.testing.assert_allclose(s1, t1, atol=1e-10)
    np.testing.assert_allclose(s2, t2, atol=1e-10)
    # The fixed-effects columns as the joint PIRLS system assembles them.
    zx, fixed = K.xparts(rl, w, r, X, xc, xs)
    zx0, fixed0 = K.xparts(rl, w, r, X, xc, xs, use_numba=False)
    np.testing.assert_allclose(zx, zx0, atol=1e-10)
    np.testing.assert_allclose(fixed, fixed0, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(fixed, ref[-1][0], rtol=1e-12, atol=1e-10)
    for lvl, part in enumerate(rl.split_vector(zx[1])):  # column 1 of X in every level's rows
        np.testing.assert_allclose(part, ref[lvl][:, :, -3], atol=1e-10)


def test_row_layout_reads_the_callers_codes_and_columns_in_place() -> None:
    # Memory is per row (the fit's scale limit): the compiled passes read the caller's int64
    # codes and contiguous slope columns (a column-major Z, as the design builds) without
    # copies, and the unit trials, unit weights and zero offset take no rows at all.
    d = _tree(8, n=600)
    n = d["x1"].size
    zm = np.asfortranarray(np.column_stack([np.ones(n), d["x1"]]))
    blocks = [RandomBlock(d["sub"], int(d["M"] * d["S"]), np.ones(n)), RandomBlock(d["market"], int(d["M"]), zm)]
    fit = prepare(_X(d), _bernoulli(d), blocks, get_family("bernoulli"), trials=None, weights=None, offset=None,
                  n_agq=1, information=None, nb_theta=None, use_numba=True)
    rl = fit.prob.rl
    assert any(np.shares_memory(g, d["sub"]) for g in rl.gidx) and any(np.shares_memory(g, d["market"]) for g in rl.gidx)
    assert len(rl.zc) == 1 and np.shares_memory(rl.zc[0], zm)
    for v in (fit.trials, fit.weights, fit.prob.offset):
        assert v.strides == (0,) and not v.flags.writeable
    # a row-major Z is read through a contiguous copy of its slope column: the same fit
    fit_c = prepare(_X(d), _bernoulli(d), [blocks[0], RandomBlock(d["market"], int(d["M"]), np.ascontiguousarray(zm))],
                    get_family("bernoulli"), trials=None, weights=None, offset=None, n_agq=1, information=None,
                    nb_theta=None, use_numba=True)
    assert not np.shares_memory(fit_c.prob.rl.zc[0], zm)
    np.testing.assert_array_equal(fit_c.prob.rl.zc[0], rl.zc[0])


def test_numpy_passes_give_the_same_fit() -> None:
    # (the compiled joint pass runs in chunks of rows: 800 rows are several chunks)
    d = _tree(7, n=800)
    y = _bernoulli(d)
    fam = get_family("bernoulli")
    a = fit_glmm(_X(d), y, _blocks(d), fam)
    b = fit_glmm(_X(d), y, _blocks(d), fam, use_numba=False)
    _same(a, b)


# ----------------------------------------------------------------------------- AGQ
def test_agq_needs_one_scalar_term() -> None:
    d = _tree(8, n=400)
    y = _bernoulli(d)
    fam = get_family("bernoulli")
    with pytest.raises(ValueError, match="exactly one scalar random-effects term"):
        fit_glmm(_X(d), y, _blocks(d, slope=False), fam, n_agq=5)
    with pytest.raises(ValueError, match="exactly one scalar random-effects term"):
        fit_glmm(_X(d), y, _blocks(d)[1:], fam, n_agq=5)
    with pytest.raises(ValueError, match="between 1 and 25"):
        fit_glmm(_X(d), y, _blocks(d)[:1], fam, n_agq=30)


def test_agq_with_one_node_is_laplace_and_converges_with_nodes() -> None:
    d = _tree(9, n=600)
    y = _bernoulli(d)
    fam = get_family("bernoulli")
    blocks = [RandomBlock(d["market"], int(d["M"]), np.ones(y.size))]
    lap = fit_glmm(_X(d), y, blocks, fam)
    one = fit_glmm(_X(d), y, blocks, fam, n_agq=1)
    assert one.loglik == lap.loglik
    q9, q15 = (fit_glmm(_X(d), y, blocks, fam, n_agq=k) for k in (9, 15))
    assert q9.loglik == pytest.approx(q15.loglik, abs=1e-6)
    assert abs(q9.loglik - lap.loglik) < 0.1


# ----------------------------------------------------------------------------- diagnostics
def test_fixed_effect_separation_is_flagged() -> None:
    rng = np.random.default_rng(10)
    n = 400
    g = rng.integers(0, 20, n)
    x = rng.normal(size=n)
    y = (x + 0.3 * rng.normal(0, 1, 20)[g] > 0).astype(float)
    sep = np.where(x > 0.0, 1.0, 0.0)  # y == 1 exactly where x > 0: complete separation
    X = np.column_stack([np.ones(n), x])
    sol = fit_glmm(X, sep, [RandomBlock(g, 20, np.ones(n))], get_family("bernoulli"))
    flags = sol.diagnostics.separation
    assert any(f.kind == "fixed" and f.index == 1 and f.direction == 1 for f in flags)
    ok = fit_glmm(X, (rng.uniform(size=n) < special.expit(x)).astype(float),
                  [RandomBlock(g, 20, np.ones(n))], get_family("bernoulli"))
    assert not ok.diagnostics.separation
    del y


def test_random_effect_separation_names_the_groups() -> None:
    rng = np.random.default_rng(11)
    g = np.repeat(np.arange(12), 30)
    y = np.where(g % 2 == 0, 1.0, 0.0)  # every group all successes or all failures
    y[:3] = 0.0  # one group is mixed, so only the others are at a boundary
    X = np.column_stack([np.ones(g.size), rng.normal(size=g.size)])
    sol = fit_glmm(X, y, [RandomBlock(g, 12, np.ones(g.size))], get_family("bernoulli"))
    flags = [f for f in sol.diagnostics.separation if f.kind == "random"]
    assert flags and flags[0].index == 0 and flags[0].column == 0
    assert 0 not in flags[0].groups and set(flags[0].groups) <= set(range(1, 12))


def test_poisson_overdispersion_is_flagged() -> None:
    d = _tree(12)
    rng = d["rng"]
    mu = np.exp(d["eta"] + 1.0)
    nb = rng.negative_binomial(1.5, 1.5 / (1.5 + mu)).astype(float)
    fam = get_family("poisson")
    over = fit_glmm(_X(d), nb, _blocks(d), fam).diagnostics
    assert over.overdispersed and over.suggested_family == "negative_binomial"
    assert over.dispersion_ratio > 2
    fine = fit_glmm(_X(d), rng.poisson(mu).astype(float), _blocks(d), fam).diagnostics
    assert not fine.overdispersed and fine.suggested_family is None
    nbfit = fit_glmm(_X(d), nb, _blocks(d), get_family("negative_binomial"))
    assert not nbfit.diagnostics.overdispersed and 0.8 < nbfit.nb_theta < 3.0


def test_excluded_rows_are_reported_and_left_out() -> None:
    d = _tree(13, n=600)
    rng = d["rng"]
    trials = rng.integers(1, 5, 600).astype(float)
    y = rng.binomial(trials.astype(int), special.expit(d["eta"])).astype(float)
    offset = np.zeros(600)
    trials[[5, 17]] = 0.0
    y[[5, 17]] = 0.0
    offset[[40, 41, 42]] = [np.nan, -np.inf, np.inf]
    fam = get_family("binomial")
    sol = fit_glmm(_X(d), y, _blocks(d), fam, trials=trials, offset=offset)
    diag = sol.diagnostics
    assert diag.zero_trial_rows == 2 and diag.zero_trial_index.tolist() == [5, 17]
    assert diag.nonfinite_offset_rows == 3 and diag.nonfinite_offset_index.tolist() == [40, 41, 42]
    keep = np.setdiff1d(np.arange(600), [5, 17, 40, 41, 42])
    blocks = [RandomBlock(b.group_index[keep], b.n_groups, np.asarray(b.Z)[keep]) for b in _blocks(d)]
    ref = fit_glmm(_X(d)[keep], y[keep], blocks, fam, trials=trials[keep])
    _same(sol, ref)
    assert sol.n_obs == keep.size


def test_singular_fit_and_convergence_record() -> None:
    rng = np.random.default_rng(14)
    n = 500
    g = rng.integers(0, 25, n)
    x = rng.normal(size=n)
    y = (rng.uniform(size=n) < special.expit(0.2 + x)).astype(float)  # no group effect at all
    sol = fit_glmm(np.column_stack([np.ones(n), x]), y, [RandomBlock(g, 25, np.ones(n))],
                   get_family("bernoulli"))
    assert sol.converged and sol.singular and sol.singular_terms == [(0, 0)]
    assert sol.sds[0][0] < 1e-3 and sol.diagnostics.singular
    opt = sol.opt_summary
    assert opt.converged and opt.final_objective == sol.objective
    assert opt.n_evaluations >= opt.n_gradients > 0 and opt.seconds > 0
    np.testing.assert_allclose(opt.final_beta, sol.beta)


# ----------------------------------------------------------------------------- draws
def test_sample_effects_are_centred_on_the_estimates() -> None:
    d = _tree(15)
    y = _bernoulli(d)
    sol = fit_glmm(_X(d), y, _blocks(d), get_family("bernoulli"))
    bd, bds = sol.sample_effects(20_000, np.random.default_rng(150))
    assert bd.shape == (20_000, 3) and bds[1].shape == (20_000, int(d["M"]), 2)
    se = bd.std(axis=0)
    np.testing.assert_allclose(bd.mean(axis=0), sol.beta, atol=5 * se.max() / np.sqrt(20_000))
    np.testing.assert_allclose(bds[0].mean(axis=0), sol.ranef[0], atol=0.02)
    # Given theta, the draws' spread is (R_X'R_X)^{-1}; the Hessian-based SEs add theta's.
    assert np.all(se <= sol.se_beta * 1.05)


# ----------------------------------------------------------------------------- inputs
def test_invalid_inputs_raise_value_errors() -> None:
    d = _tree(16, n=300)
    y = _bernoulli(d)
    X, blocks = _X(d), _blocks(d)
    with pytest.raises(ValueError, match="linear mixed model"):
        fit_glmm(X, y, blocks, get_family("gaussian"))
    with pytest.raises(ValueError, match="0/1"):
        fit_glmm(X, y + 1, blocks, get_family("bernoulli"))
    with pytest.raises(ValueError, match="has no trials"):
        fit_glmm(X, y, blocks, get_family("bernoulli"), trials=np.ones(300))
    with pytest.raises(ValueError, match="non-negative"):
        fit_glmm(X, y, blocks, get_family("bernoulli"), weights=-np.ones(300))
    with pytest.raises(ValueError, match="rank deficient"):
        fit_glmm(np.column_stack([X, X[:, 1]]), y, blocks, get_family("bernoulli"))
    with pytest.raises(ValueError, match="no dispersion"):
        fit_glmm(X, y, blocks, get_family("bernoulli"), nb_theta=2.0)
    with pytest.raises(ValueError, match="one value per row"):
        fit_glmm(X, y, blocks, get_family("poisson"), offset=np.zeros(3))
