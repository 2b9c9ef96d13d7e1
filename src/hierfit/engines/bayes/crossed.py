"""Crossed grouping factors on the tree: the nested part eliminated leaves first, the rest dense.

When the grouping factors do not all nest (``(1 | store) + (1 | week)``, or a market/submarket
tree plus ``(1 | month)``), :func:`.tree.tree_layout` finds no tree. MixedModels.jl's blocked
Cholesky (Bates et al.) still applies: take the factor with the most groups first -- its block
of ``P`` is block diagonal, one small block per group -- with every coarser factor that it nests
in, and put the remaining (*crossed*) factors' coefficients into the dense *border* beside the
integrated population coefficients. The factorisation of :mod:`.tree_marginal` then eliminates
the nested chain without fill (its nodes meet only their ancestors and the border) and factorises
the border's Schur complement densely: ``O(groups × K × d_B²) + O(d_B³)`` per gradient with
``d_B`` the integrated population coefficients plus the crossed ones, never ``(p + q)²``.
The crossed factors should be the small ones (a few hundred coefficients); :mod:`.cost` weighs
this against the per-row likelihood.

Here the crossed terms become extra border *columns* of the block statistics: for a crossed term
``t`` with ``m`` groups and ``k`` coefficients, column ``p + start + j k + s`` of the border is
``z_ts`` on the rows of group ``j`` and 0 elsewhere (``u``'s own order for ``b_t``, so the border
maps onto ``u`` by :attr:`CrossedTreeLayout.border_u_index`). Its statistics are gathered with
bincounts over the (row's group, column) pairs, never a dense ``n × d_B`` matrix.

Examples
--------
>>> import numpy as np, hierfit
>>> from hierfit.design import build_design
>>> from hierfit.engines.bayes.structure import make_structure
>>> sim = hierfit.simulate(n_markets=4, n_submarkets=3, rows_per_submarket=5, seed=1)
>>> df = sim.data.assign(season=np.tile(["s1", "s2"], len(sim.data) // 2))
>>> design = build_design(hierfit.make_spec("y ~ x1 + (1 | market/submarket) + (1 | season)"), df)
>>> layout = crossed_tree_layout(design, make_structure(design, marginal=True))
>>> [lv.name for lv in layout.levels], [(t.n_groups, t.k) for t in layout.border_terms]
(['market', 'submarket'], [(2, 1)])
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from hierfit.design import Design
from hierfit.engines.bayes.structure import BayesStructure, net_outcome
from hierfit.engines.bayes.tree import TreeLayout, TreeStats, _nested_map, tree_layout, tree_stats

__all__ = ["BorderTerm", "CrossedTreeLayout", "crossed_tree_layout", "crossed_tree_stats", "layout_stats"]


@dataclass(frozen=True)
class BorderTerm:
    """A crossed term kept in the dense border: ``term`` indexes ``BayesStructure.terms``; its
    ``n_groups × k`` coefficients are border columns ``start …`` (after the ``p`` population ones)."""

    term: int
    start: int
    n_groups: int
    k: int

    @property
    def size(self) -> int:
        return self.n_groups * self.k

    @property
    def columns(self) -> slice:
        return slice(self.start, self.start + self.size)


@dataclass(frozen=True, eq=False)
class CrossedTreeLayout(TreeLayout):
    """A :class:`.tree.TreeLayout` of the nested chain whose border also holds crossed terms.

    ``p`` is the border's width in the statistics (population columns, then each crossed term's
    coefficients); ``border_u_index[c]`` is the position in ``u`` of border column ``c``.
    """

    border_terms: tuple[BorderTerm, ...] = ()
    border_u_index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def _level_names(structure: BayesStructure) -> list[str]:
    names: list[str] = []
    for t in structure.terms:
        if t.level not in names:
            names.append(t.level)
    return names


def crossed_tree_layout(design: Design, structure: BayesStructure) -> CrossedTreeLayout | None:
    """The nested chain through the factor with the most groups, the other factors in the border.

    The chain is grown from that finest factor through every coarser one that contains all of
    its members (read from the rows, as :func:`.tree.tree_layout`); ``None`` when every factor
    nests (use the plain tree) or some row lies outside every group.
    """
    names = _level_names(structure)
    sizes = {name: design.hierarchy.level(name).n_groups for name in names}
    codes = {name: np.asarray(design.group_index[name], dtype=np.int64) for name in names}
    if any((c < 0).any() for c in codes.values()):
        return None
    finest_first = sorted(names, key=lambda name: (-sizes[name], names.index(name)))
    chain = [finest_first[0]]
    for name in finest_first[1:]:
        if all(_nested_map(codes[member], codes[name], sizes[member]) is not None for member in chain):
            chain.append(name)
    crossed = [name for name in names if name not in chain]
    if not crossed:
        return None
    chain_ids = [i for i, t in enumerate(structure.terms) if t.level in chain]
    chain_structure = dataclasses.replace(structure, terms=tuple(structure.terms[i] for i in chain_ids))
    base = tree_layout(design, chain_structure)
    if base is None:  # cannot happen for a chain grown by nesting; kept as the honest fallback
        return None
    # the chain structure numbers its own terms: back to positions in the full structure
    levels = tuple(dataclasses.replace(lv, terms=tuple(chain_ids[i] for i in lv.terms)) for lv in base.levels)
    border, u_index, start = [], [np.arange(structure.p)], structure.p
    for i, t in enumerate(structure.terms):
        if t.level in crossed:
            border.append(BorderTerm(i, start, t.n_groups, t.k))
            u_index.append(t.offset + np.arange(t.size))
            start += t.size
    return CrossedTreeLayout(levels, start, structure.size, tuple(border), np.concatenate(u_index).astype(np.int64))


def crossed_tree_stats(design: Design, layout: CrossedTreeLayout, chunk: int = 1 << 16) -> TreeStats:
    """The block statistics with the crossed terms' coefficients as border columns.

    The nested blocks and the population columns' sums come from :func:`.tree.tree_stats`; the
    crossed columns' sums (with the population, with each other, with the nodes, with ``y``)
    are bincounts over the rows' (group, coefficient) pairs, chunked like the rows pass.
    """
    p = design.X.shape[1]
    base = tree_stats(design, TreeLayout(layout.levels, p, layout.size), chunk=chunk)
    d = layout.p
    y = net_outcome(design)
    w_all = design.weights
    levels = layout.levels
    position = []
    for lv in levels:
        pos = np.empty(lv.n_groups, dtype=np.int64)
        pos[lv.order] = np.arange(lv.n_groups)
        position.append(pos)
    XtX = np.zeros((d, d))
    XtX[:p, :p] = base.XtX
    Xty = np.zeros(d)
    Xty[:p] = base.Xty
    ZtX = [np.zeros((lv.n_groups, lv.k, d)) for lv in levels]
    for l in range(len(levels)):
        ZtX[l][:, :, :p] = base.ZtX[l]
    for start in range(0, design.n, chunk):
        rows = slice(start, min(start + chunk, design.n))
        w = np.ones(rows.stop - rows.start) if w_all is None else w_all[rows]
        X, yc = design.X[rows], y[rows]
        # each crossed term: the border column of every row's coefficients and their values
        cols = [bt.start + design.group_index[design.terms[bt.term].level][rows][:, None] * bt.k + np.arange(bt.k)
                for bt in layout.border_terms]
        vals = [design.terms[bt.term].Z[rows] for bt in layout.border_terms]
        Z = [np.hstack([design.terms[i].Z[rows] for i in lv.terms]) for lv in levels]
        nodes = [position[l][design.group_index[lv.name][rows]] for l, lv in enumerate(levels)]
        for c, v in zip(cols, vals):
            wv = v * w[:, None]
            Xty += np.bincount(c.ravel(), weights=(wv * yc[:, None]).ravel(), minlength=d)
            # population x crossed (both triangles)
            pc = np.bincount((np.arange(p)[None, None, :] * d + c[:, :, None]).ravel(),
                             weights=(wv[:, :, None] * X[:, None, :]).ravel(), minlength=p * d).reshape(p, d)
            XtX[:p] += pc
            XtX[:, :p] += pc.T
            for c2, v2 in zip(cols, vals):
                key = (c[:, :, None] * d + c2[:, None, :]).ravel()
                XtX += np.bincount(key, weights=(wv[:, :, None] * v2[:, None, :]).ravel(), minlength=d * d).reshape(d, d)
            for l, lv in enumerate(levels):
                g = nodes[l]
                key = ((g[:, None, None] * lv.k + np.arange(lv.k)[None, :, None]) * d + c[:, None, :]).ravel()
                ZtX[l] += np.bincount(key, weights=(Z[l][:, :, None] * wv[:, None, :]).ravel(),
                                      minlength=lv.n_groups * lv.k * d).reshape(lv.n_groups, lv.k, d)
    return TreeStats(layout, base.ZtZ, base.ZtZ_up, tuple(ZtX), base.Zty, XtX, Xty, base.yty, base.n, base.log_weights)


def layout_stats(design: Design, layout: TreeLayout, chunk: int = 1 << 16) -> TreeStats:
    """The block statistics of ``layout``: with crossed border columns where it has them."""
    if isinstance(layout, CrossedTreeLayout):
        return crossed_tree_stats(design, layout, chunk=chunk)
    return tree_stats(design, layout, chunk=chunk)

