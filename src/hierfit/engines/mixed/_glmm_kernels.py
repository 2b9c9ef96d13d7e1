"""Row passes of the GLMM core: one loop over the rows per call, O(1) work per row.

Every quantity the Laplace fit needs from the data is either a weighted grouped
cross-product (the penalised least-squares system of one PIRLS step), a per-row gather
from per-group arrays (the linear predictor, leverages) or a grouped sum of a per-row
value (gradients).  A row touches one group per grouping factor, so each of those is a
short loop over the row's few random-effect columns ("entries").

Layouts follow :mod:`._suffstats`: *system rows* are the flattened ``(m, K, width)``
arrays of every level (chain factors, optional dense root, fixed level); *vectors* hold
one value per random-effect column, level by level (``(m, K)`` per chain level, ``q_root``
for the root).  All columns are the standardised ones ``(z - center) / scale``.

With numba the loops are generated for the structure and compiled
(:mod:`._glmm_codegen`; the logit and log families also get fused passes,
:mod:`._glmm_fused`).  Without it the same passes run as vectorised numpy
(``np.bincount`` / fancy indexing) -- several times slower, same numbers (tested).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ._blocks import Plan
from ._suffstats import Layout

try:  # numba is optional: it makes each pass several times faster
    import numba as _nb

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only without numba
    _nb = None
    HAVE_NUMBA = False

__all__ = ["HAVE_NUMBA", "RowLayout", "make_row_layout"]


@dataclass(frozen=True)
class RowLayout:
    """Where each row's random-effect columns live in the system and vector layouts.

    Attributes
    ----------
    n : int
        Rows.
    gidx : tuple of numpy.ndarray
        Per factor, in plan factor order, the ``(n,)`` int64 group codes (the caller's arrays,
        not copies: memory is per row, the fit's scale limit).
    zc : tuple of numpy.ndarray
        The ``(n,)`` float64 raw random-effect columns that are not all ones (the caller's
        contiguous columns; one unused value when there are none).
    ent_fac, ent_a, ent_src : numpy.ndarray
        Per entry (random-effect column, chain levels first, then root factors): its factor,
        its column within the factor and its row in ``zc`` (-1 for a column of ones).
    ent_center, ent_scale : numpy.ndarray
        Standardisation of each entry's column.
    fac_level, fac_K, fac_col0, fac_root : numpy.ndarray
        Per factor: level, columns per group, first global column (the root segment start for
        a root factor), and whether it sits in the dense root.
    lvl_off, lvl_K, lvl_m : numpy.ndarray
        Per level (random levels then the fixed one): first global column, own width, groups.
    vbase : numpy.ndarray
        First position of each random level in the vector layout; ``vbase[-1]`` is its size.
    """

    n: int
    gidx: tuple[np.ndarray, ...]
    zc: tuple[np.ndarray, ...]
    ent_fac: np.ndarray
    ent_a: np.ndarray
    ent_src: np.ndarray
    ent_center: np.ndarray
    ent_scale: np.ndarray
    fac_level: np.ndarray
    fac_K: np.ndarray
    fac_col0: np.ndarray
    fac_root: np.ndarray
    lvl_off: np.ndarray
    lvl_K: np.ndarray
    lvl_m: np.ndarray
    vbase: np.ndarray

    @property
    def structure(self) -> tuple[tuple[tuple[int, int, int], ...], tuple[int, ...]]:
        """What the generated kernels specialise on: (factor, src, root) per entry, K per factor."""
        ents = tuple((int(f), int(s), int(self.fac_root[f]))
                     for f, s in zip(self.ent_fac, self.ent_src))
        return ents, tuple(int(k) for k in self.fac_K)

    @property
    def n_entries(self) -> int:
        """Random-effect columns per row."""
        return int(self.ent_fac.size)

    def system_bases(self, total: int) -> tuple[np.ndarray, np.ndarray]:
        """Flat start and row width of every level's rows for a system of ``total`` columns."""
        width = total - self.lvl_off
        sizes = self.lvl_m * self.lvl_K * width
        return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64), width.astype(np.int64)

    def coefficients(self, sbase: np.ndarray, swidth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-entry affine location coefficients ``E`` and ``(center, scale)`` for a layout."""
        ne = self.n_entries
        E = np.zeros((ne, 8), np.int64)
        for e in range(ne):
            f, a = int(self.ent_fac[e]), int(self.ent_a[e])
            lvl, K, col0 = int(self.fac_level[f]), int(self.fac_K[f]), int(self.fac_col0[f])
            off, W = int(self.lvl_off[lvl]), int(swidth[lvl])
            E[e, 0], E[e, 1] = f, self.ent_src[e]
            if self.fac_root[f]:
                E[e, 2] = K * W
                E[e, 3] = sbase[lvl] + (col0 + a - off) * W - off
                E[e, 4], E[e, 5] = K, col0 + a
                E[e, 6], E[e, 7] = K, self.vbase[lvl] + col0 + a - off
            else:
                E[e, 2] = K * W
                E[e, 3] = sbase[lvl] + a * W - off
                E[e, 4], E[e, 5] = 0, col0 + a
                E[e, 6], E[e, 7] = K, self.vbase[lvl] + a
        C = np.column_stack([self.ent_center, self.ent_scale]).astype(float)
        return E, np.ascontiguousarray(C)

    def split_system(self, flat: np.ndarray, total: int) -> list[np.ndarray]:
        """Per-level ``(m, K, width)`` views of a flat system buffer."""
        base, width = self.system_bases(total)
        return [flat[b:b + m * k * w].reshape(m, k, w)
                for b, m, k, w in zip(base, self.lvl_m, self.lvl_K, width)]

    def split_vector(self, flat: np.ndarray) -> list[np.ndarray]:
        """Per-random-level ``(m, K)`` views of a flat vector (root: ``(1, q_root)``)."""
        out = []
        for lvl in range(self.vbase.size - 1):
            m, k = int(self.lvl_m[lvl]), int(self.lvl_K[lvl])
            out.append(flat[self.vbase[lvl]:self.vbase[lvl + 1]].reshape(m, k))
        return out

    def rows(self, sl: slice) -> RowLayout:
        """The layout of the rows ``sl`` (views of the codes and columns, no copies)."""
        start, stop, _ = sl.indices(self.n)
        return replace(self, n=stop - start, gidx=tuple(g[sl] for g in self.gidx),
                       zc=tuple(z[sl] if z.size == self.n else z for z in self.zc))

    def join_vector(self, parts: list[np.ndarray]) -> np.ndarray:
        """Flat vector from per-level arrays (inverse of :meth:`split_vector`)."""
        return np.concatenate([np.ravel(p) for p in parts]) if parts else np.zeros(0)


def make_row_layout(plan: Plan, layout: Layout,
                    factor_maps: list[tuple[np.ndarray, np.ndarray]]) -> RowLayout:
    """Build the row layout of a plan (it references the codes and non-constant columns:
    contiguous int64 codes and float64 columns, as the design makes them, are not copied)."""
    n = plan.factors[0].group_index.size
    order = list(plan.chain) + list(plan.root)
    nf = len(plan.factors)
    gidx = tuple(np.ascontiguousarray(fac.group_index, dtype=np.int64) for fac in plan.factors)
    fac_level = np.zeros(nf, np.int64)
    fac_K = np.zeros(nf, np.int64)
    fac_col0 = np.zeros(nf, np.int64)
    fac_root = np.zeros(nf, np.int64)
    n_chain = len(plan.chain)
    seg_start = {s.factor: s.start for s in layout.segments}
    for f, fac in enumerate(plan.factors):
        fac_K[f] = fac.K
        fac_col0[f] = seg_start[f]
        if f in plan.chain:
            fac_level[f] = plan.chain.index(f)
        else:
            fac_level[f], fac_root[f] = n_chain, 1
    ents: list[tuple[int, int, int, float, float]] = []
    zcols: list[np.ndarray] = []
    for f in order:
        fac = plan.factors[f]
        c, s = factor_maps[f]
        for a in range(fac.K):
            src = -1
            if not fac.is_ones[a]:
                src = len(zcols)
                zcols.append(fac.columns[a])
            ents.append((f, a, src, float(c[a]), float(s[a])))
    zc = tuple(np.ascontiguousarray(c, dtype=np.float64) for c in zcols) or (np.zeros(1),)
    nr = layout.n_levels - 1
    lvl_K = np.array(layout.sizes, np.int64)
    lvl_m = np.array(layout.m, np.int64)
    vsizes = lvl_m[:nr] * lvl_K[:nr]
    e = np.array(ents, dtype=object).reshape(-1, 5)
    return RowLayout(
        n=n, gidx=gidx, zc=zc,
        ent_fac=e[:, 0].astype(np.int64), ent_a=e[:, 1].astype(np.int64),
        ent_src=e[:, 2].astype(np.int64), ent_center=e[:, 3].astype(float),
        ent_scale=e[:, 4].astype(float), fac_level=fac_level, fac_K=fac_K,
        fac_col0=fac_col0, fac_root=fac_root, lvl_off=np.array(layout.offsets, np.int64),
        lvl_K=lvl_K, lvl_m=lvl_m,
        vbase=np.concatenate([[0], np.cumsum(vsizes)]).astype(np.int64))


# ----------------------------------------------------------------------------- kernels
# Every per-entry location is affine in the entry's group code g: the system row holding
# the entry starts at ``E[e, 2] * g + E[e, 3]`` (minus its level offset, so adding a global
# column indexes the row), its global column is ``E[e, 4] * g + E[e, 5]`` and its vector
# slot ``E[e, 6] * g + E[e, 7]``; ``E[e, 0]`` is the factor and ``E[e, 1]`` the row of ``zc``
# (-1: a column of ones).  ``C[e] = (center, scale)``.  The compiled passes are generated
# for the structure (:mod:`._glmm_codegen`); the numpy twins below read the same tables.


def _compiled(rl: RowLayout):  # type: ignore[no-untyped-def]
    from ._glmm_codegen import kernels

    return kernels(rl.structure)


# ----------------------------------------------------------------------------- numpy twins
def _np_entries(rl: RowLayout) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """Per entry: standardised values, global columns, vector slots (n-arrays) and level."""
    out = []
    for e in range(rl.n_entries):
        f, a, src = int(rl.ent_fac[e]), int(rl.ent_a[e]), int(rl.ent_src[e])
        v = np.ones(rl.n) if src < 0 else rl.zc[src]
        vals = (v - rl.ent_center[e]) / rl.ent_scale[e]
        g = rl.gidx[f]
        lvl, K = int(rl.fac_level[f]), int(rl.fac_K[f])
        if rl.fac_root[f]:
            gcol = rl.fac_col0[f] + g * K + a
            vloc = rl.vbase[lvl] + gcol - rl.lvl_off[lvl]
        else:
            gcol = np.full(rl.n, rl.fac_col0[f] + a, dtype=np.int64)
            vloc = rl.vbase[lvl] + g * K + a
        out.append((vals, gcol, vloc, lvl))
    return out


def _np_locs(rl: RowLayout, ents: list[tuple[np.ndarray, np.ndarray, np.ndarray, int]],
             sbase: np.ndarray, swidth: np.ndarray) -> list[np.ndarray]:
    """Flat start of each entry's system row minus its level offset (add a column to index)."""
    out = []
    for e, (_, gcol, _, lvl) in enumerate(ents):
        f = int(rl.ent_fac[e])
        off = rl.lvl_off[lvl]
        if rl.fac_root[f]:
            loc = sbase[lvl] + (gcol - off) * swidth[lvl]
        else:
            g = rl.gidx[f]
            loc = sbase[lvl] + (g * rl.lvl_K[lvl] + gcol - off) * swidth[lvl]
        out.append(loc - off)
    return out


# ----------------------------------------------------------------------------- passes
def _vec_coeffs(rl: RowLayout) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients for passes that only use vector slots (no system layout)."""
    zero = np.zeros(rl.lvl_off.size, np.int64)
    return rl.coefficients(zero, zero)


def linpred(rl: RowLayout, base: np.ndarray, bvec: np.ndarray, use_numba: bool = True) -> np.ndarray:
    """``base + Z_t b`` per row for standardised effects ``bvec`` (vector layout)."""
    base = np.ascontiguousarray(base, dtype=np.float64)
    if use_numba and HAVE_NUMBA:
        out = np.empty(rl.n)
        E, C = _vec_coeffs(rl)
        _compiled(rl).linpred(out, base, np.ascontiguousarray(bvec, dtype=np.float64), E, C,
                              rl.gidx, rl.zc)
        return out
    out = base.copy()
    for vals, _, vloc, _ in _np_entries(rl):
        out += vals * bvec[vloc]
    return out


def accumulate(rl: RowLayout, w: np.ndarray, r: np.ndarray, X: np.ndarray | None,
               xc: np.ndarray, xs: np.ndarray, use_numba: bool = True) -> list[np.ndarray]:
    """Rows of ``[Z_t X_t r]' diag(w) [Z_t X_t r]`` (system layout, own blocks symmetric).

    ``X`` is ``None`` for a system without fixed-effects columns (``p_sys = 0``).
    """
    p_sys = 0 if X is None else X.shape[1]
    nlev = rl.lvl_off.size
    rl_sys, total, sbase, swidth, size = system_layout(rl, p_sys)
    flat = np.zeros(size)
    Xa = np.zeros((1, 1)) if X is None else X
    if use_numba and HAVE_NUMBA:
        E, C = rl_sys.coefficients(sbase, swidth)
        foff = int(rl.lvl_off[-1])
        js = np.arange(p_sys + 1)
        fix_rb = (sbase[-1] + js * swidth[-1] - foff).astype(np.int64)
        fix_gc = (foff + js).astype(np.int64)
        from ._glmm_codegen import kernels_x

        kern = _compiled(rl).acc0 if p_sys == 0 else kernels_x(rl.structure, p_sys).acc
        kern(flat, np.ascontiguousarray(w, dtype=np.float64),
             np.ascontiguousarray(r, dtype=np.float64), Xa,
             np.ascontiguousarray(xc[:p_sys], dtype=np.float64),
             np.ascontiguousarray(xs[:p_sys], dtype=np.float64), fix_rb, fix_gc,
             E, C, rl.gidx, rl.zc)
    else:
        ents = _np_entries(rl)
        locs = _np_locs(rl_sys, ents, sbase, swidth)
        cols = [(vals, gcol, loc) for (vals, gcol, _, _), loc in zip(ents, locs)]
        foff = int(rl.lvl_off[-1])
        fbase = sbase[nlev - 1]
        for j in range(p_sys + 1):
            v = r if j == p_sys else (X[:, j] - xc[j]) / xs[j]  # type: ignore[index]
            cols.append((np.asarray(v, dtype=float), np.full(rl.n, foff + j, np.int64),
                         np.full(rl.n, fbase + j * swidth[-1] - foff, np.int64)))
        for k, (vk, _, lk) in enumerate(cols):
            wv = w * vk
            for vk2, gk2, _ in cols[k:]:
                flat += np.bincount(lk + gk2, weights=wv * vk2, minlength=size)
    return finish_rows(rl_sys, flat, total)


def system_layout(rl: RowLayout, p_sys: int) -> tuple[RowLayout, int, np.ndarray, np.ndarray, int]:
    """Layout of a system with ``p_sys`` fixed columns: (layout, total, sbase, swidth, size)."""
    total = int(rl.lvl_off[-1]) + p_sys + 1
    lvl_K = rl.lvl_K.copy()
    lvl_K[-1] = p_sys + 1
    rl_sys = _with_fixed(rl, lvl_K)
    sbase, swidth = rl_sys.system_bases(total)
    size = int(sbase[-1] + rl_sys.lvl_m[-1] * lvl_K[-1] * swidth[-1])
    return rl_sys, total, sbase, swidth, size


def finish_rows(rl_sys: RowLayout, flat: np.ndarray, total: int) -> list[np.ndarray]:
    """Per-level views of a filled flat system with the own blocks made symmetric."""
    rows = rl_sys.split_system(flat, total)
    for lvl, blk in enumerate(rows):
        K = int(rl_sys.lvl_K[lvl])
        own = blk[:, :, :K]
        iu = np.triu_indices(K, 1)
        own[:, iu[1], iu[0]] = own[:, iu[0], iu[1]]
    return rows


def _with_fixed(rl: RowLayout, lvl_K: np.ndarray) -> RowLayout:
    """The layout with the fixed level's width set (it depends on the system's ``p_sys``)."""
    return replace(rl, lvl_K=lvl_K)


def scatter(rl: RowLayout, c1: np.ndarray, c2: np.ndarray | None = None,
            use_numba: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Grouped sums ``Z_t' c`` (vector layout) of one or two per-row values."""
    size = int(rl.vbase[-1])
    out1 = np.zeros(size)
    out2 = np.zeros(size) if c2 is not None else None
    if use_numba and HAVE_NUMBA:
        E, C = _vec_coeffs(rl)
        mod = _compiled(rl)
        if out2 is None:
            mod.scat1(out1, np.ascontiguousarray(c1, dtype=float), E, C, rl.gidx, rl.zc)
        else:
            mod.scat2(out1, out2, np.ascontiguousarray(c1, dtype=float),
                      np.ascontiguousarray(c2, dtype=float), E, C, rl.gidx, rl.zc)
        return out1, out2
    for vals, _, vloc, _ in _np_entries(rl):
        out1 += np.bincount(vloc, weights=c1 * vals, minlength=size)
        if out2 is not None:
            out2 += np.bincount(vloc, weights=c2 * vals, minlength=size)
    return out1, out2


