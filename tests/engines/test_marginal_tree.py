"""The marginal gaussian likelihood on the tree of nested groups (:mod:`hierfit.engines.bayes.tree_marginal`):
block statistics, value and gradient equal to the dense reference, exact conditional draws, the cost
model's choices, and a 1,000 × 20-group tree evaluated fast in bounded memory."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest

import hierfit
from hierfit.design import build_design
from hierfit.engines.bayes.cost import MAX_MARGINAL_SIZE, ProblemSize, choose_likelihood, predicted_seconds
from hierfit.engines.bayes.marginal import conditional_draws, marginal_data
from hierfit.engines.bayes.pt_marginal import dense_value_and_grad, value_and_grad
from hierfit.engines.bayes.pymc_engine import choose_likelihood as engine_choice
from hierfit.engines.bayes.pymc_engine import initial_values
from hierfit.engines.bayes.structure import expanded_columns, make_structure, net_outcome, sufficient_stats
from hierfit.engines.bayes.tree import tree_layout, tree_stats
from hierfit.engines.bayes.tree_marginal import TreeMarginalData, ridge_solution, tree_marginal_data
from hierfit.simulation import LevelSim

SIM = hierfit.simulate(n_markets=5, n_submarkets=4, rows_per_submarket=6, unbalanced=True, seed=7)


def _data() -> object:
    df = SIM.data.copy()
    rng = np.random.default_rng(3)
    df["w"] = rng.uniform(0.3, 2.0, len(df))
    df.loc[df.index[:3], "w"] = 0.0  # rows of weight 0 carry no likelihood
    df["off"] = rng.normal(0, 0.2, len(df))
    return df


DATA = _data()
THREE = hierfit.simulate(levels=(LevelSim("region", 3, 0.5, {"x1": 0.3}, 0.2, "Region"), LevelSim("market", 3, 0.4),
                                 LevelSim("store", 3, 0.3, {"x2": 0.2}, 0.1)), rows_per_submarket=4, unbalanced=True, seed=2)

CASES = {
    "one level": ("y ~ x1 + (1 | market)", {}, SIM.data),
    "two nested levels, correlated slopes": (SIM.formula, {}, SIM.data),
    "|| and two terms on one level": ("y ~ x1 + x2 + (1 + x1 || market) + (1 | market:submarket) + (0 + x2 | market:submarket)",
                                      {}, SIM.data),
    "weights and offset": ("y ~ x1 + x2 + offset(off) + (1 + x1 | market) + (1 | market:submarket)", {"weights": "w"}, DATA),
    "integrated and sampled betas": (SIM.formula, {"priors": {"b:x2": hierfit.priors.student_t(4, 0, 2)}}, SIM.data),
    "three levels, slopes at the leaves": (THREE.formula, {}, THREE.data),
}


def _problem(name: str):
    formula, kw, data = CASES[name]
    design = build_design(hierfit.make_spec(formula, **kw), data)
    structure = make_structure(design, marginal=True)
    layout = tree_layout(design, structure)
    assert layout is not None
    tree = tree_marginal_data(structure, tree_stats(design, layout, chunk=17))  # several chunks
    dense = marginal_data(structure, sufficient_stats(design))
    return design, structure, tree, dense


def _params(structure, seed: int):
    rng = np.random.default_rng(seed)
    lambdas = []
    for t in structure.terms:
        if t.correlated:
            lam = np.tril(rng.normal(0, 0.4, (t.k, t.k)))
            lam[np.diag_indices(t.k)] = rng.uniform(0.2, 1.2, t.k)
        else:
            lam = np.diag(rng.uniform(0.1, 1.5, t.k))
        lambdas.append(lam)
    return float(rng.uniform(0.5, 1.5)), lambdas, rng.normal(0, 1, len(structure.sampled_beta))


@pytest.mark.parametrize("name", sorted(CASES))
def test_block_statistics_are_the_dense_statistics(name):
    _, _, tree, dense = _problem(name)
    st = tree.stats
    scale = np.abs(dense.M).max()
    assert np.allclose(st.dense(), dense.M, rtol=0, atol=1e-12 * scale)
    assert np.allclose(st.dense_Wty(), dense.Wty, rtol=0, atol=1e-12 * np.abs(dense.Wty).max())
    assert st.yty == pytest.approx(dense.yty, rel=1e-13) and st.n == dense.n
    assert st.log_weights == pytest.approx(dense.log_weights, rel=1e-13, abs=1e-13)


@pytest.mark.parametrize("name", sorted(CASES))
def test_tree_value_and_gradient_equal_the_dense_reference(name):
    _, structure, tree, dense = _problem(name)
    for seed in range(3):
        sigma, lambdas, beta_S = _params(structure, seed)
        ll, g_sigma, g_lams, g_beta = value_and_grad(tree, structure, sigma, lambdas, beta_S)
        ref = dense_value_and_grad(dense, structure, sigma, lambdas, beta_S)
        assert ll == pytest.approx(ref[0], rel=1e-9)
        assert g_sigma == pytest.approx(ref[1], rel=1e-9)
        for got, want in zip(g_lams, ref[2]):
            assert np.allclose(got, want, rtol=1e-9, atol=1e-9 * np.abs(want).max())
        assert np.allclose(g_beta, ref[3], rtol=1e-9, atol=1e-12)
        assert len(g_beta) == len(structure.sampled_beta)


def test_tree_gradient_matches_central_differences():
    _, structure, tree, _ = _problem("three levels, slopes at the leaves")
    sigma, lambdas, beta_S = _params(structure, 11)
    value = lambda s, lams: value_and_grad(tree, structure, s, lams, beta_S)[0]
    _, g_sigma, g_lams, _ = value_and_grad(tree, structure, sigma, lambdas, beta_S)
    h = 1e-6
    assert g_sigma == pytest.approx((value(sigma + h, lambdas) - value(sigma - h, lambdas)) / (2 * h), rel=1e-6)
    for t, lam in enumerate(lambdas):
        for idx in zip(*np.tril_indices(lam.shape[0])):
            up, down = [l.copy() for l in lambdas], [l.copy() for l in lambdas]
            up[t][idx] += h
            down[t][idx] -= h
            fd = (value(sigma, up) - value(sigma, down)) / (2 * h)
            assert g_lams[t][idx] == pytest.approx(fd, rel=1e-5, abs=1e-5), (t, idx)


def test_points_that_are_not_positive_definite_are_rejected():
    _, structure, tree, _ = _problem("one level")
    sigma, lambdas, beta_S = _params(structure, 0)
    assert value_and_grad(tree, structure, 0.0, lambdas, beta_S)[0] == -np.inf
    assert value_and_grad(tree, structure, np.nan, lambdas, beta_S)[0] == -np.inf
    assert value_and_grad(tree, structure, sigma, [np.full_like(l, np.nan) for l in lambdas], beta_S)[0] == -np.inf


def test_conditional_draws_have_the_exact_posterior_moments():
    design, structure, tree, dense = _problem("integrated and sampled betas")
    sigma, lambdas, beta_S = _params(structure, 5)
    S = 6000
    args = (np.full(S, sigma), [np.broadcast_to(l, (S, *l.shape)) for l in lambdas], np.tile(beta_S, (S, 1)))
    draws = conditional_draws(tree, structure, *args, np.random.default_rng(0))
    # the exact gaussian posterior of u_I by dense conditioning on the rows
    W = expanded_columns(design).toarray()
    iI, iS = dense.index_I, dense.index_S
    prior_sd = np.concatenate([dense.s0, np.zeros(structure.size - structure.p)])
    cov = np.diag(prior_sd[: len(dense.s0)] ** 2)
    blocks = [cov] + [np.kron(np.eye(t.n_groups), lam @ lam.T) for t, lam in zip(structure.terms, lambdas)]
    from scipy.linalg import block_diag

    prior_cov = block_diag(*blocks)
    r = net_outcome(design) - W[:, iI] @ dense.m_I - W[:, iS] @ beta_S
    post_cov = np.linalg.inv(np.linalg.inv(prior_cov) + W[:, iI].T @ W[:, iI] / sigma**2)
    post_mean = dense.m_I + post_cov @ W[:, iI].T @ r / sigma**2
    got = draws[:, iI]
    se = np.sqrt(np.diag(post_cov) / S)
    assert np.all(np.abs(got.mean(axis=0) - post_mean) < 4.5 * se)
    assert np.allclose(np.cov(got.T), post_cov, atol=0.06 * np.sqrt(np.outer(np.diag(post_cov), np.diag(post_cov))).max())
    assert np.allclose(got.std(axis=0), np.sqrt(np.diag(post_cov)), rtol=0.05)
    assert np.all(draws[:, iS] == beta_S)
    # the dense path draws from the same distribution
    ref = conditional_draws(dense, structure, *args, np.random.default_rng(1))[:, iI]
    assert np.all(np.abs(ref.mean(axis=0) - got.mean(axis=0)) < 6.5 * se)


def test_starting_point_equals_the_dense_least_squares():
    design, structure, tree, dense = _problem("two nested levels, correlated slopes")
    u, rss, rank = ridge_solution(tree)
    d = structure.size
    u0 = np.linalg.lstsq(dense.M + 1e-8 * np.trace(dense.M) / d * np.eye(d), dense.Wty, rcond=None)[0]
    assert rss == pytest.approx(dense.yty - 2 * u0 @ dense.Wty + u0 @ dense.M @ u0, rel=1e-8)
    assert rank == np.linalg.matrix_rank(dense.M)
    fitted = expanded_columns(design).toarray()
    assert np.allclose(fitted @ u, fitted @ u0, atol=1e-6)
    a, b = initial_values(structure, tree, "marginal", 2, 0), initial_values(structure, dense, "marginal", 2, 0)
    assert a[0].keys() == b[0].keys()
    assert all(v == pytest.approx(b[i][k], rel=1e-6) for i in range(2) for k, v in a[i].items())


def test_crossed_factors_keep_the_dense_algebra():
    df = SIM.data.copy()
    df["season"] = np.tile(["s1", "s2", "s3"], len(df) // 3 + 1)[: len(df)]
    design = build_design(hierfit.make_spec("y ~ x1 + (1 | market) + (1 | season)"), df)
    structure = make_structure(design, marginal=True)
    assert tree_layout(design, structure) is None
    choice = engine_choice(structure, "auto", design.n, None)
    assert (choice.likelihood, choice.algebra) == ("marginal", "dense")
    nested = build_design(hierfit.make_spec(SIM.formula), SIM.data)
    s2 = make_structure(nested, marginal=True)
    assert engine_choice(s2, "marginal", nested.n, tree_layout(nested, s2)).algebra == "tree"
    bern = hierfit.simulate(n_markets=3, n_submarkets=2, rows_per_submarket=5, family="bernoulli", seed=1)
    bd = build_design(hierfit.make_spec(bern.formula, family="bernoulli"), bern.data)
    assert engine_choice(make_structure(bd, marginal=True), "auto", bd.n).likelihood == "rows"


def test_cost_model_choices():
    radon = ProblemSize(rows=919, population=2, integrated_population=2, terms=((85, 1),), levels=((85, 1),))
    assert (choose_likelihood(radon).likelihood, choose_likelihood(radon).algebra) == ("marginal", "tree")
    tiny = ProblemSize(rows=200, population=2, integrated_population=2, terms=((4, 1),), levels=((4, 1),))
    assert choose_likelihood(tiny).algebra == "dense"  # a handful of coefficients: no tree overhead
    big = ProblemSize(rows=500_000, population=3, integrated_population=3, terms=((1000, 2), (20_000, 1)),
                      levels=((1000, 2), (20_000, 1)))
    choice = choose_likelihood(big)
    assert (choice.likelihood, choice.algebra) == ("marginal", "tree")
    assert "marginal/dense" not in choice.seconds and "suffstats" not in choice.seconds  # 22,003 coefficients
    assert choice.seconds["marginal/tree"] < 300
    crossed = ProblemSize(rows=20_000, population=2, integrated_population=2, terms=((3000, 1), (40, 1)), levels=None)
    assert crossed.integrated > MAX_MARGINAL_SIZE and choose_likelihood(crossed).likelihood == "rows"
    many_rows = ProblemSize(rows=50_000_000, population=2, integrated_population=2, terms=((2000, 1), (40, 1)), levels=None)
    assert choose_likelihood(many_rows).likelihood == "suffstats"
    assert choose_likelihood(crossed, "marginal").algebra == "dense"  # forced: runs as asked
    assert choose_likelihood(big, "rows").likelihood == "rows"
    assert predicted_seconds(radon)["marginal/tree"] < predicted_seconds(radon)["rows"]


def test_a_1000_by_20_tree_evaluates_fast_in_bounded_memory():
    sim = hierfit.simulate(n_markets=1000, n_submarkets=20, rows_per_submarket=2, seed=3)
    design = build_design(hierfit.make_spec(sim.formula), sim.data)
    structure = make_structure(design, marginal=True)
    assert structure.size - structure.p == 22_000
    tracemalloc.start()
    layout = tree_layout(design, structure)
    assert layout is not None
    md = tree_marginal_data(structure, tree_stats(design, layout))
    lambdas = [np.array([[0.8, 0.0], [0.2, 0.5]]), np.array([[0.4]])]
    value_and_grad(md, structure, 1.0, lambdas, np.zeros(0))  # caches
    t0 = time.perf_counter()
    ll, g_sigma, g_lams, _ = value_and_grad(md, structure, 1.0, lambdas, np.zeros(0))
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert isinstance(md, TreeMarginalData) and np.isfinite(ll) and np.isfinite(g_sigma)
    assert all(np.isfinite(g).all() for g in g_lams)
    assert elapsed < 0.25, elapsed  # ~2 ms measured; a dense d_I = 22,003 factorisation takes minutes
    assert peak < 100e6, peak  # a dense 22,003² matrix alone would be 3.9 GB
