"""Analytic gradient of lme4's profiled criterion with respect to theta.

With ``A = Lambda'Z'Z Lambda + I``, ``V0 = I + Z Lambda Lambda'Z'``, ``M_X = R_X'R_X =
X'V0^{-1}X`` and ``r^2 = (y - X beta)'V0^{-1}(y - X beta)`` at the GLS ``beta``:

* ``d log|A| = tr(A^{-1} dA)``: ``A`` and ``dA`` live on the sparsity pattern of the
  system, where the selected inverse (:meth:`System.diag_inverse` with ``full=True``)
  gives ``A^{-1}``; so it is a Frobenius product with the derivative of the scaled rows.
* ``d r^2 = -2 e' dLambda u`` with ``e = Z'(y - X beta - Z b)`` and ``u = Lambda'e``
  (``beta`` is profiled out, so its derivative does not enter).
* ``d log|M_X| = -2 tr(M_X^{-1} W' dLambda U_X)`` with ``W = Z'V0^{-1}X`` and
  ``U_X = Lambda'W = A^{-1}Lambda'Z'X``.

Everything is assembled from the sufficient statistics; each gradient costs a few times a
criterion evaluation instead of ``2 len(theta)`` evaluations for central differences.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla

from ._factor import System
from ._theta import ThetaSpec, profiled_criterion

__all__ = ["criterion_and_gradient", "logdet_gradient"]


def _left_T(sysm: System, lvl: int, arr: np.ndarray, Ts: list[np.ndarray],
            transpose: bool) -> np.ndarray:
    """Multiply the rows of a level by its factor transform(s) (``T'`` if ``transpose``)."""
    lay = sysm.layout
    if lvl < sysm.n_chain:
        T = Ts[sysm.plan.chain[lvl]]
        return (T.T if transpose else T) @ arr
    out = np.empty_like(arr)
    off = lay.offsets[lvl]
    W = arr.shape[2]
    for seg in lay.segments:
        if seg.start < off:
            continue
        r0, w = seg.start - off, seg.m * seg.K
        T = Ts[seg.factor]
        blk = arr[0, r0:r0 + w, :].reshape(seg.m, seg.K, W)
        out[0, r0:r0 + w, :] = ((T.T if transpose else T) @ blk).reshape(w, W)
    return out


def _row_pairs(sysm: System, lvl: int, P: np.ndarray, Q: np.ndarray,
               grads: list[np.ndarray]) -> None:
    """Add ``sum_g P_g Q_g'`` to the gradient of the factor(s) owning the level's rows."""
    lay = sysm.layout
    if lvl < sysm.n_chain:
        grads[sysm.plan.chain[lvl]] += np.einsum("gaw,gkw->ak", P, Q)
        return
    off = lay.offsets[lvl]
    for seg in lay.segments:
        if seg.start < off:
            continue
        r0, w = seg.start - off, seg.m * seg.K
        Pw = P[0, r0:r0 + w, :].reshape(seg.m, seg.K, -1)
        Qw = Q[0, r0:r0 + w, :].reshape(seg.m, seg.K, -1)
        grads[seg.factor] += np.einsum("gaw,gkw->ak", Pw, Qw)


def logdet_gradient(sysm: System, Ts: list[np.ndarray], sig: list[np.ndarray],
                    grads: list[np.ndarray]) -> None:
    """Add ``d log|A| / d T_f`` to ``grads[f]`` for every factor (``A = Lambda'Z'Z Lambda + I``).

    ``sig`` is the selected inverse of ``A`` (:meth:`System.diag_inverse` with ``full=True``)
    and the statistics are those in ``sysm.raw_rows`` (weighted ones give the GLMM's
    ``Z'WZ`` at fixed weights).  ``d log|A| = <A^{-1}, dA>`` on the sparsity pattern.
    """
    lay = sysm.layout
    for i in range(sysm.n_random):
        # <S_w, T_left' Raw T_cols>, off-diagonal blocks counted twice.
        K = lay.sizes[i]
        Sw = sig[i].copy()
        Sw[:, :, K:] *= 2.0
        width = Sw.shape[2]
        raw = sysm.raw_rows[i][:, :, :width]
        right = raw.copy()
        left = _left_T(sysm, i, raw, Ts, transpose=True)
        m = raw.shape[0]
        off = lay.offsets[i]
        for seg in lay.segments:
            if seg.start < off:
                continue
            c0, w = seg.start - off, seg.m * seg.K
            shp = (m, raw.shape[1], seg.m, seg.K)
            right[:, :, c0:c0 + w] = (raw[:, :, c0:c0 + w].reshape(shp)
                                      @ Ts[seg.factor]).reshape(m, -1, w)
            grads[seg.factor] += np.einsum("gksa,gksb->ab", left[:, :, c0:c0 + w].reshape(shp),
                                           Sw[:, :, c0:c0 + w].reshape(shp))
        _row_pairs(sysm, i, right, Sw, grads)


def criterion_and_gradient(sysm: System, spec: ThetaSpec, theta: np.ndarray, n: int,
                           p: int, reml: bool) -> tuple[float, np.ndarray]:
    """Profiled criterion and its exact gradient at ``theta``.

    Raises
    ------
    numpy.linalg.LinAlgError
        If the system is not positive definite at ``theta``.
    """
    plan = sysm.plan
    Ts = spec.factor_T(theta, plan)
    fz = sysm.factorize(Ts, keep=True)
    crit = profiled_criterion(fz, n, p, reml)
    nr = sysm.n_random
    LM = fz.LM
    LX = LM[:p, :p]
    beta = sla.solve_triangular(LX, LM[p, :p], lower=True, trans="T") if p else np.zeros(0)
    r2 = float(LM[p, p]) ** 2
    c = np.concatenate([-beta, [1.0]])
    # A^{-1} Lambda'Z'[X y]: columns U_X and (dotted with c) the modes u.
    sol = sysm.back_solve(fz, [G[:, :, -(p + 1):] for G in fz.G])
    lam_sol = [_left_T(sysm, i, sol[i], Ts, transpose=False) for i in range(nr)]
    ztz = sysm.ztz_times(lam_sol)
    # Z'V0^{-1}[X y] = Z'[X y] - Z'Z Lambda A^{-1} Lambda'Z'[X y].
    W = [sysm.raw_rows[i][:, :, -(p + 1):] - ztz[i] for i in range(nr)]
    grads = [np.zeros((fac.K, fac.K)) for fac in plan.factors]
    coef_r2 = (n - p if reml else n) / r2
    minv = sla.cho_solve((LX, True), np.eye(p)) if (reml and p) else None
    sig = sysm.diag_inverse(fz, full=True)
    for i in range(nr):
        e = W[i] @ c[:, None]
        u = sol[i] @ c[:, None]
        P, Q = [e], [-2.0 * coef_r2 * u]
        if minv is not None:
            P.append(W[i][:, :, :p])
            Q.append(-2.0 * (sol[i][:, :, :p] @ minv))
        _row_pairs(sysm, i, np.concatenate(P, axis=2), np.concatenate(Q, axis=2), grads)
    logdet_gradient(sysm, Ts, sig, grads)
    return crit, spec.gradient(grads, plan)
