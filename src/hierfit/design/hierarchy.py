"""The tree of groups: levels under a named national root, parent maps, sizes.

Built from the data's grouping columns by :func:`build_hierarchy`. A level's parent is

* the grouping factor whose columns prefix its own (``market`` for ``market:submarket``) --
  labels are then read within their parent, so ``Sub_1`` under two markets is two groups;
* the previous level in an explicit ``hierarchy=(...)`` -- labels are then identifiers, and a
  child under two parents is an error;
* otherwise, the finest other factor its labels nest in (each label maps to one group), as
  lme4 treats unique ids. Factors that nest in nothing hang under the national root (crossed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from hierfit.exceptions import DataError, HierarchyError
from hierfit.formula import GroupingFactor
from hierfit.model.spec import ModelSpec


@dataclass(frozen=True, eq=False)
class Level:
    """One level of the tree.

    ``groups`` are sorted labels (``"Market_1:Sub_2"`` for path factors); ``parent_index[g]``
    is the index of group ``g``'s parent in the parent level (absent at the top).
    """

    name: str
    factor: GroupingFactor
    parent: str | None
    groups: tuple[str, ...]
    parent_index: np.ndarray | None
    sizes: np.ndarray

    @property
    def n_groups(self) -> int:
        return len(self.groups)


@dataclass(frozen=True, eq=False)
class Hierarchy:
    """Levels under a national root, parents before children.

    Examples
    --------
    >>> import pandas as pd
    >>> from hierfit.model import make_spec
    >>> df = pd.DataFrame({"y": [1.0, 2, 3, 4], "m": ["A", "A", "B", "B"], "s": ["a", "b", "a", "a"]})
    >>> h, _ = build_hierarchy(make_spec("y ~ 1 + (1 | m/s)"), df)
    >>> h.level("s").groups, h.parent_label("s", "B:a")
    (('A:a', 'A:b', 'B:a'), 'B')
    """

    national: str
    levels: tuple[Level, ...]
    #: (level, other level) pairs whose labels cross: a label of ``level`` occurs with several
    #: groups of ``other`` and ``level`` nests in nothing, so each label is one group across all
    #: of ``other`` (store x product, student x lecturer)
    crossed: tuple[tuple[str, str], ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(lv.name for lv in self.levels)

    @property
    def n_rows(self) -> int:
        """Rows under the national root: every level's groups partition them, so the top
        level's sizes sum to the count (0 for a tree without levels, which keeps no sizes)."""
        return int(np.sum(self.levels[0].sizes)) if self.levels else 0

    def level(self, name: str) -> Level:
        for lv in self.levels:
            if lv.name == name:
                return lv
        raise KeyError(f"No level {name!r}; levels are {list(self.names)}.")

    def ancestors(self, name: str) -> list[str]:
        """Parent, grandparent, ... of a level (national excluded)."""
        out: list[str] = []
        parent = self.level(name).parent
        while parent is not None:
            out.append(parent)
            parent = self.level(parent).parent
        return out

    def children(self, name: str | None) -> list[str]:
        """Levels whose parent is ``name`` (``None``: the national root)."""
        return [lv.name for lv in self.levels if lv.parent == name]

    def parent_label(self, level: str, group: str) -> str:
        lv = self.level(level)
        if lv.parent is None or lv.parent_index is None:
            return self.national
        return self.level(lv.parent).groups[int(lv.parent_index[lv.groups.index(group)])]

    def ancestor_index(self, level: str, ancestor: str) -> np.ndarray:
        """For each group of ``level``, the index of its group at ``ancestor``."""
        lv = self.level(level)
        idx = np.arange(lv.n_groups)
        while lv.name != ancestor:
            if lv.parent is None or lv.parent_index is None:
                raise KeyError(f"{ancestor!r} is not an ancestor of {level!r}.")
            idx = lv.parent_index[idx]
            lv = self.level(lv.parent)
        return idx

    def describe(self) -> str:
        """One line per level: name, groups, parent, rows per group."""
        lines = [f"{self.national} (national root)"]
        crossing = {name: [o for n, o in self.crossed if n == name] for name in self.names}
        for lv in self.levels:
            depth = len(self.ancestors(lv.name)) + 1
            crossed = f", crossed with {', '.join(crossing[lv.name])}" if crossing[lv.name] else ""
            lines.append(
                f"{'  ' * depth}{lv.name}: {lv.n_groups} groups under {lv.parent or self.national}{crossed}; "
                f"rows per group {int(lv.sizes.min())}-{int(lv.sizes.max())}"
            )
        return "\n".join(lines)


def factorize_factor(data: pd.DataFrame, factor: GroupingFactor) -> tuple[np.ndarray, list[str]]:
    """Integer group code per row and the group labels (``"A:a"`` for ``batch:cask``).

    Groups are sorted by their path (each column's values sorted, numbers numerically). One
    pass of :func:`pandas.factorize` per column and one over the combined integer codes: labels are built
    only for the distinct groups, so this stays fast at millions of rows.
    """
    for col in factor.columns:
        if col not in data.columns:
            raise DataError(
                f"Grouping column {col!r} is not in the data; columns are {sorted(map(str, data.columns))}. "
                "Fix the formula or add the column."
            )
        missing = int(data[col].isna().sum())
        if missing:
            raise DataError(
                f"Grouping column {col!r} has {missing} missing labels (of {len(data)} rows); "
                "drop those rows or give them a label before fitting."
            )
    per_column = []
    for col in factor.columns:
        codes, uniques = pd.factorize(data[col], sort=True)
        per_column.append((codes.astype(np.int64), [str(u) for u in uniques]))
    combined = per_column[0][0]
    for codes, uniques in per_column[1:]:
        combined = combined * len(uniques) + codes
    # hash-based: sorts only the distinct codes, no n-length sort temporaries
    inverse, distinct = pd.factorize(combined, sort=True)
    digits = []
    rest = distinct
    for codes, uniques in reversed(per_column[1:]):
        digits.append(rest % len(uniques))
        rest = rest // len(uniques)
    digits.append(rest)
    digits.reverse()
    names = [uniques for _, uniques in per_column]
    labels = [":".join(names[j][int(digits[j][i])] for j in range(len(names))) for i in range(len(distinct))]
    return inverse.astype(np.int64).ravel(), labels


