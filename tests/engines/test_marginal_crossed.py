"""Crossed factors on the tree algebra (:mod:`hierfit.engines.bayes.crossed`): the nested chain eliminated
leaves first, the crossed terms in the dense border. Value, gradient, draws and starting point equal the dense
reference (:mod:`hierfit.engines.bayes.pt_marginal`, itself checked against the plain model elsewhere)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.linalg import block_diag

import hierfit
from hierfit.design import build_design
from hierfit.engines.bayes.cost import choose_likelihood, problem_size
from hierfit.engines.bayes.crossed import CrossedTreeLayout, crossed_tree_layout, layout_stats
from hierfit.engines.bayes.marginal import conditional_draws, marginal_data
from hierfit.engines.bayes.pt_marginal import dense_value_and_grad, value_and_grad
from hierfit.engines.bayes.pymc_engine import initial_values
from hierfit.engines.bayes.structure import expanded_columns, make_structure, net_outcome, sufficient_stats
from hierfit.engines.bayes.tree import tree_layout
from hierfit.engines.bayes.tree_marginal import ridge_solution, tree_marginal_data

SIM = hierfit.simulate(n_markets=5, n_submarkets=4, rows_per_submarket=6, unbalanced=True, seed=7)


def _data():
    df = SIM.data.copy()
    rng = np.random.default_rng(4)
    df["season"] = rng.choice(["s1", "s2", "s3", "s4"], len(df))
    df["channel"] = rng.choice(["web", "shop", "phone"], len(df))
    df["w"] = rng.uniform(0.3, 2.0, len(df))
    df["off"] = rng.normal(0, 0.2, len(df))
    return df


DATA = _data()

CASES = {
    "two crossed intercepts": ("y ~ x1 + (1 | market) + (1 | season)", {}),
    "tree and a crossed intercept": ("y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket) + (1 | season)", {}),
    "crossed correlated slope": ("y ~ x1 + (1 | market:submarket) + (1 + x1 | season)", {}),
    "two crossed factors, weights and offset": ("y ~ x1 + offset(off) + (1 | market/submarket) + (1 | season) + (0 + x1 | channel)",
                                                {"weights": "w"}),
    "a sampled beta": ("y ~ x1 + x2 + (1 | market) + (1 | season)", {"priors": {"b:x2": hierfit.priors.student_t(4, 0, 2)}}),
}


def _problem(name: str):
    formula, kw = CASES[name]
    design = build_design(hierfit.make_spec(formula, **kw), DATA)
    structure = make_structure(design, marginal=True)
    assert tree_layout(design, structure) is None  # the factors cross
    layout = crossed_tree_layout(design, structure)
    assert isinstance(layout, CrossedTreeLayout)
    tree = tree_marginal_data(structure, layout_stats(design, layout, chunk=23))  # several chunks
    dense = marginal_data(structure, sufficient_stats(design))
    return design, structure, tree, dense


def _params(structure, seed: int):
    rng = np.random.default_rng(seed)
    lambdas = []
    for t in structure.terms:
        lam = np.diag(rng.uniform(0.2, 1.3, t.k))
        if t.correlated:
            lam[np.tril_indices(t.k, -1)] = rng.normal(0, 0.4, t.k * (t.k - 1) // 2)
        lambdas.append(lam)
    return float(rng.uniform(0.5, 1.5)), lambdas, rng.normal(0, 1, len(structure.sampled_beta))


def test_the_chain_runs_through_the_finest_factor():
    design = build_design(hierfit.make_spec(CASES["two crossed factors, weights and offset"][0], weights="w"), DATA)
    layout = crossed_tree_layout(design, make_structure(design, marginal=True))
    assert [lv.name for lv in layout.levels] == ["market", "submarket"]
    assert [(design.terms[bt.term].level, bt.n_groups, bt.k) for bt in layout.border_terms] == [("season", 4, 1), ("channel", 3, 1)]
    nested = build_design(hierfit.make_spec(SIM.formula), SIM.data)
    assert crossed_tree_layout(nested, make_structure(nested, marginal=True)) is None  # all nest: the plain tree


@pytest.mark.parametrize("name", sorted(CASES))
def test_value_and_gradient_equal_the_dense_reference(name):
    _, structure, tree, dense = _problem(name)
    for seed in range(3):
        sigma, lambdas, beta_S = _params(structure, seed)
        ll, g_sigma, g_lams, g_beta = value_and_grad(tree, structure, sigma, lambdas, beta_S)
        ref = dense_value_and_grad(dense, structure, sigma, lambdas, beta_S)
        assert ll == pytest.approx(ref[0], rel=1e-9)
        assert g_sigma == pytest.approx(ref[1], rel=1e-9)
        for got, want in zip(g_lams, ref[2]):
            assert np.allclose(got, want, rtol=1e-8, atol=1e-9 * np.abs(want).max())
        assert np.allclose(g_beta, ref[3], rtol=1e-9, atol=1e-12)


def test_crossed_gradient_matches_central_differences():
    _, structure, tree, _ = _problem("crossed correlated slope")
    sigma, lambdas, beta_S = _params(structure, 11)
    value = lambda lams: value_and_grad(tree, structure, sigma, lams, beta_S)[0]
    g_lams = value_and_grad(tree, structure, sigma, lambdas, beta_S)[2]
    h = 1e-6
    t = 1  # the crossed (1 + x1 | season) term
    for idx in zip(*np.tril_indices(2)):
        up, down = [l.copy() for l in lambdas], [l.copy() for l in lambdas]
        up[t][idx] += h
        down[t][idx] -= h
        assert g_lams[t][idx] == pytest.approx((value(up) - value(down)) / (2 * h), rel=1e-5, abs=1e-5), idx


def test_conditional_draws_have_the_exact_posterior_moments():
    design, structure, tree, dense = _problem("a sampled beta")
    sigma, lambdas, beta_S = _params(structure, 5)
    S = 6000
    args = (np.full(S, sigma), [np.broadcast_to(l, (S, *l.shape)) for l in lambdas], np.tile(beta_S, (S, 1)))
    draws = conditional_draws(tree, structure, *args, np.random.default_rng(0))
    W = expanded_columns(design).toarray()
    iI, iS = dense.index_I, dense.index_S
    prior_cov = block_diag(np.diag(dense.s0 ** 2), *[np.kron(np.eye(t.n_groups), lam @ lam.T) for t, lam in zip(structure.terms, lambdas)])
    r = net_outcome(design) - W[:, iI] @ np.concatenate([dense.m_I, np.zeros(len(iI) - len(dense.m_I))]) - W[:, iS] @ beta_S
    post_cov = np.linalg.inv(np.linalg.inv(prior_cov) + W[:, iI].T @ W[:, iI] / sigma**2)
    post_mean = np.concatenate([dense.m_I, np.zeros(len(iI) - len(dense.m_I))]) + post_cov @ W[:, iI].T @ r / sigma**2
    got = draws[:, iI]
    se = np.sqrt(np.diag(post_cov) / S)
    assert np.all(np.abs(got.mean(axis=0) - post_mean) < 4.5 * se)
    assert np.allclose(got.std(axis=0), np.sqrt(np.diag(post_cov)), rtol=0.05)
    assert np.all(draws[:, iS] == beta_S)


def test_starting_point_equals_the_dense_least_squares():
    design, structure, tree, dense = _problem("tree and a crossed intercept")
    u, rss, rank = ridge_solution(tree)
    d = structure.size
    u0 = np.linalg.lstsq(dense.M + 1e-8 * np.trace(dense.M) / d * np.eye(d), dense.Wty, rcond=None)[0]
    assert rss == pytest.approx(dense.yty - 2 * u0 @ dense.Wty + u0 @ dense.M @ u0, rel=1e-8)
    assert rank == np.linalg.matrix_rank(dense.M)
    fitted = expanded_columns(design).toarray()  # u in the structure's order, crossed groups included
    assert np.allclose(fitted @ u, fitted @ u0, atol=1e-6)
    a, b = initial_values(structure, tree, "marginal", 2, 0), initial_values(structure, dense, "marginal", 2, 0)
    assert all(v == pytest.approx(b[i][k], rel=1e-6) for i in range(2) for k, v in a[i].items())


def test_the_cost_model_prices_the_crossed_border():
    design, structure, tree, _ = _problem("tree and a crossed intercept")
    size = problem_size(structure, design.n, tree.layout)
    assert size.levels == ((5, 2), (20, 1)) and size.border == 3 + 4  # intercept, x1, x2 and four seasons
    choice = choose_likelihood(size)
    assert "marginal/tree" in choice.seconds
    assert choose_likelihood(size, "marginal").algebra == "tree"


def test_pymc_samples_crossed_factors_on_the_tree():
    formula = "y ~ x1 + (1 | market/submarket) + (1 | season)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 4 seasons (few groups) and short chains (ESS): not what this checks
        fit = hierfit.fit(formula, DATA, engine="pymc", likelihood="marginal", chains=2, tune=200, draws=200, seed=3)
        reml = hierfit.fit(formula, DATA, engine="mixed").fixed_effects().set_index("term")
    assert fit.engine_fit.info["marginal_algebra"] == "tree" and "(tree algebra)" in str(fit.summary())
    assert not any(d.check == "divergences" for d in fit.diagnostics)
    # the fixed effects agree with the REML fit within their posterior uncertainty (flat-ish priors, 70 rows)
    post = fit.fixed_effects().set_index("term")
    assert (abs(post["estimate"] - reml["estimate"]) < 2.5 * post["std_error"]).all()
    assert fit.group_effects(kind="deviation").query("level == 'season'").shape[0] == 4
