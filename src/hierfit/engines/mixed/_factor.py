"""Block Cholesky factorisation of lme4's penalised least-squares system.

For relative covariance factor ``Lambda(theta)`` the system is (Bates et al. 2015, JSS)::

    [ Lambda'Z'Z Lambda + I   Lambda'Z'X   Lambda'Z'y ]
    [ X'Z Lambda              X'X          X'y        ]
    [ y'Z Lambda              y'X          y'y        ]

and its lower Cholesky factor holds ``L`` (random part), ``R_ZX``, ``R_X``, ``c_u``,
``c_beta`` and ``r`` (the square root of the penalised residual sum of squares).

Levels are eliminated in order: chain factors finest first, then the dense root, then the
fixed level.  A chain group couples only with the one group of each coarser chain factor
that contains it, so eliminating a level fills in nothing new: the Schur-complement update
of a coarser level is a grouped sum (a sparse indicator product) of per-group outer
products.  Every step is batched over groups with stacked small matrices; no loop over
groups or rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

from ._blocks import Plan
from ._suffstats import Layout

__all__ = ["Factorization", "System"]


#: Up to this block size, batched triangular algebra is unrolled over the K rows and
#: vectorised over groups: LAPACK per tiny matrix costs ~1 us of call overhead each.
_UNROLL_K = 6


def _chol(D: np.ndarray) -> np.ndarray:
    """Batched lower Cholesky of ``(m, K, K)``; raise LinAlgError if not positive definite."""
    m, K = D.shape[:2]
    if K == 1:
        if np.any(D <= 0.0):
            raise np.linalg.LinAlgError("not positive definite")
        return np.sqrt(D)
    if m == 1:
        return sla.cholesky(D[0], lower=True, check_finite=False)[None]
    if K > _UNROLL_K:
        return np.linalg.cholesky(D)
    L = np.zeros_like(D)
    for j in range(K):
        d = D[:, j, j] - np.einsum("mk,mk->m", L[:, j, :j], L[:, j, :j])
        if np.any(d <= 0.0):
            raise np.linalg.LinAlgError("not positive definite")
        L[:, j, j] = np.sqrt(d)
        if j + 1 < K:
            off = D[:, j + 1:, j] - np.einsum("mik,mk->mi", L[:, j + 1:, :j], L[:, j, :j])
            L[:, j + 1:, j] = off / L[:, j, j][:, None]
    return L


def _solve_lower(L: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Batched ``L^{-1} B`` for lower-triangular ``L`` (``B`` may broadcast over groups)."""
    m, K = L.shape[:2]
    if K == 1:
        return B / L
    if m == 1:
        return sla.solve_triangular(L[0], B.reshape(K, -1), lower=True,
                                    check_finite=False).reshape((1,) + B.shape[1:])
    if K > _UNROLL_K:
        return np.linalg.solve(L, B)
    X = np.empty(np.broadcast_shapes(B.shape, (m, K, 1)))
    for i in range(K):  # forward substitution, row by row
        acc = B[:, i, :] - np.einsum("mk,mkd->md", L[:, i, :i], X[:, :i, :])
        X[:, i, :] = acc / L[:, i, i][:, None]
    return X


