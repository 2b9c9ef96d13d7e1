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

__all__ = ["ColumnMoments"]

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
