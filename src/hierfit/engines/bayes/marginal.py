"""The gaussian model with the group effects (and normal-prior population coefficients) integrated out.

Write ``u = [beta, b]``; the integrated part is ``u_I = m_I + T z`` with ``z ~ N(0, I)``,
``T = blockdiag(diag(s0), I_g ⊗ Λ_1, I_g ⊗ Λ_2, ...)`` (``m_I, s0``: prior means and SDs of
integrated population coefficients; ``Λ_t = diag(sd_t) L_t``). Then
``y ~ N(W μ, σ² I + A A')`` with ``A = W_I T`` and ``μ`` = the mean of ``u`` (sampled betas,
prior means, zeros). With ``M = W'W`` and ``P = I + T' M_II T / σ²``, Woodbury and the matrix
determinant lemma give the exact marginal log-likelihood from the sufficient statistics::

    q   = y'y - 2 μ'W'y + μ'Mμ                      (residual sum of squares at μ)
    c   = T' (W'y - M μ)_I
    ll  = -n/2 log(2π σ²) - ½ log|P| - (q - c'P⁻¹c / σ²) / (2σ²)  (+ ½ Σ log w)

With prior weights ``w`` (residual variances ``σ²/w_i``) the same formula holds for the
statistics ``W'ΩW, W'Ωy, y'Ωy`` of :func:`hierfit.engines.bayes.structure.sufficient_stats`
(the model of ``Ω^½ y`` is unweighted), ``n`` the rows of positive weight and the constant
``½ Σ log w`` their Jacobian; an offset enters as ``y - offset``.

Each evaluation costs O(d² k + d³/3) with d = dim(u_I) (73 for the reference model),
independent of the number of rows. Nested levels give ``M`` the pattern of the tree of groups,
and :mod:`.tree_marginal` computes the same likelihood, gradient and draws in O(groups) from
block statistics (:mod:`.tree`); the dense algebra here stays the reference and the path for
crossed factors (and for small problems, where it is as fast: see :mod:`.cost`). Given a draw of ``(σ, Λ, beta_S)`` the integrated part has
the exact conditional posterior ``z | y ~ N(P⁻¹c/σ², P⁻¹)``; :func:`conditional_draws` draws
from it, so every posterior draw of the variance parameters gets exact draws of the effects.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import linalg

from hierfit.engines.bayes.structure import BayesStructure, SufficientStats
from hierfit.engines.bayes.tree_marginal import TreeMarginalData, tree_conditional_draws


@dataclass(frozen=True, eq=False)
class MarginalData:
    """Constants of the marginal likelihood, restricted and ordered for the integrated block.

    ``blocks`` lists, in ``u_I`` order, ``("beta", size)`` then ``(term_index, size)`` pieces.
    """

    M: np.ndarray  # full W'W (d × d)
    Wty: np.ndarray
    yty: float
    n: int
    index_I: np.ndarray
    index_S: np.ndarray
    m_I: np.ndarray  # prior mean of u_I (zeros for b)
    s0: np.ndarray  # prior SDs of integrated betas
    log_weights: float = 0.0  # ½ Σ log w is added to the log-likelihood (0 without weights)

    @cached_property
    def M_II(self) -> np.ndarray:
        """``M`` restricted to the integrated block (kept: every NUTS step reads it)."""
        return self.M[np.ix_(self.index_I, self.index_I)]

    @cached_property
    def M_SI(self) -> np.ndarray:
        """Rows of the sampled coefficients, columns of the integrated block."""
        return self.M[np.ix_(self.index_S, self.index_I)]


def marginal_data(structure: BayesStructure, stats: SufficientStats) -> MarginalData:
    """Pick the integrated/sampled index sets and prior moments out of the structure."""
    ib = structure.integrated_beta
    priors = [structure.priors.beta[j] for j in ib]
    m_beta = np.array([p.param("mu") for p in priors], dtype=float)
    s0 = np.array([p.param("sigma") for p in priors], dtype=float)
    index_I = structure.integrated_index()
    m_I = np.concatenate([m_beta, np.zeros(len(index_I) - len(ib))])
    return MarginalData(stats.WtW, stats.Wty, stats.yty, stats.n, index_I, structure.sampled_beta, m_I, s0,
                        stats.log_weights)


def _right_T(A: np.ndarray, s0: np.ndarray, lambdas: list[np.ndarray], structure: BayesStructure) -> np.ndarray:
    """``A @ T`` for a batch ``A`` of shape (S, r, d_I) and per-draw ``lambdas[t]`` (S, k, k)."""
    S, r, _ = A.shape
    nb = len(s0)
    parts = [A[:, :, :nb] * s0]
    off = nb
    for t, lam in zip(structure.terms, lambdas):
        blk = A[:, :, off : off + t.size].reshape(S, r, t.n_groups, t.k)
        parts.append((blk @ lam[:, None, :, :]).reshape(S, r, t.size))
        off += t.size
    return np.concatenate(parts, axis=2)


def _T_vec(z: np.ndarray, s0: np.ndarray, lambdas: list[np.ndarray], structure: BayesStructure, transpose: bool) -> np.ndarray:
    """``T z`` (or ``T' z``) for a batch of vectors (S, d_I)."""
    S = z.shape[0]
    nb = len(s0)
    parts = [z[:, :nb] * s0]
    off = nb
    for t, lam in zip(structure.terms, lambdas):
        blk = z[:, off : off + t.size].reshape(S, t.n_groups, t.k)
        mat = lam if transpose else np.swapaxes(lam, 1, 2)
        parts.append((blk @ mat).reshape(S, t.size))
        off += t.size
    return np.concatenate(parts, axis=1)


def _mean_vector(md: MarginalData, beta_S: np.ndarray, size: int) -> np.ndarray:
    S = beta_S.shape[0]
    mu = np.zeros((S, size))
    mu[:, md.index_I] = md.m_I
    mu[:, md.index_S] = beta_S
    return mu


def _pieces(md, structure, sigma, lambdas, beta_S):
    mu = _mean_vector(md, beta_S, structure.size)
    resid = md.Wty - mu @ md.M  # (W'y - Mμ), M symmetric
    q = md.yty - 2 * mu @ md.Wty + np.einsum("si,si->s", mu @ md.M, mu)
    c = _T_vec(resid[:, md.index_I], md.s0, lambdas, structure, transpose=True)
    MT = _right_T(np.broadcast_to(md.M_II, (len(sigma), *md.M_II.shape)), md.s0, lambdas, structure)
    TMT = _right_T(np.swapaxes(MT, 1, 2), md.s0, lambdas, structure)
    P = TMT / (sigma**2)[:, None, None]
    P[:, np.arange(P.shape[1]), np.arange(P.shape[1])] += 1.0
    return q, c, P


def marginal_loglik(md: MarginalData, structure: BayesStructure, sigma, lambdas, beta_S) -> np.ndarray:
    """Marginal log-likelihood for a batch of parameter draws (numpy reference, used in tests)."""
    sigma = np.atleast_1d(np.asarray(sigma, dtype=float))
    q, c, P = _pieces(md, structure, sigma, lambdas, beta_S)
    out = np.empty(len(sigma))
    for s in range(len(sigma)):
        Lc = linalg.cholesky(P[s], lower=True)
        w = linalg.solve_triangular(Lc, c[s], lower=True)
        out[s] = (
            -0.5 * md.n * np.log(2 * np.pi * sigma[s] ** 2)
            - np.log(np.diag(Lc)).sum()
            - (q[s] - w @ w / sigma[s] ** 2) / (2 * sigma[s] ** 2)
            + 0.5 * md.log_weights
        )
    return out


def conditional_draws(
    md: MarginalData | TreeMarginalData,
    structure: BayesStructure,
    sigma: np.ndarray,
    lambdas: list[np.ndarray],
    beta_S: np.ndarray,
    rng: np.random.Generator,
    chunk: int = 128,
) -> np.ndarray:
    """Exact draws of ``u = [beta, b]`` given each draw of ``(σ, Λ_t, beta_S)``.

    Returns the flat coefficient draws (S, d) in :class:`ParameterLayout` order. Block
    statistics (:class:`.tree_marginal.TreeMarginalData`) are drawn on the tree, O(groups) per draw.
    """
    if isinstance(md, TreeMarginalData):
        return tree_conditional_draws(md, structure, sigma, lambdas, beta_S, rng)
    S = len(sigma)
    out = np.empty((S, structure.size))
    for start in range(0, S, chunk):
        sl = slice(start, min(start + chunk, S))
        lam = [l[sl] for l in lambdas]
        _, c, P = _pieces(md, structure, sigma[sl], lam, beta_S[sl])
        Lc = np.linalg.cholesky(P)
        s2 = (sigma[sl] ** 2)[:, None]
        # mean P⁻¹c/σ² and noise Lc⁻ᵀ ε (covariance P⁻¹), via triangular solves per draw
        eps = rng.standard_normal(c.shape)
        z = np.empty_like(c)
        for i in range(Lc.shape[0]):
            w = linalg.solve_triangular(Lc[i], c[i] / s2[i], lower=True)
            z[i] = linalg.solve_triangular(Lc[i], w + eps[i], lower=True, trans="T")
        u = _mean_vector(md, beta_S[sl], structure.size)
        u[:, md.index_I] += _T_vec(z, md.s0, lam, structure, transpose=False)
        out[sl] = u
    return out
