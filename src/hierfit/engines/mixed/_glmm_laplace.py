"""The Laplace objective of a GLMM and its exact gradient in ``(theta, beta)``.

``f(theta, beta) = pd(u*) + log|H(u*)|`` with ``pd(u) = sum_i dev_i(eta_i) + |u|^2``,
``eta = X beta + offset + Z Lambda(theta) u``, ``H = Lambda'Z'WZ Lambda + I`` and ``u*`` the
conditional mode (PIRLS).  ``f`` is glmer's ``-2 logLik`` (Laplace, nAGQ = 1).

Gradient (implicit differentiation through the mode).  With per-row ``d1 = ddev/deta``,
weights ``W`` of ``H``, their derivative ``W'``, observed weights ``W_o`` (the Hessian of
``pd`` in ``u`` is ``2 H_o``, ``H_o = Lambda'Z'W_o Z Lambda + I``) and the leverages
``h_i = [Z Lambda H^{-1} Lambda'Z']_ii``:

* ``pd`` is stationary in ``u`` at the mode, so only its partial derivatives enter;
* ``d log|H|`` has a direct part (``dLambda``, and ``dW = W' deta`` at fixed ``u``) and a part
  through the mode, ``g_u' du*/dphi`` with ``g_u = Lambda'Z'(W' h)`` and
  ``du*/dphi = -(2 H_o)^{-1} d^2 pd / du dphi``; one adjoint solve ``v = H_o^{-1} g_u / 2``
  replaces a solve per parameter.

Collecting terms, with ``s = Z Lambda v`` and ``c = d1 + W' h - 2 W_o s`` per row::

    df/dbeta   = X' c
    df/dT_f    = sum_g (Z_f'c)_g u_g'  -  sum_g (Z_f'd1)_g v_g'  +  d log|H| / dT_f |_W

where the last term (``W`` fixed) is the LMM core's :func:`._gradient.logdet_gradient` on the
weighted statistics.  Cost: two passes over the rows (leverages with the two grouped sums
they feed; then ``s``, ``c`` and its sums) plus O(groups) algebra -- against ``2 (len(theta) +
p)`` PIRLS solves for central differences.
"""

from __future__ import annotations

import numpy as np

from ._factor import Factorization
from ._glmm_kernels import linpred, quad, scatter, xtc
from ._glmm_pirls import Mode, Problem, mode_terms, solve_h
from ._glmm_rows import RowTerms
from ._gradient import logdet_gradient

__all__ = ["factor_outer", "laplace_gradient", "leverage_sums", "score_sums"]


