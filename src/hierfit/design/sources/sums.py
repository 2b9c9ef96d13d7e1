"""Sums of floating-point arrays whose value does not depend on the order of the terms.

Merging the summaries of batches adds partial sums; in plain floating point the result then
depends, in its last bits, on how the rows were split and in which order the partial sums
arrive (and a merge tree on a cluster has no fixed order). :class:`CompensatedSum` carries,
beside each running total, the exact rounding error of every addition (Knuth's TwoSum, six
flops per element), so the merged value is the correctly rounded sum of the partial sums up
to a few units in the last place of the *total*, whatever their order.

What remains order dependent is inside each batch (``numpy.bincount`` adds a group's rows in
row order): that part is bounded by the batch's own rounding, ``~1e-16 * sqrt(rows)`` relative
for the centred and scaled columns the mixed model sums (see :mod:`hierfit.engines.mixed._stream`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["CompensatedSum", "two_sum"]


def two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``s, e`` with ``s = fl(a + b)`` and ``a + b = s + e`` exactly (Knuth), elementwise.

    Examples
    --------
    >>> s, e = two_sum(np.array([1e16]), np.array([1.0]))
    >>> float(s[0]), float(e[0])
    (1e+16, 1.0)
    """
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    return s, e


@dataclass(frozen=True, eq=False)
class CompensatedSum:
    """Arrays of running totals with their accumulated rounding errors.

    Examples
    --------
    >>> parts = [np.array([1.0]), np.array([1e16]), np.array([-1e16])]
    >>> float(CompensatedSum.merge([CompensatedSum.of([p]) for p in parts]).values()[0][0])
    1.0
    >>> float(sum(parts)[0])  # plain floating point loses the 1.0
    0.0
    """

    totals: tuple[np.ndarray, ...]
    errors: tuple[np.ndarray, ...]

    @classmethod
    def of(cls, arrays: Sequence[np.ndarray]) -> CompensatedSum:
        totals = tuple(np.asarray(a, dtype=np.float64) for a in arrays)
        return cls(totals, tuple(np.zeros_like(t) for t in totals))

    @classmethod
    def merge(cls, sums: Sequence[CompensatedSum]) -> CompensatedSum:
        """The sum of several; the result does not depend on their order beyond the last bits."""
        totals = [t.copy() for t in sums[0].totals]
        errors = [e.copy() for e in sums[0].errors]
        for other in sums[1:]:
            if len(other.totals) != len(totals) or any(a.shape != b.shape for a, b in zip(totals, other.totals)):
                raise ValueError("compensated sums of different shapes cannot be merged")
            for i, (t, e) in enumerate(zip(other.totals, other.errors)):
                totals[i], err = two_sum(totals[i], t)
                errors[i] = errors[i] + (err + e)
        return cls(tuple(totals), tuple(errors))

    def values(self) -> list[np.ndarray]:
        """The sums, each total corrected by its accumulated error."""
        return [t + e for t, e in zip(self.totals, self.errors)]
