"""One pass over the data: the sufficient statistics of a linear mixed model.

Every random effect is constant within its group, so the penalised least-squares system
of lme4 only involves grouped sums: ``Z'Z``, ``Z'X``, ``Z'y`` (per group) together with
``X'X``, ``X'y`` and ``y'y``.  They are gathered here once; afterwards one evaluation of
the profiled deviance costs O(number of random effects), independent of ``n``.

The statistics are stored as *rows* of the (symmetric) system, one array per elimination
level, laid out in global column coordinates:

* one level per chain factor (finest first), shape ``(m, K, width)``,
* one dense root level (all factors crossed with the chain), shape ``(1, q_root, width)``,
* the fixed level ``[X y]'[X y]``, shape ``(1, p + 1, p + 1)``,

where ``width`` runs from the level's own first column to the end; a chain row's block
for a coarser chain factor holds the single group its group is nested in.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ._blocks import Factor, Plan

__all__ = ["Layout", "Segment", "compute_rows"]

#: Rows per chunk of the data pass: bounds the temporaries (a few chunk-length vectors)
#: and keeps them in cache, while leaving per-chunk Python overhead negligible.
CHUNK_ROWS = 1 << 19


@dataclass(frozen=True)
class Segment:
    """Columns ``start .. start + m*K`` belonging to one factor (``m = 1`` in chain rows)."""

    start: int
    m: int
    K: int
    factor: int


@dataclass
class Layout:
    """Global column layout of the levels.

    Attributes
    ----------
    sizes : list of int
        Own width ``K`` of every level (chain levels, optional root, fixed level last).
    m : list of int
        Number of groups per level (1 for root and fixed).
    offsets : list of int
        First global column of each level.
    total : int
        Total number of columns: chain ``K``s, plus ``q_root``, plus ``p + 1``.
    segments : list of Segment
        Factor segments in global coordinates (the fixed level has none: it is not scaled).
    has_root : bool
        Whether a dense root level exists.
    p : int
        Number of fixed-effects columns.
    """

    sizes: list[int]
    m: list[int]
    offsets: list[int]
    total: int
    segments: list[Segment]
    has_root: bool
    p: int

    @property
    def n_levels(self) -> int:
        """Number of levels including the fixed one."""
        return len(self.sizes)


def make_layout(plan: Plan, p: int) -> Layout:
    """Build the global column layout for a plan with ``p`` fixed effects."""
    sizes: list[int] = []
    ms: list[int] = []
    segments: list[Segment] = []
    off = 0
    offsets: list[int] = []
    for f in plan.chain:
        fac = plan.factors[f]
        offsets.append(off)
        sizes.append(fac.K)
        ms.append(fac.m)
        segments.append(Segment(off, 1, fac.K, f))
        off += fac.K
    if plan.root:
        offsets.append(off)
        start = off
        for f in plan.root:
            fac = plan.factors[f]
            segments.append(Segment(off, fac.m, fac.K, f))
            off += fac.m * fac.K
        sizes.append(off - start)
        ms.append(1)
    offsets.append(off)
    sizes.append(p + 1)
    ms.append(1)
    return Layout(sizes, ms, offsets, off + p + 1, segments, bool(plan.root), p)


#: ``column_t = (column - center) / scale`` for the columns of ``[X y]`` and of each factor.
ColumnAffine = tuple[np.ndarray, np.ndarray]


def _affine(cols: list[np.ndarray], amap: ColumnAffine | None) -> list[np.ndarray]:
    """Standardised copies of the columns that the map changes (others as they are)."""
    if amap is None:
        return cols
    c, s = amap
    return [col if (c[j] == 0.0 and s[j] == 1.0) else (col - c[j]) / s[j] for j, col in enumerate(cols)]


def _sparse_z(fac: Factor, rows: slice, amap: ColumnAffine | None) -> sp.csr_matrix:
    """Sparse ``(rows) x (m K)`` model matrix of a factor (only used for the crossed root)."""
    g = fac.group_index[rows]
    n = g.size
    r = np.repeat(np.arange(n, dtype=np.int64), fac.K)
    cols = (g[:, None] * fac.K + np.arange(fac.K)[None, :]).ravel()
    data = np.column_stack(_affine([c[rows] for c in fac.columns], amap)).ravel()
    return sp.csr_matrix((data, (r, cols)), shape=(n, fac.m * fac.K))


def compute_rows(X: np.ndarray, y: np.ndarray, plan: Plan, layout: Layout,
                 xy_map: ColumnAffine | None = None,
                 factor_maps: list[ColumnAffine] | None = None,
                 weights: np.ndarray | None = None,
                 x_ones: Sequence[bool] | None = None) -> list[np.ndarray]:
    """Gather all sufficient statistics in one chunked pass over the rows.

    Parameters
    ----------
    X : numpy.ndarray
        ``(n, p)`` fixed-effects model matrix.
    y : numpy.ndarray
        ``(n,)`` response.
    plan : Plan
        Elimination plan.
    layout : Layout
        Column layout of ``plan``.
    xy_map, factor_maps : optional
        ``(center, scale)`` of the ``p + 1`` columns of ``[X y]`` and of each factor's ``K``
        columns, applied chunk by chunk (no full-size copies): the statistics are those of
        the standardised columns (see :mod:`._standardize`).
    weights : numpy.ndarray, optional
        ``(n,)`` row weights: the statistics of ``[Z X y]' diag(weights) [Z X y]`` (the
        system of one GLMM PIRLS step).  ``None`` means unit weights.
    x_ones : sequence of bool, optional
        Which columns of ``X`` are identically 1 over *all* the rows (the pass then counts
        instead of multiplying).  A batch of a streamed source must be told: a dummy or a slope
        can be all ones within one batch without being so overall (default: read from ``X``).

    Returns
    -------
    list of numpy.ndarray
        The unscaled rows of every level (see module docstring).
    """
    n, p = X.shape
    if factor_maps is None:
        factor_maps = [None] * len(plan.factors)  # type: ignore[list-item]
    total = layout.total
    rows: list[np.ndarray] = [
        np.zeros((layout.m[i], layout.sizes[i], total - layout.offsets[i]))
        for i in range(layout.n_levels)
    ]
    chain = [plan.factors[f] for f in plan.chain]
    x_ones = [_is_ones_col(X[:, c]) for c in range(p)] if x_ones is None else list(x_ones)
    fixed = rows[-1][0]
    fix_off = layout.offsets[-1]
    for start in range(0, n, CHUNK_ROWS):
        stop = min(n, start + CHUNK_ROWS)
        # Contiguous copies of this chunk's fixed columns: reused by every bincount below.
        xy = np.empty((p + 1, stop - start))
        xy[:p] = X[start:stop].T
        xy[p] = y[start:stop]
        if xy_map is not None:
            # in place: two chunk-sized temporaries here were the fit's peak memory
            xy -= xy_map[0][:, None]
            xy /= xy_map[1][:, None]
        wc = None if weights is None else np.asarray(weights[start:stop], dtype=np.float64)
        fixed += (xy if wc is None else xy * wc) @ xy.T
        xy_ones = x_ones + [False]
        chunk_cols = [_affine([c[start:stop] for c in fac.columns], factor_maps[f])
                      for f, fac in zip(plan.chain, chain)]
        for lvl, fac in enumerate(chain):
            g = fac.group_index[start:stop]
            cnt: np.ndarray | None = None
            own = chunk_cols[lvl]
            # Targets: (global column, values, is_ones) for every column right of own col a.
            anc: list[tuple[int, np.ndarray, bool]] = []
            for a_lvl in range(lvl + 1, len(chain)):
                afac = chain[a_lvl]
                for c in range(afac.K):
                    anc.append((layout.offsets[a_lvl] + c, chunk_cols[a_lvl][c],
                                afac.is_ones[c]))
            fixed_t = [(fix_off + c, xy[c], xy_ones[c]) for c in range(p + 1)]
            base = layout.offsets[lvl]
            out = rows[lvl]
            for a in range(fac.K):
                za, za1 = own[a], fac.is_ones[a]
                targets = [(base + b, own[b], fac.is_ones[b]) for b in range(a, fac.K)]
                for col, t, t1 in targets + anc + fixed_t:
                    if za1 and t1:
                        if cnt is None:
                            cnt = (np.bincount(g, minlength=fac.m).astype(np.float64)
                                   if wc is None else np.bincount(g, weights=wc, minlength=fac.m))
                        out[:, a, col - base] += cnt
                    else:
                        w = t if za1 else (za if t1 else za * t)
                        if wc is not None:
                            w = w * wc
                        out[:, a, col - base] += np.bincount(g, weights=w, minlength=fac.m)
    # Own blocks were filled in the upper triangle only.
    for lvl, fac in enumerate(chain):
        blk = rows[lvl][:, :, : fac.K]
        iu = np.triu_indices(fac.K, 1)
        blk[:, iu[1], iu[0]] = blk[:, iu[0], iu[1]]
    if layout.has_root:
        _root_rows(X, y, plan, layout, rows, xy_map, factor_maps, weights)
    return rows


def _is_ones_col(col: np.ndarray) -> bool:
    return bool(col.size) and bool(np.all(col == 1.0))


def root_chunks(X: np.ndarray, y: np.ndarray, plan: Plan, xy_map: ColumnAffine | None,
                factor_maps: list[ColumnAffine], weights: np.ndarray | None = None
                ) -> Iterator[tuple[slice, sp.csc_matrix, sp.csr_matrix, np.ndarray]]:
    """Per chunk of rows: the root factors' sparse ``Z_R`` (CSC), ``Z_R' W`` (CSR; weights on
    one side give ``Z' W Z`` and ``Z' W [X y]``) and the chunk's standardised ``[X y]``."""
    n = X.shape[0]
    for start in range(0, n, CHUNK_ROWS):
        chunk = slice(start, min(n, start + CHUNK_ROWS))
        xy = np.column_stack([X[chunk], y[chunk]])
        if xy_map is not None:
            xy = (xy - xy_map[0][None, :]) / xy_map[1][None, :]
        zr = sp.hstack([_sparse_z(plan.factors[f], chunk, factor_maps[f]) for f in plan.root]).tocsc()
        if weights is not None:
            zrt = (zr.T @ sp.diags(np.asarray(weights[chunk], dtype=np.float64))).tocsr()
        else:
            zrt = zr.T.tocsr()
        yield chunk, zr, zrt, xy


