"""Means, co-moments and ranges of columns, gathered batch by batch and merged exactly enough.

A streamed design pass cannot centre a column at its mean before it has seen every row, and
raw sums of squares lose every digit a variance depends on when the mean is large. So each
batch keeps its own mean and its co-moments about that mean, and two summaries merge by the
pairwise formula of Chan, Golub & LeVeque (1979)::

    n = n_a + n_b,  d = mean_b - mean_a
    mean = mean_a + d n_b / n,  M2 = M2_a + M2_b + d d' n_a n_b / n

which is as accurate as a two-pass computation. Minima and maxima merge exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hierfit.design._jit import compiled

__all__ = ["CellMoments", "ColumnMoments"]

#: rows per block of the co-moment product (bounds the centred temporary)
_BLOCK = 1 << 16


@dataclass(frozen=True, eq=False)
class ColumnMoments:
    """Row count, means, co-moments about the means (``sum (x - mean)(x - mean)'``), minima
    and maxima of ``q`` columns.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> C = rng.normal(loc=1e6, size=(100, 2))
    >>> merged = ColumnMoments.merge([ColumnMoments.of(C[:30]), ColumnMoments.of(C[30:])])
    >>> whole = ColumnMoments.of(C)
    >>> bool(np.allclose(merged.m2, whole.m2, rtol=1e-12)), merged.n
    (True, 100)
    """

    n: int
    mean: np.ndarray
    m2: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    @classmethod
    def of(cls, C: np.ndarray) -> ColumnMoments:
        """The moments of the rows of ``C`` (``(n, q)``)."""
        # column-major: numpy's reductions over the rows (mean, min, max) of a row-major (n, q)
        # array walk it with a stride of q and ran ~5x slower than the whole co-moment product
        C = np.asfortranarray(C, dtype=np.float64)
        n, q = C.shape
        if n == 0:
            return cls(0, np.zeros(q), np.zeros((q, q)), np.full(q, np.inf), np.full(q, -np.inf))
        mean = C.mean(axis=0)
        m2 = np.zeros((q, q))
        for start in range(0, n, _BLOCK):
            block = C[start:start + _BLOCK] - mean
            m2 += block.T @ block
        return cls(n, mean, m2, C.min(axis=0), C.max(axis=0))

    @classmethod
    def merge(cls, parts: Sequence[ColumnMoments]) -> ColumnMoments:
        """The moments of all the rows behind ``parts`` (Chan's pairwise update)."""
        n, mean, m2 = parts[0].n, parts[0].mean.copy(), parts[0].m2.copy()
        lo, hi = parts[0].lo.copy(), parts[0].hi.copy()
        for p in parts[1:]:
            if p.mean.shape != mean.shape:
                raise ValueError("moments of different columns cannot be merged")
            if p.n == 0:
                continue
            total = n + p.n
            d = p.mean - mean
            mean = mean + d * (p.n / total)
            m2 = m2 + p.m2 + np.outer(d, d) * (n * p.n / total)
            n = total
            lo, hi = np.minimum(lo, p.lo), np.maximum(hi, p.hi)
        return cls(n, mean, m2, lo, hi)

    def select(self, index: Sequence[int] | np.ndarray) -> ColumnMoments:
        """The moments of some of the columns."""
        i = np.asarray(index, dtype=np.int64)
        return ColumnMoments(self.n, self.mean[i], self.m2[np.ix_(i, i)], self.lo[i], self.hi[i])

    def second_moment(self) -> np.ndarray:
        """``mean over the rows of x x'`` (``(M2 + n mean mean') / n``)."""
        return (self.m2 + self.n * np.outer(self.mean, self.mean)) / max(self.n, 1)

    def is_ones(self) -> np.ndarray:
        """Per column, whether every row holds exactly 1."""
        return (self.lo == 1.0) & (self.hi == 1.0)


def _packed(q: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of each entry of a packed upper triangle of a ``q x q`` matrix."""
    return np.triu_indices(q)


def _pair_index(k: int) -> dict[tuple[int, int], int]:
    """Where the co-moment of columns ``a <= b`` sits among a kernel's ``k (k + 1) / 2`` pairs."""
    return {(a, b): p for p, (a, b) in enumerate((a, b) for a in range(k) for b in range(a, k))}


def _cell_numpy(cols: Sequence[np.ndarray], origin: np.ndarray, cell: np.ndarray,
                safe: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per cell, the means of ``cols[a] - origin[a]`` (``(m, k)``) and the co-moments about
    them of every pair ``a <= b`` (``(m, k (k + 1) / 2)``, in :func:`_pair_index` order): two
    passes over the rows, as two-pass variance is, each sum in row order (``numpy.bincount``)."""
    m, k = safe.size, len(cols)
    means, cross = np.zeros((k, m)), np.zeros((k * (k + 1) // 2, m))
    centred = []
    for a, x in enumerate(cols):
        dev = x - origin[a]
        means[a] = np.bincount(cell, weights=dev, minlength=m) / safe
        dev -= means[a][cell]  # centred at the cell's own mean
        centred.append(dev)
    for (a, b), p in _pair_index(k).items():
        cross[p] = np.bincount(cell, weights=centred[a] * centred[b], minlength=m)
    return means.T, cross.T


def _cell_loops(X: tuple[np.ndarray, ...], origin: np.ndarray, cell: np.ndarray,
                safe: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_cell_numpy` of the columns ``X`` (``k`` arrays of ``n`` rows) as loops for numba:
    the same operations in the same order (no fused multiply-add), so the same numbers bit for bit.

    ``X`` is a tuple, so ``k`` is known when the kernel is compiled (one specialisation per
    column count) and the loops over the columns unroll: with ``k`` unknown the kernel ran
    ~3x slower (measured 36 vs 11 ms for 512k rows, 3 columns, 20k cells)."""
    k, n = len(X), X[0].shape[0]
    m = safe.size
    means = np.zeros((m, k))
    for i in range(n):
        c = cell[i]
        for a in range(k):
            means[c, a] += X[a][i] - origin[a]
    for c in range(m):
        for a in range(k):
            means[c, a] /= safe[c]
    cross = np.zeros((m, k * (k + 1) // 2))
    for i in range(n):
        c = cell[i]
        p = 0
        for a in range(k):
            da = (X[a][i] - origin[a]) - means[c, a]
            for b in range(a, k):
                cross[c, p] += da * ((X[b][i] - origin[b]) - means[c, b])
                p += 1
    return means, cross


_cell_kernel = compiled(_cell_loops)


def _add_comoments_loops(m2: np.ndarray, part: np.ndarray, count: np.ndarray, d: np.ndarray, row: np.ndarray,
                         col: np.ndarray, active: np.ndarray) -> None:
    """``m2[:, active] += part[:, active] + count d[:, row] d[:, col]`` in place (Chan's merge of
    one part into cells aligned with it), as numpy computes it, without its temporaries."""
    for c in range(m2.shape[0]):
        n = count[c]
        for t in range(active.size):
            a = active[t]
            m2[c, a] += part[c, a] + n * d[c, row[t]] * d[c, col[t]]


_add_comoments = compiled(_add_comoments_loops)


def _read_only(cols: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
    """The columns as read-only contiguous views (no copy of contiguous ones): one numba type for
    all, whether a column came zero-copy from Arrow (read-only) or was computed (writable)."""
    views = []
    for c in cols:
        v = np.ascontiguousarray(c).view()
        v.flags.writeable = False
        views.append(v)
    return tuple(views)


@dataclass(frozen=True, eq=False)
class CellMoments:
    """Per cell (distinct combination of the grouping columns): rows, means and co-moments of
    ``q`` columns, about an ``origin`` shared by all cells.

    Every group of every level is a union of cells, so the sums a mixed model needs per group
    (``sum z z'``, ``sum z x'``, ...) are sums of cells' ``M2 + n (mean - c)(mean - c)'``: one
    pass over the rows gathers them all, without knowing the groups' centring first.

    Precision: the means are kept *about* ``origin`` (a batch's column means, merged to the
    first summary's), so an outcome of mean 1e8 and SD 1 keeps its digits: ``x - origin`` is
    exact for rows near the origin, and no sum of squares of 1e8-sized values is ever formed.
    Cells merge by Chan's pairwise formula for any number of parts at once (:meth:`combine`).

    Attributes
    ----------
    origin
        ``(q,)``: the means are of ``x - origin``.
    count
        ``(m,)`` rows per cell.
    mean
        ``(m, q)`` per-cell means of ``x - origin``.
    m2
        ``(m, q (q + 1) / 2)`` per-cell co-moments about the cell's mean, the upper triangle
        packed row by row (``numpy.triu_indices``).
    lo, hi
        ``(q,)`` minima and maxima over all rows.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> C = rng.normal(loc=1e8, size=(200, 2))
    >>> cell = rng.integers(0, 3, 200)
    >>> a = CellMoments.of(C[:120], cell[:120], 3)
    >>> b = CellMoments.of(C[120:], cell[120:], 3)
    >>> both = CellMoments.combine([a, b], [np.arange(3), np.arange(3)], 3)
    >>> direct = np.cov(C[cell == 1].T, bias=True) * np.sum(cell == 1)
    >>> bool(np.allclose(both.full_m2()[1], direct, rtol=1e-12))
    True
    """

    origin: np.ndarray
    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    @property
    def n_cells(self) -> int:
        return int(self.count.size)

    @property
    def q(self) -> int:
        return int(self.origin.size)

    @classmethod
    def of(cls, C: np.ndarray, cell: np.ndarray, n_cells: int) -> CellMoments:
        """The moments of the rows of ``C`` (``(n, q)``) in cells ``cell`` (``(n,)``, ``0..n_cells-1``).

        Columns constant over the batch (the intercept) and exact copies of an earlier column
        (a slope that is also a population column) are not summed again: they are filled in.
        """
        C = np.asfortranarray(C, dtype=np.float64)
        return cls.of_columns([C[:, j] for j in range(C.shape[1])], range(C.shape[1]), cell, n_cells)

    @classmethod
    def of_columns(cls, arrays: Sequence[np.ndarray], source: Sequence[int | float], cell: np.ndarray,
                   n_cells: int, use_numba: bool = True,
                   ranges: Sequence[tuple[float, float]] | None = None,
                   count: np.ndarray | None = None) -> CellMoments:
        """:meth:`of` the columns ``q = len(source)`` given without a matrix of their own: column
        ``j`` is ``arrays[source[j]]`` (1-D float64), or the constant ``source[j]`` on every row.

        What a direct read of a batch hands over (:mod:`hierfit.design.direct`): no copy of
        the data columns, no pass over the intercept, and a column given twice (a slope that
        is also a population column) is known to be a copy without comparing it. The result
        is the same, bit for bit, as :meth:`of` on the matrix of those columns, and the same
        with numba (one compiled kernel, two passes over the rows) as without it
        (``use_numba=False``: a ``numpy.bincount`` per column and per pair of columns).
        ``ranges[s]``, where given, is the minimum and maximum of ``arrays[s]`` (a reader that
        checked the values found them already), ``count`` the rows of each cell (a caller that
        counted them to find the cells).

        Examples
        --------
        >>> rng = np.random.default_rng(0)
        >>> x, cell = rng.normal(size=50), rng.integers(0, 4, 50)
        >>> a = CellMoments.of_columns([x], [1.0, 0, 0], cell, 4)
        >>> b = CellMoments.of(np.column_stack([np.ones(50), x, x]), cell, 4)
        >>> all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("origin", "mean", "m2", "lo", "hi"))
        True
        """
        source = list(source)
        q = len(source)
        n = int(np.shape(cell)[0])
        cell = np.asarray(cell, dtype=np.int64)
        iu, ju = _packed(q)
        if n == 0:
            return cls(np.zeros(q), np.zeros(n_cells), np.zeros((n_cells, q)), np.zeros((n_cells, iu.size)),
                       np.full(q, np.inf), np.full(q, -np.inf))
        # per distinct array: its range (given by a caller that has it: ``ranges[s]``) and mean
        stats = {s: (*(ranges[s] if ranges else (a.min(), a.max())), a.mean())
                 for s in dict.fromkeys(s for s in source if isinstance(s, int))
                 for a in (np.asarray(arrays[s], dtype=np.float64),)}
        lo = np.array([stats[s][0] if isinstance(s, int) else float(s) for s in source], dtype=np.float64)
        hi = np.array([stats[s][1] if isinstance(s, int) else float(s) for s in source], dtype=np.float64)
        mean_all = np.array([stats[s][2] if isinstance(s, int) else float(s) for s in source], dtype=np.float64)
        # a constant column sits at its value: its deviations are exactly 0
        origin = np.where(lo == hi, lo, mean_all)
        count = np.bincount(cell, minlength=n_cells).astype(np.float64) if count is None else count
        safe = np.maximum(count, 1.0)
        same = list(range(q))  # the earlier column each column is a copy of (itself if none)
        summed: dict[int, int] = {}  # the column that summed each array
        primary: list[int] = []  # the varying columns that are no copy: the ones summed
        for j in range(q):
            if lo[j] == hi[j]:
                continue
            s = source[j]
            assert isinstance(s, int)  # a constant has lo == hi
            copy = summed.get(s)
            if copy is None:
                copy = next((i for i in primary if lo[i] == lo[j] and hi[i] == hi[j] and origin[i] == origin[j]
                             and np.array_equal(arrays[source[i]], arrays[s])), None)  # type: ignore[index]
            if copy is not None:
                same[j] = copy
                continue
            primary.append(j)
            summed[s] = j
        cols = [np.asarray(arrays[source[j]], dtype=np.float64) for j in primary]  # type: ignore[index]
        if use_numba and _cell_kernel is not None and primary:
            means, cross = _cell_kernel(_read_only(cols), origin[primary], cell, safe)
        else:
            means, cross = _cell_numpy(cols, origin[primary], cell, safe)
        # every column and pair takes the sums of the primary column or pair it is a copy of:
        # one gather each (the kernel's (m, k) and (m, k (k + 1) / 2) arrays, rows per cell)
        at = {j: a for a, j in enumerate(primary)}
        pair = _pair_index(len(primary))
        mean = np.zeros((n_cells, q))
        columns = [j for j in range(q) if same[j] in at]
        mean[:, columns] = means[:, [at[same[j]] for j in columns]]
        m2 = np.zeros((n_cells, iu.size))
        ordered = (sorted((same[i], same[j])) for i, j in zip(iu.tolist(), ju.tolist()))
        pairs = [(k, pair[at[a], at[b]]) for k, (a, b) in enumerate(ordered) if a in at and b in at]
        if pairs:
            m2[:, [k for k, _ in pairs]] = cross[:, [p for _, p in pairs]]
        return cls(origin, count, mean, m2, lo, hi)

    @classmethod
    def combine(cls, parts: Sequence[CellMoments], index: Sequence[np.ndarray], n_cells: int) -> CellMoments:
        """The moments of all the rows behind ``parts``; ``index[i]`` maps part ``i``'s cells to
        the ``n_cells`` merged ones (Chan et al.: ``M2 = sum M2_i + sum n_i (m_i - m)(m_i - m)'``)."""
        origin = parts[0].origin
        q = origin.size
        for p in parts:
            if p.origin.shape != origin.shape:
                raise ValueError("cell moments of different columns cannot be merged")
        iu, ju = _packed(q)
        # columns that vary somewhere (within a part, or from one part to another: not the
        # intercept), read off the ranges; the others' means about the origin and co-moments
        # are 0 (a constant column sits at its value: CellMoments.of_columns)
        varies = np.min([p.lo for p in parts], axis=0) != np.max([p.hi for p in parts], axis=0)
        active = np.flatnonzero(varies[iu] & varies[ju])
        m2 = np.zeros((n_cells, iu.size))
        if all(np.array_equal(i, np.arange(n_cells)) for i in index):
            # the same cells in every part (consecutive batches of one source): element by element
            count = np.sum([p.count for p in parts], axis=0)
            safe = np.maximum(count, 1.0)
            cols = np.flatnonzero(varies)
            at = np.full(q, -1, dtype=np.int64)
            at[cols] = np.arange(cols.size)
            shifted = [p.mean[:, cols] + (p.origin[cols] - origin[cols]) for p in parts]
            total = parts[0].count[:, None] * shifted[0]
            for p, m in zip(parts[1:], shifted[1:]):  # in the parts' order, as numpy's sum over them
                total += p.count[:, None] * m
            mean_varying = total / safe[:, None]
            mean = np.zeros((n_cells, q))
            mean[:, cols] = mean_varying
            row, col = at[iu[active]], at[ju[active]]  # each active pair's columns among the varying
            for p, m in zip(parts, shifted):
                d = m - mean_varying
                if _add_comoments is not None:
                    _add_comoments(m2, p.m2, p.count, d, row, col, active)
                else:
                    m2[:, active] += p.m2[:, active] + p.count[:, None] * d[:, row] * d[:, col]
        else:
            idx = np.concatenate([np.asarray(i, dtype=np.int64) for i in index])
            n = np.concatenate([p.count for p in parts])
            # every part's means about the common origin (origins are near each other: exact shifts)
            means = np.concatenate([p.mean + (p.origin - origin) for p in parts])
            # rows of the same merged cell next to each other: one segmented sum per quantity
            order = np.argsort(idx, kind="stable")
            idx_sorted = idx[order]
            starts = np.flatnonzero(np.r_[True, idx_sorted[1:] != idx_sorted[:-1]])
            present = idx_sorted[starts]
            n_o, means_o = n[order], means[order]
            count = np.zeros(n_cells)
            count[present] = np.add.reduceat(n_o, starts)
            safe = np.maximum(count, 1.0)
            mean = np.zeros((n_cells, q))
            mean[present] = np.add.reduceat(n_o[:, None] * means_o, starts, axis=0)
            mean /= safe[:, None]
            d = means_o - mean[idx_sorted]
            parts_m2 = np.concatenate([p.m2[:, active] for p in parts])[order]
            m2[np.ix_(present, active)] = np.add.reduceat(
                parts_m2 + n_o[:, None] * d[:, iu[active]] * d[:, ju[active]], starts, axis=0)
        lo = np.min([p.lo for p in parts], axis=0)
        hi = np.max([p.hi for p in parts], axis=0)
        return cls(origin, count, mean, m2, lo, hi)

    def full_m2(self) -> np.ndarray:
        """``(m, q, q)``: every cell's co-moment matrix, unpacked."""
        iu, ju = _packed(self.q)
        out = np.zeros((self.n_cells, self.q, self.q))
        out[:, iu, ju] = self.m2
        out[:, ju, iu] = self.m2
        return out

    def column_moments(self) -> ColumnMoments:
        """The moments of all the rows together (the cells merged into one)."""
        merged = CellMoments.combine([self], [np.zeros(self.n_cells, dtype=np.int64)], 1)
        return ColumnMoments(round(float(merged.count[0])), merged.origin + merged.mean[0], merged.full_m2()[0],
                             merged.lo, merged.hi)