def factor_outer(prob: Problem, a: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
    """Per factor ``sum_g a_g b_g'`` (``K x K``) for two flat vectors in the vector layout."""
    plan, lay = prob.plan, prob.sys0.layout
    out = [np.zeros((f.K, f.K)) for f in plan.factors]
    pa, pb = prob.rl.split_vector(a), prob.rl.split_vector(b)
    n_chain = len(plan.chain)
    for lvl in range(len(pa)):
        if lvl < n_chain:
            out[plan.chain[lvl]] += pa[lvl].T @ pb[lvl]
            continue
        for seg in lay.segments:
            if seg.start < lay.offsets[lvl]:
                continue
            r0 = seg.start - lay.offsets[lvl]
            A = pa[lvl][0, r0:r0 + seg.m * seg.K].reshape(seg.m, seg.K)
            B = pb[lvl][0, r0:r0 + seg.m * seg.K].reshape(seg.m, seg.K)
            out[seg.factor] += A.T @ B
    return out


def theta_vector(prob: Problem, grads: list[np.ndarray]) -> np.ndarray:
    """Per-factor ``d/dT`` matrices -> gradient over the theta entries."""
    return prob.spec.gradient(grads, prob.plan)


def observed_factor(prob: Problem, mode: Mode, Ts: list[np.ndarray],
                    disp: float | None) -> Factorization:
    """Factor of ``H_o`` (observed weights): known from the mode, or one more weighted pass."""
    if mode.fz_o is not None:
        return mode.fz_o
    wo = np.maximum(mode_terms(prob, mode, disp).wo, 0.0)
    prob.sys0.raw_rows = prob.weighted_rows(wo, np.zeros(prob.n), with_x=False)
    fz_o = prob.sys0.factorize(Ts, keep=True)
    prob.sys0.raw_rows = mode.raw
    return fz_o


def laplace_gradient(prob: Problem, mode: Mode, Ts: list[np.ndarray],
                     disp: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``(df/dtheta_t, df/dbeta_t)`` at a converged mode.

    Two row passes (:func:`leverage_sums`, :func:`score_sums`; summed over the shards of a
    sharded problem) around one adjoint solve.

    Returns
    -------
    g_theta, g_beta : numpy.ndarray
    """
    sysm = prob.sys0
    sysm.raw_rows = mode.raw
    sig = sysm.diag_inverse(mode.fz, full=True)
    if prob.shards is not None:
        assert mode.beta_t is not None
        zdwh, zd1 = prob.shards.leverage(Ts, mode.beta_t, mode.u, disp, sig)
    else:
        terms = None if prob.fused is not None else mode_terms(prob, mode, disp, grad=True)
        zdwh, zd1, dwh = leverage_sums(prob, mode.eta, terms, Ts, sig)
    g_u = prob.lam(Ts, zdwh, transpose=True)
    # canonical weights (fused, and every sharded problem): H_o = H, factored at the mode
    fz_o = mode.fz if prob.fused is not None else observed_factor(prob, mode, Ts, disp)
    v = 0.5 * prob.flat(solve_h(sysm, fz_o, prob.levels(g_u)))
    if prob.shards is not None:
        assert mode.beta_t is not None
        zc, g_beta = prob.shards.scores(Ts, mode.beta_t, mode.u, disp, sig, v)
    else:
        zc, g_beta = score_sums(prob, mode.eta, terms, dwh, Ts, v)
    return _assemble_theta(prob, Ts, sig, zc, zd1, mode.u, v), g_beta


def leverage_sums(prob: Problem, eta: np.ndarray, terms: RowTerms | None, Ts: list[np.ndarray],
                  sig: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first gradient pass: grouped sums ``Z_t'(W' h)`` and ``Z_t' d1``, and the per-row
    ``W' h`` the second pass reads (``terms``: the row terms at ``eta`` with ``dw``; ``None``
    for a fused problem, whose kernel computes them)."""
    rl = prob.rl
    if prob.fused is not None:
        rows = prob.rows
        zdwh, zd1, dwh = np.zeros(prob.q), np.zeros(prob.q), np.empty(prob.n)
        flat_sig = np.concatenate([x.ravel() for x in sig])
        tmat = np.concatenate([np.ascontiguousarray(T, dtype=float).ravel() for T in Ts])
        E, C = prob.coef_sig
        prob.fused.grad_a(eta, rows.y, rows.t, rows.pw, flat_sig, tmat, E, C, rl.gidx, rl.zc,
                          zdwh, zd1, dwh)
        return zdwh, zd1, dwh
    assert terms is not None and terms.dw is not None
    h = quad(rl, sig, Ts, prob.use_numba)
    dwh = terms.dw * h
    zdwh_r, zd1_r = scatter(rl, dwh, terms.d1, prob.use_numba)
    assert zd1_r is not None
    return zdwh_r, zd1_r, dwh


def score_sums(prob: Problem, eta: np.ndarray, terms: RowTerms | None, dwh: np.ndarray,
               Ts: list[np.ndarray], v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The second gradient pass: ``c = d1 + W'h - 2 W_o s`` (``s = Z Lambda v``) summed per
    group (``Z_t' c``) and over the fixed-effects columns (``X_t' c``)."""
    rl = prob.rl
    if prob.fused is not None:
        rows = prob.rows
        E, C = prob.coef_sig
        zc, g_beta = np.zeros(prob.q), np.zeros(prob.p)
        X = prob.X if prob.p else np.zeros((1, 1))
        prob.fused.grad_b(eta, rows.y, rows.t, rows.pw, dwh, prob.lam(Ts, v), X,
                          prob.xmap.center, prob.xmap.scale, E, C, rl.gidx, rl.zc, zc, g_beta)
        return zc, g_beta
    assert terms is not None
    s = linpred(rl, np.zeros(prob.n), prob.lam(Ts, v), prob.use_numba)
    c = terms.d1 + dwh - 2.0 * terms.wo * s
    zc, _ = scatter(rl, c, None, prob.use_numba)
    g_beta = xtc(prob.X, prob.xmap.center, prob.xmap.scale, c, prob.use_numba) if prob.p else np.zeros(0)
    return zc, g_beta


def _assemble_theta(prob: Problem, Ts: list[np.ndarray], sig: list[np.ndarray],
                    zc: np.ndarray, zd1: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    grads = factor_outer(prob, zc, u)
    for G, Gv in zip(grads, factor_outer(prob, zd1, v)):
        G -= Gv
    logdet_gradient(prob.sys0, Ts, sig, grads)
    return theta_vector(prob, grads)
