"""Adaptive Gauss-Hermite quadrature (glmer's nAGQ > 1) for one scalar random-effects term.

With a single scalar term the groups are conditionally independent, so the marginal
likelihood is a product of one-dimensional integrals.  As lme4's ``glmerAGQ`` each integral
is centred at the conditional mode ``u_j`` and scaled by ``sd_j = 1 / L_jj`` (``L`` the PIRLS
factor), with the standard-normal Gauss-Hermite rule ``(z_k, w_k)``::

    -2 log L = sum_j [ devc_j(u_j) + log L_jj^2 - 2 log sum_k w_k exp(-(devc_j(u_j + z_k sd_j)
               - devc_j(u_j)) / 2 + z_k^2 / 2) ]

with ``devc_j(u) = u^2 + sum_{i in j} dev_i``.  Unlike lme4 (which sums deviance residuals,
issue #161) ``dev_i = -2 w_i log p(y_i)`` here, so the value is on the absolute scale of the
Laplace fit; for ``n_agq = 1`` it is the Laplace objective exactly.
"""

from __future__ import annotations

import numpy as np

from ._glmm_kernels import linpred
from ._glmm_pirls import Mode, Problem

__all__ = ["agq_objective", "check_agq", "gh_rule"]


def gh_rule(n_agq: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights (summing to 1) of the ``n_agq``-point rule for the standard normal."""
    z, w = np.polynomial.hermite_e.hermegauss(int(n_agq))
    return z, w / w.sum()


def check_agq(prob: Problem, n_agq: int) -> None:
    """Raise ``ValueError`` unless the model has exactly one scalar random-effects term."""
    if n_agq < 1 or n_agq > 25:
        raise ValueError(f"n_agq must be between 1 and 25 (glmer's range), got {n_agq}")
    if n_agq == 1:
        return
    if prob.spec.size != 1 or len(prob.plan.factors) != 1:
        raise ValueError(
            f"adaptive quadrature (n_agq={n_agq}) needs exactly one scalar random-effects "
            f"term (one grouping factor, intercept or one slope, as glmer); this model has "
            f"{len(prob.spec.block_k)} term(s) with {prob.spec.size} covariance parameter(s)")


def agq_objective(prob: Problem, mode: Mode, Ts: list[np.ndarray], xb: np.ndarray,
                  disp: float | None, z: np.ndarray, w: np.ndarray) -> float:
    """``-2 log L`` by adaptive Gauss-Hermite quadrature at a converged mode."""
    rl = prob.rl
    g = rl.gidx[0]
    m = int(rl.lvl_m[0])
    Ldiag = mode.fz.L[0][:, 0, 0]
    sd = 1.0 / Ldiag
    u = mode.u
    dev0 = prob.rows.row_deviance(mode.eta, disp)
    devc0 = u * u + np.bincount(g, weights=dev0, minlength=m)
    log_terms = np.full((z.size, m), -np.inf)
    for k, (zk, wk) in enumerate(zip(z, w)):
        if zk == 0.0:
            log_terms[k] = np.log(wk)
            continue
        uk = u + zk * sd
        eta_k = linpred(rl, xb, prob.lam(Ts, uk), prob.use_numba)
        devk = uk * uk + np.bincount(g, weights=prob.rows.row_deviance(eta_k, disp), minlength=m)
        log_terms[k] = np.log(wk) - 0.5 * (devk - devc0) + 0.5 * zk * zk
    # log-sum-exp over nodes: the product of 'mult' over groups in lme4 can underflow
    top = np.max(log_terms, axis=0)
    log_mult = top + np.log(np.sum(np.exp(log_terms - top), axis=0))
    return float(np.sum(devc0) + mode.logdet - 2.0 * np.sum(log_mult))
