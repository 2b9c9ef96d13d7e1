"""Validation splits that depend on what the rows are, not where they sit.

Early stopping and the keep-it-only-if-it-helps gates hold out validation rows. Drawing them
by position (``rng.random(n) < f``) makes a fit depend on the order of the rows, and drawing
whole groups by label makes it depend on how groups are named: shuffling the data or renaming a
submarket would change the model, and so would a change of units if the key read raw values.
Here every row gets a pseudo-random key hashed from the seed and, per numeric column (outcome,
population columns, group-level columns), the row's *symmetric rank* ``|rank - (n + 1) / 2|``
-- unchanged by the order of the rows, the labels of the groups, and any affine change
``a + b x`` of a column (a reflection included). A group's key is an order-free combination
of its rows' keys; the split takes the rows (or groups) with the smallest keys.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from hierfit.design import Design

__all__ = ["row_keys", "validation_rows"]

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(h: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a well-spread 64-bit hash of each element."""
    with np.errstate(over="ignore"):
        h = (h ^ (h >> np.uint64(30))) * _M1
        h = (h ^ (h >> np.uint64(27))) * _M2
        return h ^ (h >> np.uint64(31))


def row_keys(design: Design, seed: int) -> np.ndarray:
    """A 64-bit key per row from its values and ``seed`` (same row, same key, wherever it is).

    Examples
    --------
    >>> import hierfit
    >>> sim = hierfit.simulate(n_markets=3, n_submarkets=2, rows_per_submarket=5, seed=0)
    >>> d = hierfit.build_design(hierfit.make_spec("y ~ x1 + (1 | market)"), sim.data)
    >>> k = row_keys(d, 1)
    >>> d2 = hierfit.build_design(hierfit.make_spec("y ~ x1 + (1 | market)"), sim.data.iloc[::-1])
    >>> bool((row_keys(d2, 1) == k[::-1]).all())
    True
    """
    columns = [design.y, *(design.X[:, j] for j in range(design.X.shape[1]))]
    columns += [td.Z[:, j] for td in design.terms for j in range(td.Z.shape[1])]
    centre = (design.n + 1) / 2
    with np.errstate(over="ignore"):
        h = np.full(design.n, _mix(np.array([seed], dtype=np.uint64) + _GOLDEN)[0], dtype=np.uint64)
        for col in columns:
            # twice the symmetric rank: an exact small integer (ties share the average rank)
            sym = np.abs(2.0 * stats.rankdata(col) - 2.0 * centre)
            bits = sym.astype(np.uint64)
            h = _mix(h ^ (bits + _GOLDEN + (h << np.uint64(6)) + (h >> np.uint64(2))))
    return h


def validation_rows(design: Design, fraction: float, *, seed: int, level: str | None = None) -> np.ndarray:
    """Boolean mask of about ``fraction`` of the rows, chosen by key (see the module docstring).

    With ``level``, whole groups of that level are held out (at least one, never all).
    """
    keys = row_keys(design, seed)
    n = design.n
    if level is None:
        k = max(1, min(n - 1, int(round(fraction * n))))
        cut = np.partition(keys, k - 1)[k - 1]
        mask = keys <= cut
        return mask
    idx = design.group_index[level]
    n_groups = design.hierarchy.level(level).n_groups
    group_key = np.zeros(n_groups, dtype=np.uint64)
    # order-free: the sum (mod 2^64) of the rows' keys, mixed once more
    np.add.at(group_key, idx, keys)
    group_key = _mix(group_key)
    order = np.argsort(group_key, kind="stable")
    sizes = np.bincount(idx, minlength=n_groups)
    cum = np.cumsum(sizes[order])
    k = min(max(1, int(np.searchsorted(cum, fraction * n)) + 1), n_groups - 1)
    held = np.zeros(n_groups, dtype=bool)
    held[order[:k]] = True
    return held[idx]