def quad(rl: RowLayout, sig: list[np.ndarray], Ts: list[np.ndarray],
         use_numba: bool = True) -> np.ndarray:
    """Per row ``z~' Sigma z~`` with ``z~ = T' z_t``: the diagonal of ``Z Lambda S Lambda' Z'``.

    ``sig`` is the selected inverse on the system's pattern (``diag_inverse(full=True)``).
    """
    lvl_K = rl.lvl_K.copy()
    lvl_K[-1] = 0
    rl0 = _with_fixed(rl, lvl_K)
    total = int(rl.lvl_off[-1])
    sbase, swidth = rl0.system_bases(total)
    flat = np.concatenate([s.ravel() for s in sig])
    if use_numba and HAVE_NUMBA:
        tmat = np.concatenate([np.ascontiguousarray(T, dtype=float).ravel() for T in Ts])
        out = np.empty(rl.n)
        E, C = rl0.coefficients(sbase, swidth)
        _compiled(rl).quad(out, flat, tmat, E, C, rl.gidx, rl.zc)
        return out
    ents = _np_entries(rl)
    locs = _np_locs(rl0, ents, sbase, swidth)
    zt = []
    e0 = 0
    while e0 < len(ents):
        f = int(rl.ent_fac[e0])
        K = int(rl.fac_K[f])
        T = Ts[f]
        for a in range(K):
            zt.append(sum(T[b, a] * ents[e0 + b][0] for b in range(K)))
        e0 += K
    out = np.zeros(rl.n)
    for k in range(len(ents)):
        out += zt[k] * zt[k] * flat[locs[k] + ents[k][1]]
        for k2 in range(k + 1, len(ents)):
            out += 2.0 * zt[k] * zt[k2] * flat[locs[k] + ents[k2][1]]
    return out


