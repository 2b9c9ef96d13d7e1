"""Crossed grouping factors: a sparse coupling between a block-diagonal and a dense block.

For crossed factors (store x product, user x item, student x lecturer) the blocked
elimination of :mod:`._factor` stores every chain group's coupling to the crossed *root* as a
dense row of ``q_root`` numbers; its Schur update then costs ``m * q_root^2`` a likelihood
evaluation, and its memory is ``m * q_root`` (50k users x 5k items: 2 GB).

This module takes MixedModels.jl's blocked Cholesky instead (Bates et al., "MixedModels.jl",
the ``BlockedSparse`` layout):

* the largest factor comes first; its block of ``Lambda'Z'Z Lambda + I`` is block
  diagonal (one ``K0 x K0`` block per group), so it is eliminated by batched small Cholesky
  factors with no fill at all;
* its coupling to every other factor, ``Lambda_0'Z_0'Z_R Lambda_R``, is sparse with the
  fixed pattern of the (group, other group) pairs that occur in the data; it is kept as a
  CSR matrix whose pattern (and so its fill-reducing block order) is computed once, and
  only whose values change with theta;
* the Schur complement of the remaining factors fills in (in a user x item design every
  pair of items shares some user), so it is one dense block, factorised by LAPACK.

Memory is the non-zeros of the coupling plus the dense block: O(nnz + q_root^2), not
O(q^2).  The gradient's ``tr(A^{-1} dA)`` needs ``A^{-1}`` only on the pattern of ``Z'Z``:
the dense block's inverse, and its products with each sparse row taken only at that row's
own columns (Takahashi's selected inversion), never the dense ``m x q_root`` product.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from scipy.linalg import lapack

from ._blocks import Factor, Plan
from ._factor import Factorization, _chol, _solve_lower, _solve_upper_t
from ._suffstats import ColumnAffine, Layout, Segment, _affine, compute_rows, make_layout, root_chunks
from ._theta import ThetaSpec, profiled_criterion

__all__ = ["CrossedSystem", "blocked_cost", "crossed_cost", "crossed_criterion_and_gradient", "crossed_plan",
           "moment_start"]

#: Selected-inversion pairs processed per chunk (bounds the temporaries to ~100 MB).
_PAIR_CHUNK = 1 << 22

#: Below this diagonal entry of a factor's ``T`` the gradient of ``log|A|`` is taken on the
#: pattern of ``Z'Z`` instead of through ``T^{-1}`` (which cancels there: ``I - A^{-1}``
#: is ``O(T^2)``).
_INVERTIBLE_T = 1e-2


def blocked_cost(plan: Plan) -> float:
    """Multiply-adds of one evaluation of the blocked (dense-root) elimination of ``plan``."""
    q_root = sum(plan.factors[f].m * plan.factors[f].K for f in plan.root)
    chain = sum(plan.factors[f].m * plan.factors[f].K for f in plan.chain[:1])
    return float(chain) * q_root ** 2 + q_root ** 3 / 3.0


def crossed_cost(plan: Plan) -> float:
    """Multiply-adds of the dense block of the crossed elimination (its sparse work is O(nnz))."""
    sizes = sorted((f.m * f.K for f in plan.factors), reverse=True)
    return float(sum(sizes[1:])) ** 3 / 3.0


def crossed_plan(plan: Plan) -> Plan:
    """The plan with the largest factor alone in the chain and every other factor in the root."""
    first = max(range(len(plan.factors)), key=lambda f: (plan.factors[f].m * plan.factors[f].K, -f))
    return Plan(plan.factors, [first], [f for f in range(len(plan.factors)) if f != first], {})


@dataclass(frozen=True)
class Coupling:
    """Fixed sparsity of ``Z_0'Z_R`` (first factor x root columns), stored per root segment.

    Attributes
    ----------
    groups, others : list of numpy.ndarray
        Per root segment, the first factor's group and the segment's group of each pair
        that occurs in the data (``P_s`` pairs).
    blocks : list of numpy.ndarray
        Per root segment, ``(P_s, K0, K_s)`` raw cross-products of the pair's columns.
    indices, indptr : numpy.ndarray
        CSR pattern of the scalar ``(m0 K0) x q_root`` matrix.
    order : numpy.ndarray
        CSR data = ``concatenate([b.ravel() for b in blocks])[order]``.
    """

    groups: list[np.ndarray]
    others: list[np.ndarray]
    blocks: list[np.ndarray]
    indices: np.ndarray
    indptr: np.ndarray
    order: np.ndarray

    @classmethod
    def from_pairs(cls, segs: list[Segment], K0: int, q_root: int, r_off: int, m0: int,
                   groups: list[np.ndarray], others: list[np.ndarray], blocks: list[np.ndarray]) -> Coupling:
        """Index the scalar CSR pattern of the given per-segment pairs."""
        rows, cols = [], []
        for seg, g, h in zip(segs, groups, others):
            a = np.arange(K0)[None, :, None]
            b = np.arange(seg.K)[None, None, :]
            rows.append(np.broadcast_to(g[:, None, None] * K0 + a, (g.size, K0, seg.K)).ravel())
            cols.append(np.broadcast_to((seg.start - r_off) + h[:, None, None] * seg.K + b,
                                        (g.size, K0, seg.K)).ravel())
        r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
        order = np.lexsort((c, r))
        indptr = np.zeros(m0 * K0 + 1, dtype=np.int64)
        np.cumsum(np.bincount(r, minlength=m0 * K0), out=indptr[1:])
        return cls(groups, others, blocks, c[order].astype(np.int32), indptr, order)

    def aligned(self, block_values: list[np.ndarray]) -> np.ndarray:
        """Per-segment ``(P_s, K0, K_s)`` values in CSR data order (the inverse of :meth:`split`)."""
        flat = np.concatenate([v.ravel() for v in block_values]) if block_values else np.zeros(0)
        return flat[self.order]

    def csr(self, block_values: list[np.ndarray], shape: tuple[int, int]) -> sp.csr_matrix:
        """The scalar matrix with these per-segment ``(P_s, K0, K_s)`` values on the pattern."""
        return sp.csr_matrix((self.aligned(block_values), self.indices, self.indptr), shape=shape)

    def split(self, data: np.ndarray) -> list[np.ndarray]:
        """Per-segment ``(P_s, K0, K_s)`` blocks of values aligned with the CSR data."""
        flat = np.empty_like(data)
        flat[self.order] = data
        out, pos = [], 0
        for blk in self.blocks:
            out.append(flat[pos:pos + blk.size].reshape(blk.shape))
            pos += blk.size
        return out


@dataclass
class CrossedFactorization(Factorization):
    """:class:`Factorization` of the crossed system.

    ``L`` is ``[L0 (m0, K0, K0), L_root (1, q_root, q_root)]``; ``G`` holds only the columns
    of ``[X y]`` (``R_ZX`` and ``c_u``) of each level, and ``S`` the sparse
    ``L0^{-1} Lambda_0'Z_0'Z_R Lambda_R`` (CSR on the coupling's pattern).
    """

    S: sp.csr_matrix | None = None
    pair_products: np.ndarray | None = None


class CrossedSystem:
    """Sufficient statistics of a crossed model and its factorisation for any theta.

    Parameters
    ----------
    plan : Plan
        A plan from :func:`crossed_plan` (one chain factor, all others in the root).
    layout : Layout
        ``make_layout(plan, p)``.
    raw_rows : list of numpy.ndarray
        ``[Z0'[Z0 X y] (m0, K0, K0 + p + 1), Z_R'[Z_R X y] (1, q_root, q_root + p + 1),
        [X y]'[X y] (1, p + 1, p + 1)]``: like :class:`._factor.System`'s rows, except that
        the first level's coupling to the root is kept apart, sparse, in ``coupling``.
    coupling : Coupling
        Raw ``Z_0'Z_R``.
    """

    n_chain = 1
    n_random = 2

    def __init__(self, plan: Plan, layout: Layout, raw_rows: list[np.ndarray], coupling: Coupling) -> None:
        self.plan, self.layout, self.raw_rows, self.coupling = plan, layout, raw_rows, coupling
        self.K0 = layout.sizes[0]
        self.m0 = layout.m[0]
        self.q_root = layout.sizes[1]
        self.root_segments = [s for s in layout.segments if s.start >= layout.offsets[1]]
        self.raw_coupling = coupling.csr(coupling.blocks, (self.m0 * self.K0, self.q_root))
        # S' shares one pattern for every theta: its CSR structure and the permutation of
        # S's values into it are found once (a transpose per evaluation costs as much).
        probe = sp.csr_matrix((np.arange(1.0, self.raw_coupling.nnz + 1.0), coupling.indices, coupling.indptr),
                              shape=self.raw_coupling.shape).T.tocsr()
        self._t_indices, self._t_indptr = probe.indices, probe.indptr
        self._t_perm = probe.data.astype(np.int64) - 1
        self._pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._half_pairs: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None

    # ------------------------------------------------------------------ building
    @classmethod
    def from_data(cls, X: np.ndarray, y: np.ndarray, plan: Plan, p: int, xy_map: ColumnAffine | None,
                  factor_maps: list[ColumnAffine], weights: np.ndarray | None) -> CrossedSystem:
        """One pass over the rows: block-diagonal, dense-root and sparse-coupling statistics."""
        layout = make_layout(plan, p)
        f0 = plan.chain[0]
        # the first level and the fixed level are the blocked system's rows of a chain-only plan
        lone = Plan(plan.factors, [f0], [], {})
        rows0 = compute_rows(X, y, lone, make_layout(lone, p), xy_map, factor_maps, weights)
        root = _root_statistics(X, y, plan, layout, xy_map, factor_maps, weights)
        segs = [s for s in layout.segments if s.start >= layout.offsets[1]]
        groups, others, blocks = [], [], []
        fac0 = plan.factors[f0]
        z0 = _affine(list(fac0.columns), factor_maps[f0])
        for seg in segs:
            g, h, blk = _pair_blocks(fac0, z0, plan.factors[seg.factor],
                                     _affine(list(plan.factors[seg.factor].columns), factor_maps[seg.factor]), weights)
            groups.append(g)
            others.append(h)
            blocks.append(blk)
        coupling = Coupling.from_pairs(segs, fac0.K, layout.sizes[1], layout.offsets[1], fac0.m, groups, others, blocks)
        return cls(plan, layout, [rows0[0], root[None], rows0[1]], coupling)

    # ------------------------------------------------------------------ scaling helpers
    def _root_diagonal(self, Ts: list[np.ndarray]) -> np.ndarray | None:
        """``diag(Lambda_R)`` when every root factor has one column (then it is diagonal)."""
        if any(seg.K != 1 for seg in self.root_segments):
            return None
        return np.concatenate([np.full(seg.m, Ts[seg.factor][0, 0]) for seg in self.root_segments])

    def _root_left(self, M: np.ndarray, Ts: list[np.ndarray], transpose: bool) -> np.ndarray:
        """``Lambda_R' M`` (``transpose``) or ``Lambda_R M`` for ``M`` with ``q_root`` rows."""
        lam = self._root_diagonal(Ts)
        if lam is not None:
            return lam[:, None] * M
        out = np.empty_like(M)
        r_off = self.layout.offsets[1]
        for seg in self.root_segments:
            r0, w = seg.start - r_off, seg.m * seg.K
            T = Ts[seg.factor].T if transpose else Ts[seg.factor]
            out[r0:r0 + w] = (T @ M[r0:r0 + w].reshape(seg.m, seg.K, -1)).reshape(w, -1)
        return out

    def _root_right(self, M: np.ndarray, Ts: list[np.ndarray]) -> np.ndarray:
        """``M Lambda_R`` for ``M`` with ``q_root`` columns."""
        lam = self._root_diagonal(Ts)
        if lam is not None:
            return M * lam[None, :]
        out = np.empty_like(M)
        r_off = self.layout.offsets[1]
        for seg in self.root_segments:
            c0, w = seg.start - r_off, seg.m * seg.K
            out[:, c0:c0 + w] = (M[:, c0:c0 + w].reshape(-1, seg.m, seg.K) @ Ts[seg.factor]).reshape(-1, w)
        return out

    # ------------------------------------------------------------------ factorisation
    def factorize(self, Ts: list[np.ndarray], keep: bool = False) -> CrossedFactorization:
        """Eliminate the first factor, then the dense root, then the fixed level.

        Raises ``numpy.linalg.LinAlgError`` if the system is not positive definite.
        """
        K0, q = self.K0, self.q_root
        T0 = Ts[self.plan.chain[0]]
        r0 = self.raw_rows[0]
        D = np.swapaxes(T0, 0, 1) @ r0[:, :, :K0] @ T0
        idx = np.arange(K0)
        D[:, idx, idx] += 1.0
        L0 = _chol(D)
        GF0 = _solve_lower(L0, np.swapaxes(T0, 0, 1) @ r0[:, :, K0:])
        cp = self.coupling
        lam = self._root_diagonal(Ts)
        if K0 == 1 and lam is not None:  # scalar terms only: S = diag(1/L0) C diag(lambda)
            data = self.raw_coupling.data * (T0[0, 0] / np.repeat(L0[:, 0, 0], np.diff(cp.indptr)))
            data *= lam[cp.indices]
            S = sp.csr_matrix((data, cp.indices, cp.indptr), shape=(self.m0, q))
        else:
            scaled = [_solve_lower(L0[g], T0.T @ blk @ Ts[seg.factor])
                      for seg, g, blk in zip(self.root_segments, cp.groups, cp.blocks)]
            S = cp.csr(scaled, (self.m0 * K0, q))
        root = self.raw_rows[1][0]
        # the dense block, C-contiguous: read in Fortran order it is itself (symmetric), so
        # LAPACK factors it in place with no transposing copy (5k x 5k: 0.4 s each)
        if lam is not None:
            B = root[:, :q] * lam[:, None]
            B *= lam[None, :]
        else:
            B = np.ascontiguousarray(self._root_right(self._root_left(root[:, :q], Ts, transpose=True), Ts))
        B[np.arange(q), np.arange(q)] += 1.0
        # Schur update of the dense block's lower triangle (all LAPACK reads): one scatter
        # of the products of every pair of entries in a row of S
        i, j, flat, _, _ = self._half_pair_index()
        prod = S.data[i] * S.data[j]
        B -= np.bincount(flat, weights=prod, minlength=q * q).reshape(q, q)
        St = sp.csr_matrix((S.data[self._t_perm], self._t_indices, self._t_indptr), shape=(q, S.shape[0]))
        gf0 = GF0.reshape(-1, GF0.shape[2])
        RF = self._root_left(root[:, q:], Ts, transpose=True) - St @ gf0
        # C lower = Fortran upper: dpotrf(upper) of B.T gives U = L' in Fortran order, i.e. L in C order
        U, info = lapack.dpotrf(B.T, lower=0, overwrite_a=1, clean=1)
        if info != 0:
            raise np.linalg.LinAlgError("the dense block is not positive definite")
        LR = U.T
        GFR = sla.solve_triangular(U, RF, lower=False, trans="T", check_finite=False)
        M = self.raw_rows[2][0] - gf0.T @ gf0 - GFR.T @ GFR
        LM = _chol(M[None])[0]
        logdet = 2.0 * float(np.sum(np.log(np.diagonal(L0, axis1=1, axis2=2)))) + 2.0 * float(np.sum(np.log(np.diag(LR))))
        return CrossedFactorization([L0, LR[None]], [GF0, GFR[None]], LM, logdet, S, prod)

    # ------------------------------------------------------------------ solves
    def back_solve(self, fz: Factorization, rhs: list[np.ndarray]) -> list[np.ndarray]:
        """Solve ``L' u = rhs`` (random part only); ``rhs`` is ``[(m0, K0, d), (1, q_root, d)]``."""
        assert isinstance(fz, CrossedFactorization) and fz.S is not None
        uR = sla.solve_triangular(fz.L[1][0].T, rhs[1][0], lower=False, check_finite=False)
        acc = rhs[0] - (fz.S @ uR).reshape(rhs[0].shape)
        return [_solve_upper_t(fz.L[0], acc), uR[None]]

    def _pair_index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every pair (i, j) of CSR entries in one row, and ``col[j] * q + col[i]`` (built once)."""
        if self._pairs is None:
            ptr = self.coupling.indptr
            lens = np.diff(ptr)
            sq = lens * lens
            total = int(sq.sum())
            first = np.repeat(ptr[:-1], sq)
            k = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(sq) - sq, sq)
            ln = np.repeat(lens, sq)
            i = (first + k // ln).astype(np.int32)
            j = (first + k % ln).astype(np.int32)
            col = self.coupling.indices.astype(np.int64)
            # the dense block's inverse is read from its lower triangle (LAPACK's dpotri)
            self._pairs = (i, j, np.maximum(col[i], col[j]) * self.q_root + np.minimum(col[i], col[j]))
        return self._pairs

    def _half_pair_index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Pairs ``i <= j`` of entries in one row: their positions, their lower-triangle index
        in the dense block, their weight in a quadratic form (2 off the diagonal), and the
        first pair of every non-empty row."""
        if self._half_pairs is None:
            ptr = self.coupling.indptr
            lens = np.diff(ptr)
            tri = lens * (lens + 1) // 2
            total = int(tri.sum())
            row_start = np.cumsum(tri) - tri
            k = np.arange(total, dtype=np.int64) - np.repeat(row_start, tri)
            ln = np.repeat(lens, tri)
            # k-th pair (a, b), a <= b, of a row of length l in row-major upper-triangle order
            a = (ln - 0.5 - np.sqrt((ln + 0.5) ** 2 - 2.0 * k)).astype(np.int64) + 1
            a = np.clip(a, 0, None)
            start_a = a * ln - a * (a - 1) // 2
            fix = start_a > k
            a[fix] -= 1
            start_a = a * ln - a * (a - 1) // 2
            b = a + (k - start_a)
            first = np.repeat(ptr[:-1], tri)
            i, j = first + a, first + b  # intp: int32 indices are converted on every use
            col = self.coupling.indices.astype(np.int64)
            flat = col[j] * self.q_root + col[i]  # j >= i, columns ascending in a row
            weight = np.where(i == j, 1.0, 2.0)
            self._half_pairs = (i, j, flat, weight, row_start[tri > 0])
        return self._half_pairs

    def _quadratic_forms(self, fz: CrossedFactorization, sig_lower: np.ndarray) -> np.ndarray:
        """Per row ``r`` of ``S`` (one per group when ``K0 = 1``): ``S_r Sigma_RR S_r'``."""
        assert fz.S is not None and fz.pair_products is not None
        S = fz.S
        _, _, flat, weight, starts = self._half_pair_index()
        vals = fz.pair_products * weight
        vals *= sig_lower.ravel()[flat]
        out = np.zeros(S.shape[0])
        rows = np.flatnonzero(np.diff(self.coupling.indptr) > 0)
        if vals.size:
            out[rows] = np.add.reduceat(vals, starts)
        return out

    def _on_pattern(self, S: sp.csr_matrix, sig_root: np.ndarray) -> np.ndarray:
        """``(S Sigma_RR)`` at the pattern of ``S`` (aligned with ``S.data``)."""
        i, j, flat = self._pair_index()
        sig = sig_root.ravel()
        out = np.zeros(S.data.size)
        for a in range(0, i.size, _PAIR_CHUNK):
            sl = slice(a, a + _PAIR_CHUNK)
            out += np.bincount(i[sl], weights=S.data[j[sl]] * sig[flat[sl]], minlength=S.data.size)
        return out

    def _row_products(self, P: np.ndarray, Q: np.ndarray) -> np.ndarray:
        """Per first-factor group, ``(m0, K0, K0)`` sums ``sum_c P[(g,a), c] Q[(g,b), c]`` over its pattern.

        The ``K0`` rows of one group share their columns in the same order, so entry ``k``
        of row ``(g, a)`` and entry ``k`` of row ``(g, b)`` sit in the same column.
        """
        K0, m0 = self.K0, self.m0
        ptr = self.coupling.indptr
        lens = np.diff(ptr[::K0]) // K0  # entries per row of each group
        grp = np.repeat(np.arange(m0), lens)
        pos0 = np.arange(grp.size) - np.repeat(np.cumsum(lens) - lens, lens) + np.repeat(ptr[:-1:K0], lens)
        out = np.zeros((m0, K0, K0))
        for a in range(K0):
            for b in range(K0):
                out[:, a, b] = np.bincount(grp, weights=P[pos0 + a * lens[grp]] * Q[pos0 + b * lens[grp]], minlength=m0)
        return out

    def selected_inverse(self, fz: Factorization, pattern: bool = True
                         ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """``A^{-1}`` on the pattern: ``(m0, K0, K0)`` diagonal blocks, the coupling
        entries (aligned with ``fz.S.data``; ``None`` unless ``pattern``) and the dense root
        block (its lower triangle only: the upper one holds LAPACK's leftovers)."""
        assert isinstance(fz, CrossedFactorization) and fz.S is not None
        L0, LR = fz.L[0], fz.L[1][0]
        q, K0 = self.q_root, self.K0
        sig_root = _inverse_lower(LR) if q else np.zeros((0, 0))
        sig_0r = None
        if pattern or K0 > 1:
            t = self._on_pattern(fz.S, sig_root)  # (G Sigma_RR) on the pattern
            # Sigma_0R = -L0^{-T} (G Sigma_RR): mix the K0 rows of each group
            sig_0r = -self._mix_rows(L0, t) if pattern else None
            H = self._row_products(fz.S.data, t)  # G Sigma_RR G'
        else:
            H = self._quadratic_forms(fz, sig_root)[:, None, None]
        eye = np.broadcast_to(np.eye(K0), L0.shape)
        Linv = _solve_lower(L0, eye)
        LinvT = np.swapaxes(Linv, 1, 2)
        sig_00 = LinvT @ Linv + LinvT @ H @ Linv
        return sig_00, sig_0r, sig_root

    def _mix_rows(self, L0: np.ndarray, t: np.ndarray) -> np.ndarray:
        """``L0_g^{-T}`` applied to the ``K0`` rows of each group of CSR-aligned values ``t``."""
        if self.K0 == 1:
            return t / np.repeat(L0[:, 0, 0], np.diff(self.coupling.indptr))
        blocks = self.coupling.split(t)
        return self.coupling.aligned([_solve_upper_t(L0[g], blk) for g, blk in zip(self.coupling.groups, blocks)])

    def diag_inverse(self, fz: Factorization, full: bool = False) -> list[np.ndarray]:
        """``[(m0, K0, K0) diagonal blocks, (1, q_root, q_root) root block]`` of ``A^{-1}``;
        the root block is exact on its lower triangle and its per-group diagonal blocks."""
        if full:
            raise ValueError("the crossed system gives its selected inverse by selected_inverse()")
        sig_00, _, sig_root = self.selected_inverse(fz, pattern=False)
        # only the root's diagonal blocks are read (conditional covariances); mirror those
        r_off = self.layout.offsets[1]
        for seg in self.root_segments:
            if seg.K > 1:
                r0 = seg.start - r_off
                for a in range(seg.K):
                    for b in range(a + 1, seg.K):
                        rows = r0 + np.arange(seg.m) * seg.K
                        sig_root[rows + a, rows + b] = sig_root[rows + b, rows + a]
        return [sig_00, sig_root[None]]


def _inverse_lower(L: np.ndarray) -> np.ndarray:
    """``(L L')^{-1}`` as a C-contiguous array whose lower triangle is valid (LAPACK's dpotri).

    ``L`` is the transpose of a Fortran-ordered upper factor ``U = L'`` (see ``factorize``);
    dpotri's Fortran upper triangle is the C lower one, so the flat indices of the pattern
    read it with no transposing copy (5k x 5k: 0.4 s each).
    """
    inv, info = lapack.dpotri(np.asfortranarray(L.T), lower=0)
    if info != 0:
        raise np.linalg.LinAlgError("the dense block is singular")
    return np.ascontiguousarray(inv.T)


def _symmetric(lower: np.ndarray) -> np.ndarray:
    """The symmetric matrix whose lower triangle ``lower`` holds."""
    return np.tril(lower) + np.tril(lower, -1).T


def moment_start(sysm: CrossedSystem, spec: ThetaSpec) -> np.ndarray:
    """A start for theta: each intercept-only term's ANOVA (method of moments) estimate.

    For every such factor alone, ``tau^2 = (MS_between - MS_within) / n_0`` from the
    per-group residual sums of the OLS fit (all in the sufficient statistics), and
    ``theta = tau / sigma``, kept within ``[0.05, 10]`` (a start on the zero bound is a
    stationary point).  Other terms start at lme4's identity.  Starting near the optimum
    saves about a third of the evaluations of a large crossed fit, each a dense Cholesky
    factor and inverse; the optimum itself does not depend on the start.
    """
    theta = spec.start()
    p = sysm.layout.p
    M = sysm.raw_rows[2][0]
    try:
        beta = np.linalg.solve(M[:p, :p], M[:p, p]) if p else np.zeros(0)
    except np.linalg.LinAlgError:
        return theta
    c = np.append(-beta, 1.0)
    rss = float(c @ M @ c)
    plan, K0 = sysm.plan, sysm.K0
    stats: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # factor -> (counts, residual sums)
    f0 = plan.chain[0]
    if K0 == 1 and plan.factors[f0].is_ones[0]:
        r0 = sysm.raw_rows[0]
        stats[f0] = (r0[:, 0, 0], r0[:, 0, 1:] @ c)
    rawR, q, r_off = sysm.raw_rows[1][0], sysm.q_root, sysm.layout.offsets[1]
    for seg in sysm.root_segments:
        if seg.K == 1 and plan.factors[seg.factor].is_ones[0]:
            rows = slice(seg.start - r_off, seg.start - r_off + seg.m)
            stats[seg.factor] = (np.diag(rawR[rows, rows]).copy(), rawR[rows, q:] @ c)
    for f, (cnt, sums) in stats.items():
        m, N = cnt.size, float(cnt.sum())
        keep = cnt > 0
        ss_between = float(np.sum(sums[keep] ** 2 / cnt[keep]))
        if m < 2 or N <= m:
            continue
        ms_within = (rss - ss_between) / (N - m)
        n0 = (N - float(np.sum(cnt ** 2)) / N) / (m - 1)
        if ms_within <= 0 or n0 <= 0:
            continue
        tau2 = (ss_between / (m - 1) - ms_within) / n0
        b = plan.factors[f].blocks[0]
        t = spec.entries.index((b, 0, 0))
        theta[t] = float(np.clip(np.sqrt(max(tau2, 0.0) / ms_within), 0.05, 10.0))
    return theta


def _pair_blocks(fac0: Factor, z0: list[np.ndarray], fac: Factor, zs: list[np.ndarray],
                 weights: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (group of ``fac0``, group of ``fac``) pairs in the data and their ``K0 x K`` cross-products."""
    key = fac0.group_index * np.int64(fac.m) + fac.group_index
    uniq, inv = np.unique(key, return_inverse=True)
    blocks = np.empty((uniq.size, fac0.K, fac.K))
    for a in range(fac0.K):
        for b in range(fac.K):
            w = z0[a] * zs[b]
            if weights is not None:
                w = w * weights
            blocks[:, a, b] = np.bincount(inv, weights=w, minlength=uniq.size)
    return uniq // fac.m, uniq % fac.m, blocks


def _root_statistics(X: np.ndarray, y: np.ndarray, plan: Plan, layout: Layout, xy_map: ColumnAffine | None,
                     factor_maps: list[ColumnAffine], weights: np.ndarray | None) -> np.ndarray:
    """``Z_R'[Z_R X y]`` of the root factors, ``(q_root, q_root + p + 1)``, chunk by chunk."""
    q = layout.sizes[1]
    out = np.zeros((q, q + X.shape[1] + 1))
    for _, zr, zrt, xy in root_chunks(X, y, plan, xy_map, factor_maps, weights):
        out[:, :q] += (zrt @ zr).toarray()
        out[:, q:] += zrt @ xy
    return out


def crossed_criterion_and_gradient(sysm: CrossedSystem, spec: ThetaSpec, theta: np.ndarray, n: int,
                                   p: int, reml: bool) -> tuple[float, np.ndarray]:
    """Profiled criterion and its exact gradient (see :mod:`._gradient` for the three parts).

    ``d log|A| / d T_f = 2 sum_{g in f} [Z'Z Lambda A^{-1}]_{gg}``: the diagonal blocks of
    a product that only reads ``A^{-1}`` on the pattern of ``Z'Z``.
    """
    plan = sysm.plan
    Ts = spec.factor_T(theta, plan)
    fz = sysm.factorize(Ts, keep=True)
    assert fz.S is not None
    crit = profiled_criterion(fz, n, p, reml)
    f0, K0, q = plan.chain[0], sysm.K0, sysm.q_root
    T0 = Ts[f0]
    LX = fz.LM[:p, :p]
    beta = sla.solve_triangular(LX, fz.LM[p, :p], lower=True, trans="T") if p else np.zeros(0)
    r2 = float(fz.LM[p, p]) ** 2
    c = np.concatenate([-beta, [1.0]])
    sol = sysm.back_solve(fz, fz.G)  # A^{-1} Lambda'Z'[X y]
    lam0 = T0 @ sol[0]
    lamR = sysm._root_left(sol[1][0], Ts, transpose=False)
    C = sysm.raw_coupling
    raw0, rawR = sysm.raw_rows[0], sysm.raw_rows[1][0]
    ztz0 = raw0[:, :, :K0] @ lam0 + (C @ lamR).reshape(lam0.shape)
    ztzR = C.T @ lam0.reshape(-1, p + 1) + rawR[:, :q] @ lamR
    W0 = raw0[:, :, K0:] - ztz0
    WR = rawR[:, q:] - ztzR
    grads = [np.zeros((fac.K, fac.K)) for fac in plan.factors]
    coef_r2 = (n - p if reml else n) / r2
    minv = sla.cho_solve((LX, True), np.eye(p)) if (reml and p) else None

    def pq(W: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        P, Q = [W @ c[:, None]], [-2.0 * coef_r2 * (s @ c[:, None])]
        if minv is not None:
            P.append(W[..., :p])
            Q.append(-2.0 * (s[..., :p] @ minv))
        return np.concatenate(P, axis=-1), np.concatenate(Q, axis=-1)

    P0, Q0 = pq(W0, sol[0])
    grads[f0] += np.einsum("gaw,gkw->ak", P0, Q0)
    PR, QR = pq(WR, sol[1][0])
    r_off = sysm.layout.offsets[1]
    for seg in sysm.root_segments:
        r0, w = seg.start - r_off, seg.m * seg.K
        shp = (seg.m, seg.K, -1)
        grads[seg.factor] += np.einsum("gaw,gkw->ak", PR[r0:r0 + w].reshape(shp), QR[r0:r0 + w].reshape(shp))
    if all(np.min(np.abs(np.diag(Ts[f]))) >= _INVERTIBLE_T for f in range(len(plan.factors))):
        _logdet_gradient_diagonal(sysm, fz, Ts, grads)
    else:
        _logdet_gradient_pattern(sysm, fz, Ts, grads)
    return crit, spec.gradient(grads, plan)


def _logdet_gradient_diagonal(sysm: CrossedSystem, fz: CrossedFactorization, Ts: list[np.ndarray],
                              grads: list[np.ndarray]) -> None:
    """``d log|A| / d T_f = 2 T_f^{-T} sum_{g in f} (I - Sigma_gg)`` for invertible ``T_f``.

    Row block ``g`` of ``Lambda'(Z'Z Lambda) = A - I`` is ``T_f'`` times row block ``g`` of
    ``Z'Z Lambda``, so ``[Z'Z Lambda A^{-1}]_gg = T_f^{-T} [(A - I) A^{-1}]_gg``: only the
    diagonal blocks of ``A^{-1}`` are read.
    """
    plan = sysm.plan
    sig_00, _, sig_root = sysm.selected_inverse(fz, pattern=False)
    blocks = {plan.chain[0]: sig_00}
    r_off = sysm.layout.offsets[1]
    for seg in sysm.root_segments:
        r0, w = seg.start - r_off, seg.m * seg.K
        sub = sig_root[r0:r0 + w, r0:r0 + w].reshape(seg.m, seg.K, seg.m, seg.K)
        g = np.arange(seg.m)
        low = sub[g, :, g, :]  # (m, K, K) with the lower triangle valid
        blocks[seg.factor] = np.tril(low) + np.swapaxes(np.tril(low, -1), 1, 2)
    for f, sig in blocks.items():
        K = sig.shape[1]
        total = sig.shape[0] * np.eye(K) - sig.sum(axis=0)
        grads[f] += 2.0 * sla.solve_triangular(Ts[f], total, lower=True, trans="T", check_finite=False)


def _logdet_gradient_pattern(sysm: CrossedSystem, fz: CrossedFactorization, Ts: list[np.ndarray],
                             grads: list[np.ndarray]) -> None:
    """``d log|A| / d T_f = 2 sum_{g in f} [Z'Z Lambda A^{-1}]_gg`` from ``A^{-1}`` on the
    pattern of ``Z'Z`` (any ``T``, also singular ones on the boundary)."""
    plan = sysm.plan
    f0, K0, q = plan.chain[0], sysm.K0, sysm.q_root
    T0 = Ts[f0]
    raw0, rawR = sysm.raw_rows[0], sysm.raw_rows[1][0]
    sig_00, sig_0r_opt, sig_low = sysm.selected_inverse(fz, pattern=True)
    assert sig_0r_opt is not None
    sig_0r = sig_0r_opt
    sig_root = _symmetric(sig_low)
    grads[f0] += 2.0 * np.einsum("gab,gbc->ac", raw0[:, :, :K0] @ T0, sig_00)
    cp = sysm.coupling
    c_right = cp.aligned([blk @ Ts[seg.factor] for seg, blk in zip(sysm.root_segments, cp.blocks)])
    grads[f0] += 2.0 * sysm._row_products(c_right, sig_0r).sum(axis=0)
    c_left = [T0.T @ blk for blk in cp.blocks]
    s0r = cp.split(sig_0r)
    RL = sysm._root_right(rawR[:, :q], Ts)  # Z_R'Z_R Lambda_R
    r_off = sysm.layout.offsets[1]
    for s_i, seg in enumerate(sysm.root_segments):
        r0, w = seg.start - r_off, seg.m * seg.K
        shp = (seg.m, seg.K, -1)
        grads[seg.factor] += 2.0 * np.einsum("eab,eac->bc", c_left[s_i], s0r[s_i])
        grads[seg.factor] += 2.0 * np.einsum("gbc,gdc->bd", RL[r0:r0 + w].reshape(shp), sig_root[r0:r0 + w].reshape(shp))