def group_labels(data: pd.DataFrame, factor: GroupingFactor) -> np.ndarray:
    """Row labels of a grouping factor (``"A:a"`` for ``batch:cask``), checking columns and NA."""
    codes, labels = factorize_factor(data, factor)
    return np.asarray(labels, dtype=object)[codes]


def build_hierarchy(spec: ModelSpec, data: pd.DataFrame,
                    counts: np.ndarray | None = None) -> tuple[Hierarchy, dict[str, np.ndarray]]:
    """Build the tree from the data; return it with each level's group index per row.

    ``counts`` (optional) says how many rows each row of ``data`` stands for: a streamed
    design builds the tree from the distinct combinations of the grouping columns and their
    row counts (:mod:`hierfit.design.streamed`); groups, parents and order are the same as
    from the rows themselves, because both only depend on which combinations occur.
    """
    factors = spec.formula.factors
    codes: dict[str, np.ndarray] = {}
    uniques: dict[str, tuple[str, ...]] = {}
    for f in factors:
        codes[f.level], labels = factorize_factor(data, f)
        uniques[f.level] = tuple(labels)
    parents, crossed = _find_parents(spec, factors, codes, uniques)
    ordered = _topological(factors, parents)
    levels = []
    for f in ordered:
        parent = parents[f.level]
        parent_index = None
        if parent is not None:
            parent_index = np.zeros(len(uniques[f.level]), dtype=np.int64)
            parent_index[codes[f.level]] = codes[parent]
        sizes = np.bincount(codes[f.level], weights=counts, minlength=len(uniques[f.level]))
        sizes = np.rint(sizes).astype(np.int64) if counts is not None else sizes
        levels.append(Level(f.level, f, parent, uniques[f.level], parent_index, sizes))
    return Hierarchy(spec.national, tuple(levels), tuple(crossed)), codes


def _find_parents(spec, factors, codes, uniques) -> tuple[dict[str, str | None], list[tuple[str, str]]]:
    by_columns = {f.columns: f for f in factors}
    parents: dict[str, str | None] = {}
    crossed: list[tuple[str, str]] = []
    if spec.hierarchy:
        for upper, lower in zip(spec.hierarchy, spec.hierarchy[1:]):
            _require_single_parent(lower, upper, codes, uniques)
            parents[lower] = upper
        parents.setdefault(spec.hierarchy[0], None)
    for f in factors:
        if f.level in parents:
            continue
        prefixes = [by_columns[f.columns[:i]] for i in range(len(f.columns) - 1, 0, -1) if f.columns[:i] in by_columns]
        if prefixes:
            parents[f.level] = prefixes[0].level
            continue
        parents[f.level], crossed_with = _inferred_parent(f, factors, codes, uniques)
        crossed.extend((f.level, other) for other in crossed_with)
    return parents, crossed


def _pairs(child: str, parent: str, codes) -> np.ndarray:
    """Distinct (child group, parent group) pairs seen in the rows, sorted by child."""
    n_parent = int(codes[parent].max()) + 1
    combined = np.unique(codes[child] * n_parent + codes[parent])
    return np.stack([combined // n_parent, combined % n_parent], axis=1)


def _require_single_parent(child: str, parent: str, codes, uniques) -> None:
    pairs = _pairs(child, parent, codes)
    counts = np.bincount(pairs[:, 0], minlength=len(uniques[child]))
    bad = np.flatnonzero(counts > 1)
    if bad.size:
        g = int(bad[0])
        names = sorted(uniques[parent][p] for p in pairs[pairs[:, 0] == g, 1])
        more = f" ({bad.size} {child} labels have this problem)" if bad.size > 1 else ""
        raise HierarchyError(
            f"{child.capitalize()} {uniques[child][g]!r} appears under {len(names)} {parent} groups "
            f"({', '.join(names)}): each child needs exactly one parent{more}. If equal labels under "
            f"different {parent} groups are different {child} groups, write the term as "
            f"(1 | {parent}/{child}) and leave {child!r} out of 'hierarchy'."
        )


def _inferred_parent(f, factors, codes, uniques) -> tuple[str | None, list[str]]:
    """The finest factor ``f``'s labels nest in, and (when none) the factors they cross."""
    best: tuple[int, str] | None = None
    crossed_with: list[str] = []
    for other in factors:
        if other is f or len(uniques[other.level]) > len(uniques[f.level]):
            continue
        pairs = _pairs(f.level, other.level, codes)
        nested = len(pairs) == len(uniques[f.level])
        if nested and len(uniques[other.level]) < len(uniques[f.level]):
            if best is None or len(uniques[other.level]) > best[0]:
                best = (len(uniques[other.level]), other.level)
        elif not nested:
            crossed_with.append(other.level)
    if best is not None:
        return best[1], []
    return None, crossed_with


def _topological(factors, parents) -> list[GroupingFactor]:
    by_level = {f.level: f for f in factors}
    out: list[GroupingFactor] = []
    placed: set[str] = set()

    def place(level: str) -> None:
        if level in placed:
            return
        parent = parents[level]
        if parent is not None:
            place(parent)
        placed.add(level)
        out.append(by_level[level])

    for f in factors:
        place(f.level)
    return out