def _solve_upper_t(L: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Batched ``L'^{-1} B`` for lower-triangular ``L``."""
    m, K = L.shape[:2]
    if K == 1:
        return B / L
    if m == 1:
        return sla.solve_triangular(L[0], B.reshape(K, -1), lower=True, trans="T",
                                    check_finite=False).reshape((1,) + B.shape[1:])
    if K > _UNROLL_K:
        return np.linalg.solve(np.swapaxes(L, 1, 2), B)
    X = np.empty(np.broadcast_shapes(B.shape, (m, K, 1)))
    for i in range(K - 1, -1, -1):  # back substitution with L' (column i of L below i)
        acc = B[:, i, :] - np.einsum("mk,mkd->md", L[:, i + 1:, i], X[:, i + 1:, :])
        X[:, i, :] = acc / L[:, i, i][:, None]
    return X


@dataclass
class Factorization:
    """Stored factor of the system at one theta.

    Attributes
    ----------
    L : list of numpy.ndarray
        Per random level, ``(m, K, K)`` diagonal Cholesky blocks.
    G : list of numpy.ndarray
        Per random level, ``(m, K, R)`` = ``L^{-1}`` times the level's off-diagonal row:
        coarser levels' blocks, then ``R_ZX`` and ``c_u`` in the last ``p + 1`` columns.
    LM : numpy.ndarray
        ``(p + 1, p + 1)`` lower Cholesky of the fixed level: ``[[R_X', 0], [c_beta', r]]``.
    logdet_L : float
        ``log |L|^2``.
    """

    L: list[np.ndarray]
    G: list[np.ndarray]
    LM: np.ndarray
    logdet_L: float


class System:
    """Sufficient statistics plus plan; factorises the PLS system for any theta.

    Parameters
    ----------
    plan : Plan
        Elimination plan.
    layout : Layout
        Global column layout.
    raw_rows : list of numpy.ndarray
        Unscaled rows from :func:`compute_rows`.
    """

    def __init__(self, plan: Plan, layout: Layout, raw_rows: list[np.ndarray]) -> None:
        self.plan = plan
        self.layout = layout
        self.raw_rows = raw_rows
        self.n_chain = len(plan.chain)
        self.n_random = layout.n_levels - 1
        # Grouped-sum operators child level -> coarser chain level (m_parent x m_child).
        self.sum_ops: dict[tuple[int, int], sp.csr_matrix] = {}
        for (i, j), pmap in plan.parent_maps.items():
            m_i = layout.m[i]
            self.sum_ops[(i, j)] = sp.csr_matrix(
                (np.ones(m_i), (pmap, np.arange(m_i))), shape=(layout.m[j], m_i))

    # ------------------------------------------------------------------ scaling
    def scaled_rows(self, Ts: list[np.ndarray]) -> list[np.ndarray]:
        """Rows of ``Lambda' [Z X y]' [Z X y] Lambda + diag(I, 0)`` for factor transforms ``Ts``."""
        lay = self.layout
        out: list[np.ndarray] = []
        for lvl in range(lay.n_levels):
            off = lay.offsets[lvl]
            s = self.raw_rows[lvl].copy()
            m, K, W = s.shape
            for seg in lay.segments:
                if seg.start < off:
                    continue
                c0, w = seg.start - off, seg.m * seg.K
                blk = s[:, :, c0:c0 + w].reshape(m, K, seg.m, seg.K)
                s[:, :, c0:c0 + w] = (blk @ Ts[seg.factor]).reshape(m, K, w)
            if lvl < self.n_chain:
                s = np.swapaxes(Ts[self.plan.chain[lvl]], 0, 1) @ s
            elif lvl < self.n_random:
                for seg in lay.segments:
                    if seg.start < off:
                        continue
                    r0, w = seg.start - off, seg.m * seg.K
                    seg_rows = s[0, r0:r0 + w, :].reshape(seg.m, seg.K, W)
                    s[0, r0:r0 + w, :] = (Ts[seg.factor].T @ seg_rows).reshape(w, W)
            if lvl < self.n_random:
                idx = np.arange(K)
                s[:, idx, idx] += 1.0
            out.append(s)
        return out

    # ------------------------------------------------------------------ factorisation
    def factorize(self, Ts: list[np.ndarray], keep: bool = False) -> Factorization:
        """Eliminate all levels; raise ``numpy.linalg.LinAlgError`` if not positive definite."""
        lay = self.layout
        rows = self.scaled_rows(Ts)
        Ls: list[np.ndarray] = []
        Gs: list[np.ndarray] = []
        logdet = 0.0
        first_single = self.n_chain  # first level with a single group (root or fixed)
        for i in range(self.n_random):
            K = lay.sizes[i]
            L = _chol(rows[i][:, :, :K])
            G = _solve_lower(L, rows[i][:, :, K:])
            logdet += 2.0 * float(np.sum(np.log(np.diagonal(L, axis1=1, axis2=2))))
            base = lay.offsets[i + 1]
            for a in range(i + 1, self.n_chain):
                e, Ka = lay.offsets[a] - base, lay.sizes[a]
                U = np.swapaxes(G[:, :, e:e + Ka], 1, 2) @ G[:, :, e:]
                upd = self.sum_ops[(i, a)] @ U.reshape(U.shape[0], -1)
                rows[a] -= upd.reshape(rows[a].shape)
            # Single-group ancestors (root, fixed): one GEMM over all stacked group rows.
            s0 = max(first_single, i + 1)
            e = lay.offsets[s0] - base
            Gt = G[:, :, e:].reshape(-1, G.shape[2] - e)
            upd = Gt.T @ Gt
            for b in range(s0, lay.n_levels):
                eb = lay.offsets[b] - lay.offsets[s0]
                rows[b][0] -= upd[eb:eb + lay.sizes[b], eb:]
            if keep:
                Ls.append(L)
                Gs.append(G)
        LM = _chol(rows[-1])[0]
        return Factorization(Ls, Gs, LM, logdet)

    # ------------------------------------------------------------------ solves
    def _ancestors(self, i: int) -> list[tuple[int, int, np.ndarray | None]]:
        """Random levels coarser than ``i``: (level, local column offset, parent map)."""
        lay = self.layout
        base = lay.offsets[i + 1]
        out: list[tuple[int, int, np.ndarray | None]] = []
        for a in range(i + 1, self.n_random):
            pm = self.plan.parent_maps.get((i, a)) if a < self.n_chain else None
            out.append((a, lay.offsets[a] - base, pm))
        return out

    def back_solve(self, fz: Factorization, rhs: list[np.ndarray]) -> list[np.ndarray]:
        """Solve ``L' u = rhs`` (random part only); ``rhs[i]`` has shape ``(m_i, K_i, d)``."""
        u: list[np.ndarray] = [np.empty(0)] * self.n_random
        for i in range(self.n_random - 1, -1, -1):
            acc = rhs[i].copy()
            G = fz.G[i]
            for a, e, pm in self._ancestors(i):
                Ka = self.layout.sizes[a]
                ua = u[a][pm] if pm is not None else u[a]
                acc -= G[:, :, e:e + Ka] @ ua
            u[i] = _solve_upper_t(fz.L[i], acc)
        return u

    def diag_inverse(self, fz: Factorization, full: bool = False) -> list[np.ndarray]:
        """Per random level, ``(m, K, K)`` diagonal blocks of ``(Lambda'Z'Z Lambda + I)^{-1}``.

        With ``full``, the whole rows ``(m, K, K + n_ancestor_columns)``: the inverse on the
        sparsity pattern of the system (needed for the gradient of ``log|L|^2``).

        Takahashi-style selected inversion from the coarsest level down: a group only needs
        the inverse's blocks among its own ancestors, which are computed first.
        """
        lay = self.layout
        sig: list[np.ndarray] = [np.empty(0)] * self.n_random
        for i in range(self.n_random - 1, -1, -1):
            L, K = fz.L[i], lay.sizes[i]
            m = L.shape[0]
            eye = np.broadcast_to(np.eye(K), (m, K, K))
            Linv = _solve_lower(L, eye)
            anc = self._ancestors(i)
            nA = lay.offsets[self.n_random] - lay.offsets[i + 1]
            if nA == 0:
                sig[i] = np.swapaxes(Linv, 1, 2) @ Linv
                continue
            GA = fz.G[i][:, :, :nA]

            def block(a: int, ea: int, pa: np.ndarray | None, b: int) -> np.ndarray:
                # Inverse block between ancestor levels a <= b at this level's groups.
                src = sig[a] if pa is None else sig[a][pa]
                cb = lay.offsets[b] - lay.offsets[a]
                return src[:, :, cb:cb + lay.sizes[b]]

            GZ = np.zeros((m, K, nA))
            for b, eb, pb in anc:
                Kb = lay.sizes[b]
                for a, ea, pa in anc:
                    Ka = lay.sizes[a]
                    blk = (block(a, ea, pa, b) if a <= b
                           else np.swapaxes(block(b, eb, pb, a), 1, 2))
                    GZ[:, :, eb:eb + Kb] += GA[:, :, ea:ea + Ka] @ blk
            ZjA = -_solve_upper_t(L, GZ)
            Zjj = np.swapaxes(Linv, 1, 2) @ (Linv - GA @ np.swapaxes(ZjA, 1, 2))
            sig[i] = np.concatenate([Zjj, ZjA], axis=2)
        if full:
            return sig
        return [s[:, :, :lay.sizes[i]] for i, s in enumerate(sig)]

    def ztz_times(self, v: list[np.ndarray]) -> list[np.ndarray]:
        """``Z'Z v`` for per-level ``v[i]`` of shape ``(m_i, K_i, d)`` (unscaled statistics).

        The rows hold each coupling once (finer level to coarser); the transposed
        contribution to the coarser level is a grouped sum over its child groups.
        """
        lay = self.layout
        out = [np.zeros_like(vi) for vi in v]
        for i in range(self.n_random):
            raw = self.raw_rows[i]
            K = lay.sizes[i]
            out[i] += raw[:, :, :K] @ v[i]
            for a, e, pm in self._ancestors(i):
                Ka = lay.sizes[a]
                c = K + e
                blk = raw[:, :, c:c + Ka]
                va = v[a][pm] if pm is not None else v[a]
                out[i] += blk @ va
                back = np.swapaxes(blk, 1, 2) @ v[i]  # (m_i, K_a, d)
                if pm is not None:
                    out[a] += (self.sum_ops[(i, a)] @ back.reshape(back.shape[0], -1)
                               ).reshape(out[a].shape)
                else:
                    out[a] += back.sum(axis=0, keepdims=True)
        return out
