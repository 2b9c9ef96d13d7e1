"""The outer objective of a GLMM fit: ``x = [theta_t, psi, (log nb_size)] -> -2 logLik``.

glmer's second stage optimises the Laplace (or AGQ) deviance over ``theta`` and ``beta``
together, with the conditional modes profiled by PIRLS.  Here the fixed effects enter as
``beta_t = beta_ref + P psi``: ``P = (R_X' sqrt 2)^{-1}`` from the PIRLS system at the start
whitens them (``d^2 f / d psi^2 ~ I``), which removes the ill-conditioning of correlated or
badly scaled columns from the quasi-Newton iteration.  A negative-binomial size is
optimised on the log scale.

Each evaluation warm-starts PIRLS from the previous modes.  Gradients: exact for the
Laplace objective in ``(theta, beta)`` (:mod:`._glmm_laplace`); central differences for the
NB size (each is one more PIRLS solve) and for every coordinate of the AGQ objective.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla

from ._glmm_agq import agq_objective, gh_rule
from ._glmm_laplace import laplace_gradient
from ._glmm_pirls import PIRLS_TOL, Mode, Problem, full_system, pirls

__all__ = ["Objective"]

#: Central-difference steps of the coordinates without an exact gradient.
FD_STEP = 1e-5
#: PIRLS tolerance where differences of values are taken (their noise must stay tiny).
FD_PIRLS_TOL = 1e-22


class Objective:
    """``-2 logLik`` of a GLMM as a function of the optimiser's vector.

    Parameters
    ----------
    prob : Problem
        The fit's data and structure.
    n_agq : int
        1 for Laplace, more for adaptive Gauss-Hermite quadrature.
    beta_ref, P : numpy.ndarray
        ``beta_t = beta_ref + P psi``.
    disp : float or None
        NB size: its start when ``estimate_disp``, else its fixed value (``None`` if none).
    estimate_disp : bool
        Whether the last coordinate is ``log(size)``.
    u0 : numpy.ndarray
        Starting conditional modes.
    """

    def __init__(self, prob: Problem, n_agq: int, beta_ref: np.ndarray, P: np.ndarray,
                 disp: float | None, estimate_disp: bool, u0: np.ndarray) -> None:
        self.prob = prob
        self.n_agq = int(n_agq)
        self.beta_ref = beta_ref
        self.P = P
        self.disp = disp
        self.estimate_disp = estimate_disp
        self.u = np.array(u0, dtype=float, copy=True)
        self.nt = prob.spec.size
        self.size = self.nt + prob.p + (1 if estimate_disp else 0)
        self.rule = gh_rule(n_agq) if n_agq > 1 else None
        self.n_eval = 0
        self.n_grad = 0
        self.pirls_failures = 0
        #: PIRLS tolerance of ordinary evaluations (the quasi-Newton phase loosens it).
        self.tol: float | None = None
        # Last value/gradient, by parameter bytes: optimisers re-request the same point.
        self._cache: tuple[bytes, bool, float, np.ndarray] | None = None

    # ------------------------------------------------------------------ parameters
    def unpack(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float | None]:
        """``(theta_t, beta_t, nb size)`` from the optimiser's vector."""
        nt, p = self.nt, self.prob.p
        beta_t = self.beta_ref + self.P @ x[nt:nt + p]
        disp = float(np.exp(x[-1])) if self.estimate_disp else self.disp
        return x[:nt], beta_t, disp

    def rewhiten(self, x: np.ndarray) -> np.ndarray:
        """Re-centre the fixed effects at ``x`` and whiten them with ``R_X`` there.

        The preconditioner from the start (identity theta) can be far off near the optimum
        (the intercept's curvature grows as the variances shrink); re-deriving it lets the
        quasi-Newton restart converge in a few steps.  Returns ``x`` in the new coordinates.
        """
        prob = self.prob
        theta_t, beta_t, disp = self.unpack(x)
        if prob.p == 0:
            return x
        m = self.mode(x)
        Ts = prob.factor_T(theta_t)
        prob.sysf.raw_rows = full_system(prob, Ts, disp, beta_t, m.u)
        RX = prob.sysf.factorize(Ts, keep=True).LM[:prob.p, :prob.p]
        P = sla.solve_triangular(RX.T, np.eye(prob.p), lower=False) / np.sqrt(2.0)
        if not np.all(np.isfinite(P)):
            return x
        self.beta_ref, self.P = beta_t.copy(), P
        return self.pack(theta_t, beta_t, disp)

    def pack(self, theta_t: np.ndarray, beta_t: np.ndarray, disp: float | None) -> np.ndarray:
        """Inverse of :meth:`unpack`."""
        psi = np.linalg.solve(self.P, beta_t - self.beta_ref) if self.prob.p else np.zeros(0)
        tail = [np.log(disp)] if self.estimate_disp and disp is not None else []
        return np.concatenate([theta_t, psi, tail])

    # ------------------------------------------------------------------ evaluation
    def mode(self, x: np.ndarray, grad: bool = False, tol: float | None = None) -> Mode:
        """PIRLS at ``x`` (warm-started); the modes seed the next call when converged."""
        theta_t, beta_t, disp = self.unpack(x)
        prob = self.prob
        tol = self.tol if tol is None else tol
        m = pirls(prob, prob.factor_T(theta_t), beta_t, disp, self.u, grad=grad,
                  tol=PIRLS_TOL if tol is None else tol)
        if m.converged:
            self.u = m.u
        else:
            self.pirls_failures += 1
        return m

    def _value_of(self, x: np.ndarray, m: Mode) -> float:
        if self.rule is None:
            return m.objective
        theta_t, beta_t, disp = self.unpack(x)
        prob = self.prob
        return agq_objective(prob, m, prob.factor_T(theta_t), prob.xbeta(beta_t), disp,
                             *self.rule)

    def value(self, x: np.ndarray, tol: float | None = None) -> float:
        """``-2 logLik`` at ``x`` (``inf`` where a system is not positive definite)."""
        self.n_eval += 1
        try:
            return self._value_of(x, self.mode(x, tol=tol))
        except (np.linalg.LinAlgError, FloatingPointError, ValueError):
            return np.inf

    def _fd(self, x: np.ndarray, idx: range) -> np.ndarray:
        """Central differences of the value over coordinates ``idx``."""
        g = np.empty(len(idx))
        for j, i in enumerate(idx):
            h = FD_STEP * max(1.0, abs(x[i]))
            e = np.zeros_like(x)
            e[i] = h
            g[j] = (self.value(x + e, FD_PIRLS_TOL) - self.value(x - e, FD_PIRLS_TOL)) / (2 * h)
        return g

    def value_grad(self, x: np.ndarray, tight: bool = False) -> tuple[float, np.ndarray]:
        """Value and gradient at ``x`` (``tight``: modes to rounding, for differences)."""
        key = np.asarray(x, dtype=float).tobytes()
        if self._cache is not None and self._cache[0] == key and (self._cache[1] or not tight):
            return self._cache[2], self._cache[3].copy()
        f, g = self._value_grad(x, tight)
        self._cache = (key, tight, f, g.copy())
        return f, g

    def _value_grad(self, x: np.ndarray, tight: bool) -> tuple[float, np.ndarray]:
        self.n_grad += 1
        if self.rule is not None:
            f = self.value(x, FD_PIRLS_TOL)
            return f, self._fd(x, range(x.size))
        self.n_eval += 1
        theta_t, _, _ = self.unpack(x)
        try:
            tol = FD_PIRLS_TOL if (tight or self.estimate_disp) else None
            m = self.mode(x, grad=True, tol=tol)
            g_theta, g_beta = laplace_gradient(self.prob, m, self.prob.factor_T(theta_t),
                                               self.unpack(x)[2])
        except (np.linalg.LinAlgError, FloatingPointError, ValueError):
            return np.inf, np.zeros(x.size)
        parts = [g_theta, self.P.T @ g_beta]
        if self.estimate_disp:
            u_keep = self.u.copy()
            parts.append(self._fd(x, range(x.size - 1, x.size)))
            self.u = u_keep
        return m.objective, np.concatenate(parts)

    def gradient(self, x: np.ndarray) -> np.ndarray:
        """Gradient with the modes converged to rounding (for difference Hessians)."""
        return self.value_grad(x, tight=True)[1]

    @property
    def exact_gradient(self) -> bool:
        """Whether the (theta, beta) gradient is analytic (Laplace)."""
        return self.rule is None
