"""Each member's linear part given its network: the exact conditional MAP, and posterior draws.

Stochastic gradients leave the linear parameters jittering around their optimum (a group's
deviation sees only the few of its rows in each mini-batch). Given the network's output
``g``, though, the linear part is a penalised least-squares problem (gaussian) or a penalised
GLM (a few Newton steps), so :func:`polish` solves it exactly: the reported group effects are
the mixed model's conditional modes with the learned SDs and the network as an offset.

Given a member's network, its linear parameters ``theta = (beta, b)`` have the conditional
posterior of a (generalised) linear mixed model with known SDs:
``N(theta_m, A⁻¹)``, ``A = Rᵀ W R + D`` where ``R`` holds the linear columns, ``W`` the
likelihood weights (``1/sigma²``, or the GLM weights at the member's fitted mean) and ``D``
the block-diagonal prior precision ``Sigma_t⁻¹`` of the deviations (flat on ``beta``). Unlike
a bootstrap over rows, this includes the between-group part of the uncertainty (a market's
total is known only as well as its few submarkets allow; a varying slope's national value
only as well as the number of markets allows), as a mixed model's conditional variances do.

Draws use perturbation sampling, ``eps = A⁻¹ (Rᵀ W^½ z₁ + D^½ z₂)`` with standard normal
``z``, whose covariance is exactly ``A⁻¹``; one sparse LU of ``A`` serves all draws.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.sparse import linalg as splinalg

from hierfit.engines.layout import ParameterLayout
from hierfit.model import Family

MAX_ETA_STEP = 3.0  # largest change of any row's linear predictor in one Newton step


def likelihood_weights(eta: np.ndarray, sigma: float | None, family: Family, trials: np.ndarray | None = None,
                       prior: np.ndarray | None = None) -> np.ndarray:
    """Per-row Fisher weights on the link scale at the member's fitted predictor (``eta``
    including any offset), times the prior weights; ``sigma`` is the family's dispersion
    (gaussian SD or negative-binomial size)."""
    w = family.fisher_weights(eta, trials, sigma)
    if prior is not None:
        w = w * prior
    # a floor keeps the posterior precision positive where a mean is pinned at 0 or 1
    return w if family.normal_errors else np.clip(w, 1e-6, None)


def _prior_blocks(layout: ParameterLayout, covs: list[np.ndarray], scale: float) -> tuple[sparse.csc_matrix, sparse.csr_matrix]:
    """Prior precision ``D`` (tiny ridge on beta) and a square root ``D^½`` (none on beta)."""
    p = len(layout.x_names)
    prec_blocks = [sparse.identity(p) * 1e-9 * max(scale, 1e-12)]
    half_blocks = [sparse.csr_matrix((p, p))]
    for term, Sigma in zip(layout.terms, covs):
        k = len(term.coefficients)
        L = np.linalg.cholesky(Sigma + 1e-12 * np.eye(k))
        K = np.linalg.inv(L).T  # K Kᵀ = Sigma⁻¹
        prec_blocks.append(sparse.kron(sparse.identity(term.n_groups), sparse.csr_matrix(K @ K.T)))
        half_blocks.append(sparse.kron(sparse.identity(term.n_groups), sparse.csr_matrix(K)))
    return sparse.block_diag(prec_blocks, format="csc"), sparse.block_diag(half_blocks, format="csr")


def polish(
    R: sparse.csr_matrix,
    layout: ParameterLayout,
    y: np.ndarray,
    offset: np.ndarray,
    theta: np.ndarray,
    covs: list[np.ndarray],
    sigma: float | None,
    family: Family,
    trials: np.ndarray | None = None,
    prior: np.ndarray | None = None,
    max_iter: int = 20,
) -> np.ndarray:
    """The conditional MAP of ``theta`` given ``offset`` (the network output plus the design's
    offset), the SDs and the dispersion ``sigma``, with binomial ``trials`` and prior weights.

    Gaussian: one penalised least-squares solve. Otherwise damped Newton steps on the
    penalised log-likelihood (the family's score and Fisher weights).
    """
    p = len(layout.x_names)
    for _ in range(1 if family.normal_errors else max_iter):
        eta = np.asarray(R @ theta).ravel() + offset
        w = likelihood_weights(eta, sigma, family, trials, prior)
        RtWR = sparse.csc_matrix(R.T @ sparse.diags(w) @ R)
        D, _ = _prior_blocks(layout, covs, float(RtWR.diagonal()[:p].mean()) if p else 1.0)
        A = (RtWR + D).tocsc()
        if family.normal_errors:
            return np.asarray(splinalg.spsolve(A, R.T @ (w * (y - offset)))).ravel()
        score = family.score(y, eta, trials, sigma)
        if prior is not None:
            score = score * prior
        step = np.asarray(splinalg.spsolve(A, R.T @ score - D @ theta)).ravel()
        # damped Newton: from a poor start a full step can overshoot exp() on the log link
        step *= min(1.0, MAX_ETA_STEP / max(float(np.abs(R @ step).max()), 1e-300))
        theta = theta + step
        if np.max(np.abs(step)) < 1e-8:
            break
    return theta


def posterior_draws(
    R: sparse.csr_matrix,
    layout: ParameterLayout,
    theta: np.ndarray,
    weights: np.ndarray,
    covs: list[np.ndarray],
    n_draws: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """``n_draws`` draws ``(n_draws, P)`` of one member's linear parameters around ``theta``.

    ``covs[t]`` is the member's ``Sigma_t`` (k × k, data units).

    Examples
    --------
    >>> import numpy as np, hierfit
    >>> sim = hierfit.simulate(n_markets=3, n_submarkets=2, rows_per_submarket=20, seed=0)
    >>> d = hierfit.build_design(hierfit.make_spec("y ~ x1 + (1 | market)"), sim.data)
    >>> lay = ParameterLayout.from_design(d)
    >>> R = lay.row_matrix(d)
    >>> draws = posterior_draws(R, lay, np.zeros(lay.size), np.ones(d.n), [np.eye(1)], 4, np.random.default_rng(0))
    >>> draws.shape
    (4, 5)
    """
    p = len(layout.x_names)
    RtWR = sparse.csc_matrix(R.T @ sparse.diags(weights) @ R)
    D, D_half = _prior_blocks(layout, covs, float(RtWR.diagonal()[:p].mean()) if p else 1.0)
    lu = splinalg.splu((RtWR + D).tocsc())
    out = np.empty((n_draws, layout.size))
    chunk = max(1, 4_000_000 // max(R.shape[0], 1))  # bound the n × draws noise matrix
    for start in range(0, n_draws, chunk):
        j = min(chunk, n_draws - start)
        z1 = rng.standard_normal((R.shape[0], j)) * np.sqrt(weights)[:, None]
        z2 = rng.standard_normal((layout.size, j))
        rhs = np.asarray(R.T @ z1) + np.asarray(D_half @ z2)
        out[start : start + j] = (theta[:, None] + lu.solve(rhs)).T
    return out
