"""Penalised iteratively reweighted least squares (PIRLS): the conditional modes of a GLMM.

At fixed ``theta`` and ``beta`` the spherical random effects ``u`` minimise the penalised
deviance ``pd(u) = sum dev_i(eta_i) + |u|^2`` with ``eta = X beta + offset + Z Lambda u``.
Each Newton (Fisher-scoring for non-canonical expected weights) step is the penalised
least-squares problem of lme4 with working weights ``W`` and working response
``r = Z Lambda u - d1 / (2 W)``: one weighted pass over the rows gathers its system
(:func:`._glmm_kernels.accumulate`), and the existing block elimination of
:class:`._factor.System` solves it -- batched per group along the nested chain, a dense
block only for crossed factors.  Steps are halved while ``pd`` does not decrease, as in
lme4's ``pwrssUpdate``.

The iteration stops when the Newton decrement ``delta' H delta = |L' delta|^2`` falls below
``tol``: the mode is then accurate to ``|delta| <= sqrt(tol)`` (``H >= I``), which keeps the
envelope-theorem gradient of :mod:`._glmm_laplace` exact to that order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import scipy.linalg as sla

from ._blocks import Plan
from ._factor import Factorization, System, _solve_lower
from ._glmm_codegen import GeneratedModule
from ._glmm_diagnostics import EndSums
from ._glmm_kernels import (
    RowLayout,
    accumulate,
    finish_rows,
    linpred,
    system_layout,
    xparts,
)
from ._glmm_rows import RowModel, RowTerms, row_chunks, working_response
from ._standardize import ColumnMap
from ._theta import ThetaSpec

__all__ = ["Mode", "Problem", "full_system", "mode_terms", "pirls", "pirls_joint"]

#: Default Newton-decrement tolerance (deviance units) of the inner loop.
PIRLS_TOL = 1e-14
#: A decrement below this (relative, as the tolerance) that no longer shrinks -- each
#: iteration keeps >= 90% of the last -- is rounding in the row terms (a negative-binomial
#: size near infinity cancels digits in its log-gamma terms): the penalised deviance cannot be
#: lowered measurably (its distance to the mode's is about dec / 2), so PIRLS has converged.
PIRLS_STALL_TOL = 1e-12
#: Iteration cap of the inner loop (lme4's maxit is 100).
PIRLS_MAXIT = 100
#: Placeholder outputs of a fused step that keeps no weights / working response.
_NO_V = np.zeros(1)
#: The linear predictor of a sharded pass: its rows stay in the shards.
_NO_ETA = np.zeros(0)



@dataclass
class Problem:
    """Everything fixed during one GLMM fit.

    Attributes
    ----------
    X : numpy.ndarray
        ``(n, p)`` fixed-effects matrix (caller's columns, C-contiguous).
    offset : numpy.ndarray
        ``(n,)`` offset of the linear predictor.
    xmap : ColumnMap
        Standardisation of ``X`` (``X_t = (X - center) / scale``).
    rows : RowModel
        The family's per-row terms.
    rl : RowLayout
        Row layout of the random effects.
    plan : Plan
        Elimination plan.
    spec : ThetaSpec
        Theta parametrisation (standardised coordinates).
    sys0, sysf : System
        Systems without and with the fixed-effects columns; their ``raw_rows`` are
        replaced by every weighted pass.
    use_numba : bool
        Compiled row passes (when numba is importable).
    """

    X: np.ndarray
    offset: np.ndarray
    xmap: ColumnMap
    rows: RowModel
    rl: RowLayout
    plan: Plan
    spec: ThetaSpec
    sys0: System
    sysf: System
    use_numba: bool = True
    fused: GeneratedModule | None = None
    #: The rows live elsewhere (Dask workers, a Parquet lake): every row pass is one
    #: map-reduce of per-group sums over them (:mod:`._glmm_shards`); ``X`` then has no rows.
    shards: Shards | None = None

    def __post_init__(self) -> None:
        # Coefficient tables of the fused passes (constant for the fit).
        self.sys_layout0 = system_layout(self.rl, 0)
        rl_sys, _, sbase, swidth, _ = self.sys_layout0
        E, C = rl_sys.coefficients(sbase, swidth)
        foff = int(self.rl.lvl_off[-1])
        self.coef0 = (E, C, np.array([sbase[-1] - foff], np.int64), np.array([foff], np.int64))
        rl0, _, sb0, sw0, _ = system_layout(self.rl, -1)
        self.coef_sig = rl0.coefficients(sb0, sw0)


    @property
    def n(self) -> int:
        """Rows."""
        return int(self.X.shape[0])

    @property
    def p(self) -> int:
        """Fixed effects."""
        return int(self.X.shape[1])

    @property
    def q(self) -> int:
        """Random effects (length of ``u``)."""
        return int(self.rl.vbase[-1])

    def factor_T(self, theta_t: np.ndarray) -> list[np.ndarray]:
        """Per-factor relative covariance factors (standardised)."""
        return self.spec.factor_T(theta_t, self.plan)

    def xbeta(self, beta_t: np.ndarray) -> np.ndarray:
        """``X_t beta_t + offset`` (computed as ``X (M beta_t)``: one BLAS pass)."""
        if self.p == 0:
            return self.offset.copy()
        out = self.X @ (self.xmap.matrix() @ beta_t)
        out += self.offset  # in place: one row-sized array, not two (memory is per row)
        return out

    # ------------------------------------------------------------------ Lambda
    def lam(self, Ts: list[np.ndarray], v: np.ndarray, transpose: bool = False) -> np.ndarray:
        """``Lambda v`` (or ``Lambda' v``) for a flat vector in the vector layout."""
        parts = self.rl.split_vector(v)
        out = []
        lay = self.sys0.layout
        n_chain = len(self.plan.chain)
        for lvl, part in enumerate(parts):
            if lvl < n_chain:
                T = Ts[self.plan.chain[lvl]]
                out.append(part @ (T if transpose else T.T))
                continue
            o = np.empty_like(part)
            for seg in lay.segments:
                if seg.start < lay.offsets[lvl]:
                    continue
                r0 = seg.start - lay.offsets[lvl]
                T = Ts[seg.factor]
                blk = part[0, r0:r0 + seg.m * seg.K].reshape(seg.m, seg.K)
                o[0, r0:r0 + seg.m * seg.K] = (blk @ (T if transpose else T.T)).ravel()
            out.append(o)
        return self.rl.join_vector(out)

    def levels(self, v: np.ndarray) -> list[np.ndarray]:
        """Flat vector -> per-level ``(m, K, 1)`` right-hand sides of the systems."""
        return [p[:, :, None] for p in self.rl.split_vector(v)]

    def flat(self, parts: list[np.ndarray]) -> np.ndarray:
        """Per-level ``(m, K, 1)`` solutions -> flat vector."""
        return self.rl.join_vector([p[..., 0] for p in parts])

    def weighted_rows(self, w: np.ndarray, r: np.ndarray, with_x: bool,
                      pad: bool = True) -> list[np.ndarray]:
        """System rows of one weighted pass (``pad``: the ``r'Wr`` corner kept positive)."""
        X = self.X if with_x else None
        rows = accumulate(self.rl, w, r, X, self.xmap.center, self.xmap.scale, self.use_numba)
        if pad:
            # Only the random part and R_X, c_beta are used; the residual corner must not
            # make the last Cholesky pivot fail when a working response is fitted exactly.
            rows[-1][0, -1, -1] += 1.0
        return rows


@dataclass
class Mode:
    """The conditional mode at one parameter value and everything evaluated there.

    Attributes
    ----------
    u : numpy.ndarray
        Spherical conditional modes (flat vector layout).
    eta : numpy.ndarray
        Linear predictor at ``u``.
    terms : RowTerms or None
        Row terms at ``eta`` (``None`` after a fused pass: see :func:`mode_terms`).
    fz : Factorization
        Factor of ``H = Lambda'Z'WZ Lambda + I`` at ``u`` (weights ``terms.w``).
    raw : list of numpy.ndarray
        The weighted statistics behind ``fz``.
    pd, logdet, objective : float
        Penalised deviance ``sum dev + |u|^2``, ``log|H|`` and their sum (Laplace ``-2 logLik``).
    converged : bool
    iterations : int
    decrement : float
        Newton decrement at ``u`` (deviance units).
    fz_o : Factorization or None
        Factor of ``H_o`` (observed weights) when known; ``None`` if it must be computed.
    """

    u: np.ndarray
    eta: np.ndarray
    terms: RowTerms | None
    fz: Factorization
    raw: list[np.ndarray]
    pd: float
    logdet: float
    objective: float
    converged: bool
    iterations: int
    decrement: float
    fz_o: Factorization | None = None
    #: the fixed effects of the mode (a sharded problem recomputes ``eta`` from them)
    beta_t: np.ndarray | None = None


class Shards(Protocol):
    """The row passes of a problem whose rows are held in shards (:mod:`._glmm_shards`):
    each returns the sums over every row, exactly what the in-memory pass computes."""

    def step(self, Ts: list[np.ndarray], beta_t: np.ndarray, disp: float | None, u: np.ndarray
             ) -> tuple[float, list[np.ndarray]]:
        """``sum dev`` and the unpadded u-only system of the next PIRLS step (:func:`_pass`)."""

    def joint_step(self, Ts: list[np.ndarray], disp: float | None, beta_t: np.ndarray, u: np.ndarray,
                   start: bool) -> tuple[float, list[np.ndarray]]:
        """``sum dev`` and the unpadded joint system (:func:`_joint_pass`)."""

    def leverage(self, Ts: list[np.ndarray], beta_t: np.ndarray, u: np.ndarray, disp: float | None,
                 sig: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The sums of :func:`._glmm_laplace.leverage_sums`."""

    def scores(self, Ts: list[np.ndarray], beta_t: np.ndarray, u: np.ndarray, disp: float | None,
               sig: list[np.ndarray], v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The sums of :func:`._glmm_laplace.score_sums`."""

    def moment_sums(self, Ts: list[np.ndarray], beta_t: np.ndarray, u: np.ndarray) -> np.ndarray:
        """The sums of :func:`._glmm_start.moment_sums`."""

    def end_sums(self, Ts: list[np.ndarray], beta_t: np.ndarray, u: np.ndarray, disp: float | None) -> EndSums:
        """The sums of :func:`._glmm_diagnostics.end_sums`."""

    def close(self) -> None:
        """Release the shards once the fit is done."""


def _lt_times(sysm: System, fz: Factorization, x: list[np.ndarray]) -> list[np.ndarray]:
    """``L' x`` per level (``x[i]`` of shape ``(m_i, K_i, d)``): the transpose of the factor."""
    out = []
    for i in range(sysm.n_random):
        acc = np.swapaxes(fz.L[i], 1, 2) @ x[i]
        G = fz.G[i]
        for a, e, pm in sysm._ancestors(i):
            Ka = sysm.layout.sizes[a]
            xa = x[a][pm] if pm is not None else x[a]
            acc = acc + G[:, :, e:e + Ka] @ xa
        out.append(acc)
    return out


def forward_solve(sysm: System, fz: Factorization, rhs: list[np.ndarray]) -> list[np.ndarray]:
    """Solve ``L z = rhs`` on the random part (finest level first, children feed parents)."""
    z = [np.array(r, dtype=float, copy=True) for r in rhs]
    for i in range(sysm.n_random):
        z[i] = _solve_lower(fz.L[i], z[i])
        G = fz.G[i]
        m = z[i].shape[0]
        for a, e, pm in sysm._ancestors(i):
            Ka = sysm.layout.sizes[a]
            contrib = np.swapaxes(G[:, :, e:e + Ka], 1, 2) @ z[i]
            if pm is not None:
                z[a] -= (sysm.sum_ops[(i, a)] @ contrib.reshape(m, -1)).reshape(z[a].shape)
            else:
                z[a] -= contrib.sum(axis=0, keepdims=True)
    return z


def solve_h(sysm: System, fz: Factorization, rhs: list[np.ndarray]) -> list[np.ndarray]:
    """``H^{-1} rhs`` from the factor (forward then back substitution)."""
    return sysm.back_solve(fz, forward_solve(sysm, fz, rhs))


def _working(prob: Problem, terms: RowTerms, eta: np.ndarray, base: np.ndarray,
             newton: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Working weights and response ``eta - base - d1 / (2 W)`` (no shift without weight).

    ``newton`` uses the observed weights (the exact Hessian: quadratic convergence) when
    they differ from ``terms.w`` and are all positive; otherwise ``terms.w`` (Fisher scoring
    for expected weights, as glmer).
    """
    w = terms.w
    if terms.wo is not terms.w:
        if newton and np.all(terms.wo > 0.0):
            w = terms.wo
        elif np.any(w < 0.0) or not np.all(np.isfinite(w)):
            # Observed information can be negative for a non-canonical link far from the
            # mode: clipped weights still give a descent direction (halved while pd rises).
            w = np.where(np.isfinite(w), np.maximum(w, 0.0), 0.0)
    return w, working_response(eta, base, terms.d1, w, prob.use_numba)


def _finish(prob: Problem, Ts: list[np.ndarray], u: np.ndarray, eta: np.ndarray,
            terms: RowTerms | None, pd: float, w_used: np.ndarray | None,
            raw: list[np.ndarray], fz: Factorization, converged: bool, it: int,
            dec: float, beta_t: np.ndarray) -> Mode:
    """The mode record; refactorises with the weights of ``H`` if the steps used others.

    ``terms``/``w_used`` are ``None`` for a fused pass (canonical weights: ``H = H_o``).
    """
    fz_o = None
    if terms is None or w_used is None:
        fz_o = fz
    elif w_used is not terms.w:
        fz_o = fz if w_used is terms.wo else None
        raw = prob.weighted_rows(terms.w, np.zeros(prob.n), with_x=False)
        prob.sys0.raw_rows = raw
        fz = prob.sys0.factorize(Ts, keep=True)
    elif terms.wo is terms.w:
        fz_o = fz
    return Mode(u, eta, terms, fz, raw, pd, fz.logdet_L, pd + fz.logdet_L, converged, it, dec,
                fz_o, beta_t)


PassResult = tuple[float, "RowTerms | None", np.ndarray, list[np.ndarray], "np.ndarray | None"]


def _pass(prob: Problem, Ts: list[np.ndarray], xb: np.ndarray, disp: float | None,
          u: np.ndarray, grad: bool, out: np.ndarray | None = None,
          beta_t: np.ndarray | None = None) -> PassResult:
    """One pass at ``u``: ``pd``, row terms, ``eta``, the system of the next step, its weights.

    Fused (one read of the rows) for the families of :mod:`._glmm_fused`; it writes ``eta``
    into ``out`` when given.  A sharded problem sums the pass over its shards (from
    ``beta_t``; no row terms or ``eta`` come back, as from a fused pass).
    """
    if prob.shards is not None:
        assert beta_t is not None
        dev, raw = prob.shards.step(Ts, beta_t, disp, u)
        raw[-1][0, -1, -1] += 1.0  # see Problem.weighted_rows
        return dev + float(u @ u), None, _NO_ETA, raw, None
    bvec = prob.lam(Ts, u)
    if prob.fused is not None:
        rl_sys, total, _, _, size = prob.sys_layout0
        flat = np.zeros(size)
        eta = np.empty(prob.n) if out is None else out
        E, C, Fr, Fg = prob.coef0
        rows = prob.rows
        const = rows.fast_const(disp)  # its first call makes chunked temporaries: before the passes' arrays
        ll = prob.fused.step(flat, xb, bvec, xb, rows.y, rows.t, rows.pw, eta, False, _NO_V,
                             _NO_V, Fr, Fg, E, C, prob.rl.gidx, prob.rl.zc)
        raw = finish_rows(rl_sys, flat, total)
        raw[-1][0, -1, -1] += 1.0  # see Problem.weighted_rows
        pd = -2.0 * (ll + const) + float(u @ u)
        return pd, None, eta, raw, None
    eta = linpred(prob.rl, xb, bvec, prob.use_numba)
    terms = prob.rows.terms(eta, disp, grad)
    w, r = _working(prob, terms, eta, xb, newton=True)
    return terms.dev + float(u @ u), terms, eta, prob.weighted_rows(w, r, with_x=False), w


def pirls(prob: Problem, Ts: list[np.ndarray], beta_t: np.ndarray, disp: float | None,
          u0: np.ndarray, *, grad: bool = False, tol: float = PIRLS_TOL,
          maxit: int = PIRLS_MAXIT) -> Mode:
    """Conditional modes at fixed ``theta`` (``Ts``) and standardised ``beta``.

    Each iteration is one pass at the current modes (its ``pd`` also decides the step
    halving of the previous step) and an O(groups) solve.

    Raises
    ------
    numpy.linalg.LinAlgError
        If a system is not positive definite (e.g. non-finite weights).
    """
    sysm = prob.sys0
    u = np.array(u0, dtype=float, copy=True)
    # X beta + offset once per solve (a sharded problem's shards compute their own)
    xb = prob.xbeta(beta_t) if prob.shards is None else _NO_ETA
    pd, terms, eta, raw, w = _pass(prob, Ts, xb, disp, u, grad, beta_t=beta_t)
    dec = dec_prev = np.inf
    fz = None
    for it in range(maxit):
        sysm.raw_rows = raw
        fz = sysm.factorize(Ts, keep=True)
        u_new = prob.flat(sysm.back_solve(fz, [G[:, :, -1:] for G in fz.G]))
        delta = u_new - u
        dec = float(sum(np.sum(x * x) for x in _lt_times(sysm, fz, prob.levels(delta))))
        if not np.isfinite(dec):
            raise np.linalg.LinAlgError("PIRLS step is not finite")
        scale = max(1.0, 1e-6 * abs(pd))
        if dec <= tol * scale or (dec <= PIRLS_STALL_TOL * scale and dec >= 0.9 * dec_prev):
            return _finish(prob, Ts, u, eta, terms, pd, w, raw, fz, True, it, dec, beta_t)
        dec_prev = dec
        step = 1.0
        # A fused trial writes its eta over the current one (one row-sized array, not two:
        # memory is per row); only when every halving fails is the eta at u needed again.
        reuse = eta if prob.fused is not None and prob.shards is None else None
        for _ in range(40):  # step halving, as lme4's pwrssUpdate
            u_try = u + step * delta
            trial = _pass(prob, Ts, xb, disp, u_try, grad, out=reuse, beta_t=beta_t)
            if np.isfinite(trial[0]) and trial[0] <= pd + 1e-13 * abs(pd):
                break
            step *= 0.5
        else:
            if reuse is not None:  # the same system as at u (fz stays valid), and eta at u
                pd, terms, eta, raw, w = _pass(prob, Ts, xb, disp, u, grad, out=reuse, beta_t=beta_t)
            return _finish(prob, Ts, u, eta, terms, pd, w, raw, fz, False, it, dec, beta_t)
        u = u_try
        pd, terms, eta, raw, w = trial
    # Out of iterations: the state is consistent (system at u), flagged as not converged.
    sysm.raw_rows = raw
    fz = sysm.factorize(Ts, keep=True)
    return _finish(prob, Ts, u, eta, terms, pd, w, raw, fz, False, maxit, dec, beta_t)


def mode_terms(prob: Problem, mode: Mode, disp: float | None, grad: bool = False) -> RowTerms:
    """Row terms at the mode (recomputed after a fused pass, which keeps none)."""
    if mode.terms is None or (grad and mode.terms.dw is None):
        mode.terms = prob.rows.terms(mode.eta, disp, grad)
    return mode.terms


def pirls_joint(prob: Problem, Ts: list[np.ndarray], disp: float | None, *,
                warm: tuple[np.ndarray, np.ndarray] | None = None,
                maxit: int = PIRLS_MAXIT, tol: float = 1e-12
                ) -> tuple[np.ndarray, np.ndarray, bool, np.ndarray]:
    """Joint PIRLS over ``(u, beta)`` at fixed theta (glmer's nAGQ = 0 inner loop).

    Starts from glmer's linear predictor ``link(mustart)`` (without the offset), or from
    ``warm = (beta_t, u)``.

    Returns
    -------
    beta_t : numpy.ndarray
        Standardised fixed effects.
    u : numpy.ndarray
        Spherical modes.
    converged : bool
    RX : numpy.ndarray
        ``(p, p)`` lower factor ``R_X'`` of the last system (``R_X'R_X`` is half the
        Hessian of the penalised deviance in beta with u profiled).
    """
    sysm = prob.sysf
    p = prob.p
    if warm is None:
        # The first system comes from the start's linear predictor (no beta, u yet).
        beta, u = np.zeros(p), np.zeros(prob.q)
        raw = _joint_pass(prob, Ts, disp, beta, u, start=True)[1]
        pd_old = np.inf
    else:
        beta, u = warm
        pd_old, raw, _ = _joint_pass(prob, Ts, disp, beta, u)
    first = warm is None
    RX = np.eye(p)
    for it in range(maxit):
        sysm.raw_rows = raw
        fz = sysm.factorize(Ts, keep=True)
        LM = fz.LM
        RX = LM[:p, :p].copy()
        beta_new = (sla.solve_triangular(LM[:p, :p], LM[p, :p], lower=True, trans="T")
                    if p else np.zeros(0))
        c = np.concatenate([-beta_new, [1.0]])
        u_new = prob.flat(sysm.back_solve(fz, [G[:, :, -(p + 1):] @ c[:, None] for G in fz.G]))
        step = 1.0
        for _ in range(40):
            b_try = beta + step * (beta_new - beta) if (it or not first) else beta_new
            u_try = u + step * (u_new - u) if (it or not first) else u_new
            pd, raw_try, _ = _joint_pass(prob, Ts, disp, b_try, u_try)
            if np.isfinite(pd) and pd <= pd_old + 1e-13 * abs(pd):
                break
            step *= 0.5
        else:
            return beta, u, False, RX
        beta, u, raw = b_try, u_try, raw_try
        if abs(pd_old - pd) <= tol * abs(pd):
            return beta, u, True, RX
        pd_old = pd
    return beta, u, False, RX


def full_system(prob: Problem, Ts: list[np.ndarray], disp: float | None, beta: np.ndarray,
                u: np.ndarray, pad: bool = True) -> list[np.ndarray]:
    """The PIRLS system with the fixed-effects columns at ``(beta, u)`` (weights of ``H``)."""
    raw = _joint_pass(prob, Ts, disp, beta, u)[1]
    if not pad:
        raw[-1][0, -1, -1] -= 1.0
    return raw


def full_system_and_eta(prob: Problem, Ts: list[np.ndarray], disp: float | None, beta: np.ndarray,
                        u: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """:func:`full_system` and the linear predictor of its pass (callers drop theirs first:
    the end of a fit holds the most row-sized arrays)."""
    _, raw, eta = _joint_pass(prob, Ts, disp, beta, u)
    return raw, eta


def _joint_pass(prob: Problem, Ts: list[np.ndarray], disp: float | None, beta: np.ndarray,
                u: np.ndarray, start: bool = False
                ) -> tuple[float, list[np.ndarray], np.ndarray]:
    """``pd`` at ``(beta, u)`` and the joint system of the next step (fused when possible).

    ``start`` replaces ``X beta + offset`` by the start's linear predictor (with ``u = 0``).
    The system is the u-only one with the working response relative to the offset, plus
    the fixed-effects columns (:func:`_with_x`): no kernel depends on ``p``.  A sharded
    problem sums the pass over its shards (no ``eta`` comes back).
    """
    if prob.shards is not None:
        dev, raw = prob.shards.joint_step(Ts, disp, beta, u, start)
        raw[-1][0, -1, -1] += 1.0  # see Problem.weighted_rows
        return dev + float(u @ u), raw, _NO_ETA
    # the start's row-sized array lives only during this pass
    xb = np.asarray(prob.rows.start_eta(), dtype=float) if start else prob.xbeta(beta)
    bvec = prob.lam(Ts, u)
    rows = prob.rows
    if prob.fused is not None:
        rl_sys, total, _, _, size = prob.sys_layout0
        flat = np.zeros(size)
        E, C, Fr, Fg = prob.coef0
        const = rows.fast_const(disp)  # its first call makes chunked temporaries: before w and r exist
        # In chunks of rows: the weights and working response are chunk buffers that the
        # fixed-effects columns read before the next chunk, not two row-sized arrays (memory
        # is per row, the fit's scale limit).  eta is written over xb (each row reads its xb
        # once, before): a fresh array here (xbeta's, or the start's, dropped by the caller).
        chunks = row_chunks(prob.n)
        w, r = np.empty(chunks[0].stop), np.empty(chunks[0].stop)
        ll, parts = 0.0, None
        for sl in chunks:
            rl = prob.rl.rows(sl)
            wc, rc = w[:rl.n], r[:rl.n]
            ll += prob.fused.step(flat, xb[sl], bvec, prob.offset[sl], rows.y[sl], rows.t[sl],
                                  rows.pw[sl], xb[sl], True, wc, rc, Fr, Fg, E, C, rl.gidx, rl.zc)
            part = _fixed_parts(prob, rl, wc, rc, sl)
            parts = part if parts is None else (parts[0] + part[0], parts[1] + part[1])
        assert parts is not None  # n > 0
        raw0 = finish_rows(rl_sys, flat, total)
        pd = -2.0 * (ll + const) + float(u @ u)
    else:
        eta = linpred(prob.rl, xb, bvec, prob.use_numba)
        terms = rows.terms(eta, disp)
        w, r = _working(prob, terms, eta, prob.offset)
        raw0 = prob.weighted_rows(w, r, with_x=False, pad=False)
        pd = terms.dev + float(u @ u)
        xb = eta
        parts = _fixed_parts(prob, prob.rl, w, r, slice(None))
    raw = _with_x(prob, raw0, *parts)
    raw[-1][0, -1, -1] += 1.0  # see Problem.weighted_rows
    return pd, raw, xb  # xb holds eta now (the fused pass writes it over xb)


def _fixed_parts(prob: Problem, rl: RowLayout, w: np.ndarray, r: np.ndarray, rows: slice
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``Z_t'W X_t`` (one grouped sum per column) and ``[X_t r]'W[X_t r]`` of some rows
    (``rl``: their layout; ``w``, ``r``: their weights and working response)."""
    X = prob.X[rows] if prob.p else np.zeros((rl.n, 0))
    return xparts(rl, w, r, X, prob.xmap.center, prob.xmap.scale, prob.use_numba)


def _with_x(prob: Problem, raw0: list[np.ndarray], outx: np.ndarray, fixed: np.ndarray
            ) -> list[np.ndarray]:
    """The system with fixed-effects columns from the u-only one (same working response)
    and the fixed-effects parts of :func:`_fixed_parts`."""
    p, rl = prob.p, prob.rl
    cols = [rl.split_vector(outx[j]) for j in range(p)]
    out = []
    for lvl, r0 in enumerate(raw0[:-1]):
        m, K, W0 = r0.shape
        full = np.empty((m, K, W0 + p))
        full[:, :, :W0 - 1] = r0[:, :, :W0 - 1]
        for j in range(p):
            full[:, :, W0 - 1 + j] = cols[j][lvl]
        full[:, :, -1] = r0[:, :, -1]
        out.append(full)
    out.append(fixed[None])
    return out