def _root_rows(X: np.ndarray, y: np.ndarray, plan: Plan, layout: Layout,
               rows: list[np.ndarray], xy_map: ColumnAffine | None,
               factor_maps: list[ColumnAffine], weights: np.ndarray | None = None) -> None:
    """Fill the crossed (dense root) parts with sparse products, chunk by chunk.

    This is the fallback for crossed factors: the root is eliminated as one dense block,
    so its statistics are stored densely (``q_root`` columns in every chain row).
    """
    p = X.shape[1]
    r_lvl = len(plan.chain)
    r_off = layout.offsets[r_lvl]
    q_root = sum(plan.factors[f].m * plan.factors[f].K for f in plan.root)
    root = rows[r_lvl][0]
    for chunk, zr, zrt, xy in root_chunks(X, y, plan, xy_map, factor_maps, weights):
        root[:, :q_root] += (zrt @ zr).toarray()
        root[:, q_root: q_root + p + 1] += zrt @ xy
        for lvl, f in enumerate(plan.chain):
            fac = plan.factors[f]
            zc = _sparse_z(fac, chunk, factor_maps[f]).T.tocsr()
            if weights is not None:
                zc = (zc @ sp.diags(np.asarray(weights[chunk], dtype=np.float64))).tocsr()
            block = (zc @ zr).toarray().reshape(fac.m, fac.K, q_root)
            c0 = r_off - layout.offsets[lvl]
            rows[lvl][:, :, c0: c0 + q_root] += block
