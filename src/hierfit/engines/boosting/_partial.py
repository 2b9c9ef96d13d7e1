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
from hierfit.engines.state import StateReader, StateWriter

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
    root
        The paths (deepest-level groups) averaged for the national root and their weights.
    members
        Per level above the deepest, per group: the paths averaged for it and their weights.

    :meth:`sampled` chooses ``root`` and ``members`` at fit time; a saved fit stores them.
    """

    def __init__(self, hierarchy: Hierarchy, features: FeatureMap, root: tuple[np.ndarray, np.ndarray],
                 members: list[list[tuple[np.ndarray, np.ndarray]]]) -> None:
        self.hierarchy = hierarchy
        self.features = features
        levels = hierarchy.levels
        deepest = levels[-1]
        self.path_codes = {lv.name: hierarchy.ancestor_index(deepest.name, lv.name) for lv in levels}
        self.root = root
        # members[l][g]: (paths, weights) averaged for group g of level l; the deepest level's
        # groups are single paths
        self.members = [*members, [(np.array([g]), np.ones(1)) for g in range(deepest.n_groups)]]
        self._ancestors = [[hierarchy.ancestor_index(lv.name, up.name) for up in levels[: i + 1]] for i, lv in enumerate(levels)]

    @classmethod
    def sampled(cls, hierarchy: Hierarchy, features: FeatureMap, max_paths: int = 64, seed: int = 0) -> PathAverager:
        """Every path of groups with up to ``max_paths`` of them, else ``max_paths`` drawn (seeded)."""
        rng = np.random.default_rng(seed)
        levels = hierarchy.levels
        deepest = levels[-1]
        path_codes = {lv.name: hierarchy.ancestor_index(deepest.name, lv.name) for lv in levels}
        n_paths = deepest.n_groups
        # weight of each path in the national average: 1/n_children at every step down
        weight = np.ones(n_paths)
        for lv in levels:
            parent = lv.parent_index if lv.parent_index is not None else np.zeros(lv.n_groups, dtype=np.int64)
            n_children = np.bincount(parent)
            weight /= n_children[parent[path_codes[lv.name]]]
        root = _select(np.arange(n_paths), weight, max_paths, rng)
        members: list[list[tuple[np.ndarray, np.ndarray]]] = []
        for lv in levels[:-1]:
            codes = path_codes[lv.name]
            order = np.argsort(codes, kind="stable")
            bounds = np.searchsorted(codes[order], np.arange(lv.n_groups + 1))
            members.append([_select(order[bounds[g] : bounds[g + 1]], weight[order[bounds[g] : bounds[g + 1]]], max_paths, rng) for g in range(lv.n_groups)])
        return cls(hierarchy, features, root, members)

    def save(self, state: StateWriter) -> None:
        """The chosen paths and weights, level by level (flat arrays with offsets)."""
        state.put_arrays("root", [self.root[0].astype(np.int64), self.root[1]])
        for l, per_group in enumerate(self.members[:-1]):
            sizes = np.array([len(p) for p, _ in per_group], dtype=np.int64)
            paths = np.concatenate([p for p, _ in per_group]).astype(np.int64) if per_group else np.zeros(0, dtype=np.int64)
            weights = np.concatenate([w for _, w in per_group]) if per_group else np.zeros(0)
            state.put_arrays(f"members_{l}", [paths, weights, sizes])

    @classmethod
    def load(cls, state: StateReader, hierarchy: Hierarchy, features: FeatureMap) -> PathAverager:
        """The averager :meth:`save` wrote, checked against the tree of groups."""
        levels = hierarchy.levels
        n_paths = levels[-1].n_groups
        root_paths, root_weights = _pair(state, "root", n_paths)
        members = []
        for l, lv in enumerate(levels[:-1]):
            parts = state.get_arrays(f"members_{l}", kind="if", ndim=1)
            if (len(parts) != 3 or parts[2].dtype.kind != "i" or parts[2].shape != (lv.n_groups,) or (parts[2] < 0).any()
                    or int(parts[2].sum()) != len(parts[0])):
                raise state.fail(f"malformed paths for level {lv.name!r}")
            paths, weights, sizes = parts
            _check_paths(state, paths, weights, n_paths, lv.name)
            ends = np.cumsum(sizes)
            members.append([(paths[e - n : e], weights[e - n : e]) for n, e in zip(sizes, ends)])
        return cls(hierarchy, features, (root_paths, root_weights), members)

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


def _pair(state: StateReader, key: str, n_paths: int) -> tuple[np.ndarray, np.ndarray]:
    parts = state.get_arrays(key, kind="if", ndim=1)
    if len(parts) != 2:
        raise state.fail(f"malformed paths {key!r}")
    _check_paths(state, parts[0], parts[1], n_paths, key)
    return parts[0], parts[1]


def _check_paths(state: StateReader, paths: np.ndarray, weights: np.ndarray, n_paths: int, what: str) -> None:
    if paths.dtype.kind != "i" or weights.dtype.kind != "f" or paths.shape != weights.shape or (
            len(paths) and (paths.min() < 0 or paths.max() >= n_paths)):
        raise state.fail(f"malformed paths for {what!r}")
