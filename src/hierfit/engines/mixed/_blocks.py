"""Random-effects term description and the structural analysis of a set of terms.

A linear mixed model ``y = X beta + Z b + e`` is described to the core by the fixed-effects
matrix ``X`` and one :class:`RandomBlock` per random-effects term.  This module

* merges terms that share a grouping factor into one *factor* (their per-group covariance
  is then block diagonal, and their cross-products are per-group blocks),
* detects which factors are nested in which, and
* chooses an elimination plan: a *chain* of nested factors, eliminated leaf-first with
  batched small dense algebra, plus an optional dense *root* holding every factor that is
  crossed with the chain.

Only numbers are handled here; names and formulas belong to the caller.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from collections.abc import Callable, Mapping
from typing import Any, Sequence

import numpy as np

__all__ = ["RandomBlock", "Factor", "Plan", "make_plan"]

#: Size of the dense (crossed) root block above which a slow-fit warning is issued.
DENSE_ROOT_WARN = 4000


@dataclass(frozen=True)
class RandomBlock:
    """One random-effects term, e.g. ``(1 + x1 | market)`` -> ``k = 2`` correlated columns.

    Parameters
    ----------
    group_index : numpy.ndarray
        ``(n,)`` integer codes in ``0 .. n_groups - 1``: the level of the term's grouping
        factor for each row.
    n_groups : int
        Number of levels of the grouping factor.
    Z : numpy.ndarray
        ``(n, k)`` float model columns of the term (a column of ones for an intercept,
        predictor values for slopes).  A 1-D array is read as ``k = 1``.
    correlated : bool, default True
        ``False`` gives a diagonal covariance (lme4's ``||``).
    parent : tuple of (int, numpy.ndarray), optional
        Nesting hint ``(block_index, map)``: the grouping factor of ``blocks[block_index]``
        contains this one, and ``map[g]`` is the parent level of level ``g``.  It is
        verified against the data; without it nesting is detected automatically.
    """

    group_index: np.ndarray
    n_groups: int
    Z: np.ndarray
    correlated: bool = True
    parent: tuple[int, np.ndarray] | None = None

    @property
    def k(self) -> int:
        """Number of random-effect columns of the term."""
        return 1 if np.ndim(self.Z) == 1 else int(np.shape(self.Z)[1])

    @property
    def n_theta(self) -> int:
        """Number of covariance parameters (lme4's theta) of the term."""
        k = self.k
        return k * (k + 1) // 2 if self.correlated else k

    def column(self, a: int) -> np.ndarray:
        """Return column ``a`` of ``Z`` as a float64 1-D array (a view when possible)."""
        z = np.asarray(self.Z)
        col = z if z.ndim == 1 else z[:, a]
        return np.asarray(col, dtype=np.float64)


@dataclass
class Factor:
    """Terms sharing one grouping factor, merged into a per-group ``K x K`` block.

    Attributes
    ----------
    blocks : list of int
        Indices (into the caller's block list) of the merged terms, in caller order.
    col_offsets : list of int
        First column of each merged term inside the factor's ``K`` columns.
    m : int
        Number of groups.
    K : int
        Total number of random-effect columns per group.
    group_index : numpy.ndarray
        ``(n,)`` int64 group codes.
    columns : list of numpy.ndarray
        The ``K`` model columns (views of the terms' ``Z``).
    is_ones : list of bool
        Whether each column is identically 1 (lets the data pass skip multiplications).
    """

    blocks: list[int]
    col_offsets: list[int]
    m: int
    K: int
    group_index: np.ndarray
    columns: list[np.ndarray]
    is_ones: list[bool]


@dataclass
class Plan:
    """Elimination plan.

    Attributes
    ----------
    factors : list of Factor
        All factors.
    chain : list of int
        Factor ids eliminated with batched algebra, finest first; each is nested in
        all later ones.
    root : list of int
        Factor ids assembled into one dense matrix (crossed with the chain); empty for
        purely nested models.
    parent_maps : dict of (int, int) -> numpy.ndarray
        ``parent_maps[(i, j)]`` maps groups of ``chain[i]`` to groups of ``chain[j]``
        (``i < j``).
    """

    factors: list[Factor]
    chain: list[int]
    root: list[int]
    parent_maps: dict[tuple[int, int], np.ndarray]


def term_blocks(design: Any, codes: Mapping[str, np.ndarray], columns: Callable[[Any], np.ndarray]) -> list[RandomBlock]:
    """One block per group-level term of ``design`` (a ``Design`` or a streamed one), from
    the group codes per level and each term's columns (the rows' ``Z``, or placeholders over
    the cells of a streamed design); a term is nested in the first term of its level's
    parent level."""
    first_term_of_level: dict[str, int] = {}
    blocks = []
    for i, td in enumerate(design.terms):
        lv = design.hierarchy.level(td.level)
        parent = None
        if lv.parent is not None and lv.parent in first_term_of_level and lv.parent_index is not None:
            parent = (first_term_of_level[lv.parent], lv.parent_index)
        first_term_of_level.setdefault(td.level, i)
        blocks.append(RandomBlock(codes[td.level], lv.n_groups, columns(td), td.term.correlated, parent))
    return blocks


def _is_ones(col: np.ndarray) -> bool:
    # One O(n) pass buys skipping several O(n) multiplications later.
    return bool(col.size) and bool(np.all(col == 1.0))


def _merge_factors(blocks: Sequence[RandomBlock], n: int) -> tuple[list[Factor], list[int]]:
    """Group terms with identical grouping codes into factors.

    Returns the factors and, for each block, the id of its factor.
    """
    factors: list[Factor] = []
    block_factor: list[int] = []
    codes: list[np.ndarray] = []
    for b_idx, blk in enumerate(blocks):
        g = np.ascontiguousarray(blk.group_index, dtype=np.int64)
        if g.shape != (n,):
            raise ValueError(f"block {b_idx}: group_index must have shape ({n},), got {g.shape}")
        if np.shape(blk.Z)[0] != n:
            raise ValueError(f"block {b_idx}: Z must have {n} rows")
        if n and (g.min() < 0 or g.max() >= blk.n_groups):
            raise ValueError(f"block {b_idx}: group_index outside 0..n_groups-1")
        found = -1
        for f_idx, fac in enumerate(factors):
            # Identity of the code arrays (not of their labels) defines a shared factor.
            if fac.m == blk.n_groups and (codes[f_idx] is g or np.array_equal(codes[f_idx], g)):
                found = f_idx
                break
        cols = [blk.column(a) for a in range(blk.k)]
        if found < 0:
            codes.append(g)
            factors.append(Factor([b_idx], [0], int(blk.n_groups), blk.k, g, cols,
                                  [_is_ones(c) for c in cols]))
            found = len(factors) - 1
        else:
            fac = factors[found]
            fac.blocks.append(b_idx)
            fac.col_offsets.append(fac.K)
            fac.K += blk.k
            fac.columns.extend(cols)
            fac.is_ones.extend(_is_ones(c) for c in cols)
        block_factor.append(found)
    return factors, block_factor


def _nesting_map(child: Factor, parent: Factor, hint: np.ndarray | None) -> np.ndarray | None:
    """Map child groups to parent groups if the child factor is nested in the parent.

    ``None`` when some child group spans several parent groups (the factors are crossed).
    Groups with no rows map to 0; their random effects decouple anyway.
    """
    if hint is not None:
        cand = np.asarray(hint, dtype=np.int64)
        if cand.shape != (child.m,):
            return None
    else:
        cand = np.zeros(child.m, dtype=np.int64)
        cand[child.group_index] = parent.group_index
    if np.array_equal(cand[child.group_index], parent.group_index):
        return cand
    return None


def make_plan(blocks: Sequence[RandomBlock], n: int, *, warn: bool = True) -> tuple[Plan, list[int]]:
    """Analyse the terms and choose the elimination plan.

    Parameters
    ----------
    blocks : sequence of RandomBlock
        The random-effects terms.
    n : int
        Number of observations.
    warn : bool, default True
        Warn when the dense root is large (callers that choose another elimination for
        crossed factors warn themselves).

    Returns
    -------
    plan : Plan
        The factors and the chain/root split.
    block_factor : list of int
        Factor id of each block.
    """
    if len(blocks) == 0:
        raise ValueError("at least one random-effects block is required")
    factors, block_factor = _merge_factors(blocks, n)
    nf = len(factors)
    hints: dict[tuple[int, int], np.ndarray] = {}
    for b_idx, blk in enumerate(blocks):
        if blk.parent is not None:
            pb, pmap = blk.parent
            hints[(block_factor[b_idx], block_factor[int(pb)])] = np.asarray(pmap)
    # nested[i][j]: map from factor i's groups to factor j's groups, or None.
    nested: dict[tuple[int, int], np.ndarray | None] = {}

    def nest(i: int, j: int) -> np.ndarray | None:
        if (i, j) not in nested:
            fi, fj = factors[i], factors[j]
            mp = None
            if fi.m >= fj.m:
                mp = _nesting_map(fi, fj, hints.get((i, j)))
                if mp is None and (i, j) in hints:
                    mp = _nesting_map(fi, fj, None)  # a wrong hint must not force "crossed"
            nested[(i, j)] = mp
        return nested[(i, j)]

    order = sorted(range(nf), key=lambda f: (-factors[f].m, f))
    best: tuple[int, list[int]] | None = None
    # Try each factor as the finest chain member and extend greedily with coarser factors;
    # keep the chain that leaves the smallest dense root (few factors, so this is cheap).
    for start_pos, start in enumerate(order):
        chain = [start]
        for f in order[start_pos + 1:]:
            if all(nest(c, f) is not None for c in chain):
                chain.append(f)
        root_size = sum(factors[f].m * factors[f].K for f in order if f not in chain)
        if best is None or root_size < best[0]:
            best = (root_size, chain)
    assert best is not None
    chain = best[1]
    root = [f for f in range(nf) if f not in chain]
    if warn and best[0] > DENSE_ROOT_WARN:
        warnings.warn(
            f"crossed random effects with {best[0]} columns are eliminated as one dense block "
            f"(O(q^3) per likelihood evaluation); fitting may be slow", RuntimeWarning,
            stacklevel=3)
    parent_maps: dict[tuple[int, int], np.ndarray] = {}
    for i in range(len(chain)):
        for j in range(i + 1, len(chain)):
            pm = nest(chain[i], chain[j])
            assert pm is not None
            parent_maps[(i, j)] = pm
    return Plan(factors, chain, root, parent_maps), block_factor
