"""Partial dependence of a booster on the tree of groups, level by level.

A *path* is a deepest-level group with all its ancestors (``Market_03`` > ``Market_03:Sub_2``).
For a row with features ``x`` and a group ``g`` at level ``l``, ``A_l(x, g)`` is the prediction
with the row's groups set along a path through ``g``, averaged over ``g``'s descendant paths
with every child weighted equally within its parent (a parent's average over its children);
``A_root(x)`` averages over the whole tree. For the row's own groups these telescope:
``F(x, own path) = A_root + sum_l (A_l(own) - A_{l-1}(own parent))``.

Evaluating every path for every row costs ``rows x paths`` predictions. A group with more than
``max_paths`` descendant paths is averaged over ``max_paths`` of them drawn once, at fit time,
by systematic sampling proportional to their weights (unbiased and spread over the children);
below that the averages are exact. Rows are batched by their deepest known group, since those
rows need the same set of paths.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from hierfit.design import RowDesign
from hierfit.design.hierarchy import Hierarchy
from hierfit.engines.boosting._features import FeatureMap

CHUNK_CELLS = 1_000_000  # rows x paths predicted per LightGBM call


def _select(paths: np.ndarray, weights: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """All paths with their weights, or ``k`` systematic PPS picks (weight 1/k per pick)."""
    w = weights / weights.sum()
    if len(paths) <= k:
        return paths, w
    cum = np.cumsum(w)
    u = (rng.random() + np.arange(k)) / k
    picks = np.minimum(np.searchsorted(cum, u, side="right"), len(paths) - 1)
    chosen, counts = np.unique(picks, return_counts=True)
    return paths[chosen], counts / k


class PathAverager:
    """Per-row partial-dependence parts over a chain of nested levels.

    Parameters
    ----------
    hierarchy
        The fitted tree (levels must form one chain: see ``require_chain``).
    features
        Builds the booster's feature matrix with the group columns set to given codes.
    max_paths
        Largest number of paths averaged exactly for one group (else sampled once, seeded).
    """

    def __init__(self, hierarchy: Hierarchy, features: FeatureMap, max_paths: int = 64, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.hierarchy = hierarchy
        self.features = features
        levels = hierarchy.levels
        deepest = levels[-1]
        self.path_codes = {lv.name: hierarchy.ancestor_index(deepest.name, lv.name) for lv in levels}
        n_paths = deepest.n_groups
        # weight of each path in the national average: 1/n_children at every step down
        weight = np.ones(n_paths)
        for lv in levels:
            parent = lv.parent_index if lv.parent_index is not None else np.zeros(lv.n_groups, dtype=np.int64)
            n_children = np.bincount(parent)
            weight /= n_children[parent[self.path_codes[lv.name]]]
        all_paths = np.arange(n_paths)
        self.root = _select(all_paths, weight, max_paths, rng)
        # members[l][g]: (paths, weights) averaged for group g of level l
        self.members: list[list[tuple[np.ndarray, np.ndarray]]] = []
        for lv in levels[:-1]:
            codes = self.path_codes[lv.name]
            order = np.argsort(codes, kind="stable")
            bounds = np.searchsorted(codes[order], np.arange(lv.n_groups + 1))
            self.members.append([_select(order[bounds[g] : bounds[g + 1]], weight[order[bounds[g] : bounds[g + 1]]], max_paths, rng) for g in range(lv.n_groups)])
        self.members.append([(np.array([g]), np.ones(1)) for g in range(n_paths)])
        self._ancestors = [[hierarchy.ancestor_index(lv.name, up.name) for up in levels[: i + 1]] for i, lv in enumerate(levels)]

    def parts(self, design: RowDesign, predict: Callable[[np.ndarray], np.ndarray], rows: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Per row: ``A_root`` and each level's change ``A_l(own) - A_{l-1}(own parent)``.

        A level whose group is unseen (index -1) -- and every level below it -- contributes 0,
        so the row's prediction is its deepest known group's average over its descendants.
        """
        levels = self.hierarchy.levels
        m = len(rows)
        depth = np.zeros(m, dtype=np.int64)  # number of known levels from the top
        known = np.ones(m, dtype=bool)
        for lv in levels:
            known &= design.group_index[lv.name][rows] >= 0
            depth += known
        offsets = np.concatenate([[0, 1], 1 + np.cumsum([lv.n_groups for lv in levels])])
        key = np.zeros(m, dtype=np.int64)
        for d, lv in enumerate(levels, start=1):
            here = depth == d
            key[here] = offsets[d] + design.group_index[lv.name][rows[here]]
        keys, inverse = np.unique(key, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(len(keys) + 1))
        values = np.zeros((len(levels) + 1, m))  # row 0: root; row l+1: A_l(own)
        batch: list[tuple[np.ndarray, np.ndarray, list[tuple[int, np.ndarray, np.ndarray]]]] = []
        cells = 0
        for k, kv in enumerate(keys):
            d = int(np.searchsorted(offsets, kv, side="right") - 1)
            g = int(kv - offsets[d])
            sets = [(0, *self.root)]
            for l in range(d):
                own = int(self._ancestors[d - 1][l][g])
                sets.append((l + 1, *self.members[l][own]))
            union = np.unique(np.concatenate([s[1] for s in sets]))
            local = order[bounds[k] : bounds[k + 1]]
            batch.append((local, union, [(slot, np.searchsorted(union, p), w) for slot, p, w in sets]))
            cells += len(local) * len(union)
            if cells >= CHUNK_CELLS:
                self._run(design, predict, rows, batch, values)
                batch, cells = [], 0
        if batch:
            self._run(design, predict, rows, batch, values)
        root = values[0]
        out: dict[str, np.ndarray] = {}
        for l, lv in enumerate(levels):
            have = depth > l
            out[lv.name] = np.where(have, values[l + 1] - values[l], 0.0)
            values[l + 1] = np.where(have, values[l + 1], values[l])
        return root, out

    def _run(self, design: RowDesign, predict: Callable[[np.ndarray], np.ndarray], rows: np.ndarray, batch: list, values: np.ndarray) -> None:
        blocks = []
        for local, union, _ in batch:
            rep = np.repeat(rows[local], len(union))
            codes = {lv: np.tile(c[union], len(local)) for lv, c in self.path_codes.items()}
            blocks.append(self.features.matrix(design, rep, codes))
        scores = predict(np.vstack(blocks))
        start = 0
        for local, union, sets in batch:
            size = len(local) * len(union)
            F = scores[start : start + size].reshape(len(local), len(union))
            start += size
            for slot, pos, w in sets:
                values[slot, local] = F[:, pos] @ w
