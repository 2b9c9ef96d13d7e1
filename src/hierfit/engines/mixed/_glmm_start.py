"""Starting values of a GLMM fit: joint PIRLS at the identity, then PQL rounds for theta.

glmer starts the second stage from its nAGQ = 0 fit.  Here the starting theta comes from
penalised quasi-likelihood instead, which costs no extra passes over the rows per theta
tried: at the joint PIRLS modes the working model ``z = X beta + Z b + e``, ``e ~ N(0,
sigma^2 W^{-1})`` is a weighted linear mixed model whose sufficient statistics are exactly
the weighted system of one PIRLS step, so the LMM core's profiled criterion and exact
gradient (:mod:`._gradient`, :mod:`._optim`) optimise theta in O(groups) per evaluation.
Two rounds (re-weighting at the new modes) bring theta close to the Laplace optimum
(PQL's known downward bias for binary data is what the Laplace stage then removes), so
the outer quasi-Newton iteration starts with small steps and cheap warm-started PIRLS.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla

from ._factor import System
from ._glmm_kernels import linpred
from ._glmm_pirls import Problem, full_system, pirls_joint
from ._glmm_setup import FitSetup
from ._gradient import criterion_and_gradient
from ._optim import minimize_theta
from ._theta import profiled_criterion

__all__ = ["start_values"]

#: PQL re-weighting rounds (a second one changed no evaluation count in the benchmarks).
PQL_ROUNDS = 1
#: Relative change of the penalised deviance that ends a joint PIRLS of the start.
START_TOL = 1e-9
#: Floor of a starting diagonal theta: 0 is a stationary point the outer search cannot leave.
THETA_FLOOR = 0.05


def moment_sums(prob: Problem, beta_t: np.ndarray, Ts: list[np.ndarray], u: np.ndarray) -> np.ndarray:
    """``[sum w ((y - mu)^2 - mu), sum w mu^2]`` at the modes: the sums of the NB size's moment
    estimate (one pass; a sharded problem sums them over its shards)."""
    if prob.shards is not None:
        return prob.shards.moment_sums(Ts, beta_t, u)
    mu = prob.rows.family.link.inverse(linpred(prob.rl, prob.xbeta(beta_t), prob.lam(Ts, u), prob.use_numba))
    w, y = prob.rows.pw, prob.rows.y
    return np.array([float(np.sum(w * ((y - mu) ** 2 - mu))), float(np.sum(w * mu ** 2))])


def _moment_size(sums: np.ndarray) -> float:
    """Moment estimate of the NB size from fitted means (Var = mu + mu^2 / size)."""
    excess, wmu2 = float(sums[0]), float(sums[1])
    size = wmu2 / excess if excess > 0 else 1e4
    return float(np.clip(size, 1e-2, 1e4))


def _pql_theta(fit: FitSetup, theta: np.ndarray, beta: np.ndarray, u: np.ndarray,
               disp: float | None) -> np.ndarray:
    """Theta of the weighted working LMM at the modes (ML, scale profiled, then absolute)."""
    prob = fit.prob
    raw = full_system(prob, prob.factor_T(theta), disp, beta, u, pad=False)
    sysm = System(prob.plan, prob.sysf.layout, raw)
    n_eff, p, spec = fit.n_obs, prob.p, prob.spec

    def crit(th: np.ndarray) -> float:
        try:
            return profiled_criterion(sysm.factorize(spec.factor_T(th, prob.plan)), n_eff, p, False)
        except np.linalg.LinAlgError:
            return np.inf

    def crit_grad(th: np.ndarray) -> tuple[float, np.ndarray]:
        try:
            return criterion_and_gradient(sysm, spec, th, n_eff, p, False)
        except np.linalg.LinAlgError:
            return np.inf, np.zeros(spec.size)

    try:
        opt = minimize_theta(crit, theta, spec.lower, grad=crit_grad)
        fz = sysm.factorize(spec.factor_T(opt.theta, prob.plan))
    except (np.linalg.LinAlgError, ValueError, FloatingPointError):
        # e.g. separated data: the working model is degenerate; keep the current start.
        return theta
    r2 = float(fz.LM[p, p]) ** 2
    sigma = np.sqrt(r2 / n_eff) if np.isfinite(r2) and r2 > 0 else 1.0
    out = opt.theta * sigma
    diag = spec.lower == 0.0
    out[diag] = np.maximum(out[diag], THETA_FLOOR)
    return out if np.all(np.isfinite(out)) else theta


def start_values(fit: FitSetup) -> tuple[np.ndarray, np.ndarray, np.ndarray, float | None, np.ndarray]:
    """Starting ``theta_t``, ``beta_t``, modes ``u``, NB size, and the beta preconditioner."""
    prob = fit.prob
    theta = prob.spec.start()
    disp = fit.nb_fixed if not fit.estimate_disp else 1.0
    beta, u, _, RX = pirls_joint(prob, prob.factor_T(theta), disp, tol=START_TOL)
    for rnd in range(PQL_ROUNDS + int(fit.estimate_disp)):
        if fit.estimate_disp and rnd == 0:
            disp = _moment_size(moment_sums(prob, beta, prob.factor_T(theta), u))
        else:
            theta = _pql_theta(fit, theta, beta, u, disp)
        beta, u, _, RX = pirls_joint(prob, prob.factor_T(theta), disp, warm=(beta, u),
                                     tol=START_TOL)
    p = prob.p
    # d2 f / d beta_t^2 ~ 2 R_X'R_X: beta_t = beta0 + P psi makes the psi-Hessian ~ I.
    try:
        P = sla.solve_triangular(RX.T, np.eye(p), lower=False) / np.sqrt(2.0) if p else np.eye(0)
        if not np.all(np.isfinite(P)):
            raise np.linalg.LinAlgError
    except (np.linalg.LinAlgError, ValueError):
        P = np.eye(p)
    return theta, beta, u, disp, P