def _k_xtc(out, X, xc, xs, c):  # type: ignore[no-untyped-def]
    """``out[j] = sum_i c_i (X_ij - xc_j) / xs_j`` (centred before summing: no cancellation)."""
    p = out.size
    for i in range(c.size):
        ci = c[i]
        for j in range(p):
            out[j] += ci * (X[i, j] - xc[j])
    for j in range(p):
        out[j] /= xs[j]


if HAVE_NUMBA:
    _k_xtc = _nb.njit(cache=True, nogil=True)(_k_xtc)


def xparts(rl: RowLayout, w: np.ndarray, r: np.ndarray, X: np.ndarray, xc: np.ndarray,
           xs: np.ndarray, use_numba: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``Z_t' W X_t`` as ``(p, q)`` in the vector layout and ``[X_t r]' W [X_t r]`` (symmetric)."""
    p = X.shape[1]
    q = int(rl.vbase[-1])
    if use_numba and HAVE_NUMBA:
        outx, fixed = np.zeros((q, p)), np.zeros((p + 1, p + 1))
        E, C = _vec_coeffs(rl)
        _compiled(rl).xparts(outx, fixed, np.ascontiguousarray(w, dtype=float),
                             np.ascontiguousarray(r, dtype=float), X,
                             np.ascontiguousarray(xc, dtype=float),
                             np.ascontiguousarray(xs, dtype=float), E, C, rl.gidx, rl.zc)
        return np.ascontiguousarray(outx.T), fixed
    xt = np.column_stack([(X - xc) / xs, r])
    outx = np.array([scatter(rl, w * xt[:, j], None, False)[0] for j in range(p)]).reshape(p, q)
    return outx, (xt * w[:, None]).T @ xt


def xtc(X: np.ndarray, xc: np.ndarray, xs: np.ndarray, c: np.ndarray,
        use_numba: bool = True) -> np.ndarray:
    """``X_t' c`` with ``X_t = (X - xc) / xs`` (centred before summing: no cancellation)."""
    p = X.shape[1]
    if use_numba and HAVE_NUMBA:
        out = np.zeros(p)
        _k_xtc(out, X, np.ascontiguousarray(xc, dtype=float), np.ascontiguousarray(xs, dtype=float),
               np.ascontiguousarray(c, dtype=float))
        return out
    return np.array([float(np.dot(X[:, j] - xc[j], c)) / xs[j] for j in range(p)])
