"""LightGBM feature matrices built from a :class:`~hierfit.design.Design`, and tree-path averages.

Feature layout (names are LightGBM-safe: no ``: [ ] { } " ,``):

* the population predictors -- the design's ``X`` columns without the intercept;
* one categorical column per hierarchy level holding the group index (``NaN`` for an unseen
  group). The national root is *not* a column: it is the same for every row, so a tree could
  never split on it; its role is played by the booster's base score (the mean prediction);
* with ``slope_features="onehot"`` (and ``"auto"`` up to 256 such columns), one column per
  varying slope and group,
  ``x1 * [row in group g]`` (``x1__market__3``), so a tree can give each group its own slope
  with one threshold on one column -- instead of the reference material's ``x1 * code(market)``,
  which orders labels arbitrarily and ties unrelated groups together.

The partial-dependence averages over the tree of groups are in :mod:`._partial`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from hierfit.design import Design, RowDesign, StreamedDesign
from hierfit.design.hierarchy import Hierarchy
from hierfit.engines.splits import validation_rows
from hierfit.exceptions import SpecError
from hierfit.formula import INTERCEPT

#: hierfit family -> LightGBM objective (raw scores are then on the family's link scale)
#: (a binomial is LightGBM's cross-entropy on the share y / n, each row weighted by its trials:
#: the binomial log-likelihood up to a constant, with the logit raw score. LightGBM has no
#: negative-binomial objective; its mean is fitted by Poisson deviance -- the quasi-likelihood
#: of every log-link count model, consistent for the NB2 mean -- and theta then by maximum
#: likelihood at those means. Tweedie would need its own power and says nothing about theta.)
OBJECTIVES: dict[str, str] = {"gaussian": "regression", "bernoulli": "binary", "binomial": "cross_entropy", "poisson": "poisson",
                              "negative_binomial": "poisson"}

SLOPE_FEATURES = ("auto", "onehot", "trees")
AUTO_ONEHOT_MAX = 256  # "auto": per-group slope columns when there are at most this many
VALIDATION = ("grouped", "random")
MAX_ONEHOT_CELLS = 200_000_000  # n rows x one-hot columns held densely


def safe_name(name: str) -> str:
    """A LightGBM-safe feature name (it rejects JSON punctuation in names)."""
    out = "".join(ch if ch.isalnum() or ch in "_.-" else "_" for ch in str(name))
    return out or "feature"


def population_columns(design: Design | StreamedDesign) -> list[int]:
    """Indices of the non-intercept columns of ``X``."""
    return [j for j, n in enumerate(design.x_names) if n != INTERCEPT]


def require_chain(hierarchy: Hierarchy, engine: str) -> None:
    """The path averages below need one chain of nested levels (market > submarket > ...)."""
    prev: str | None = None
    for lv in hierarchy.levels:
        if lv.parent != prev:
            raise SpecError(
                f"Engine {engine!r} derives group effects along one chain of nested levels; level "
                f"{lv.name!r} hangs under {lv.parent or hierarchy.national!r}, not under {prev or hierarchy.national!r} "
                f"(levels: {list(hierarchy.names)}). Nest the levels, e.g. (1 | market/submarket), or use "
                "engine 'boosted-mixed', whose group effects come from the mixed model."
            )
        prev = lv.name


@dataclass(frozen=True)
class FeatureMap:
    """How a design becomes LightGBM's feature matrix (picklable, reused for new data).

    Attributes
    ----------
    names
        Feature names in column order.
    kinds
        Per feature: ``"level:<name>"`` (a hierarchy column), ``"slope"`` (a predictor that
        some level varies, or a per-group slope column), or ``"predictor"``.
    x_columns
        Indices into ``design.X`` of the population features.
    levels
        Hierarchy levels fed as categorical columns (empty for ``boosted-mixed``'s trees).
    onehot
        ``(term index, coefficient index, level)`` of every varying slope expanded per group.
    x_center, x_scale, slope_center, slope_scale
        Population features and per-group slope values are centred and scaled with the fitting
        rows' mean and spread before they reach LightGBM (which bins in float32): trees are then
        the same whatever the predictors' location and units, and a slope column's zero (rows
        of other groups) sits at the predictor's mean, not at an arbitrary origin.
    """

    names: tuple[str, ...]
    kinds: tuple[str, ...]
    x_columns: tuple[int, ...]
    levels: tuple[str, ...]
    onehot: tuple[tuple[int, int, str], ...]
    n_groups: tuple[int, ...]  # per level in ``levels``
    onehot_groups: tuple[int, ...]  # per entry of ``onehot``
    x_center: tuple[float, ...] = ()
    x_scale: tuple[float, ...] = ()
    slope_center: tuple[float, ...] = ()
    slope_scale: tuple[float, ...] = ()

    @classmethod
    def from_design(cls, design: Design, *, groups: bool, slope_features: str = "trees") -> FeatureMap:
        """The map of an in-memory design (centres and spreads from its rows)."""
        def spread(x_columns: tuple[int, ...], onehot: list[tuple[int, int, str]]) -> tuple[tuple[float, ...], ...]:
            x_center, x_scale = _centre_scale([design.X[:, j] for j in x_columns])
            slope_center, slope_scale = _centre_scale([design.terms[t].Z[:, j] for t, j, _ in onehot])
            return x_center, x_scale, slope_center, slope_scale

        return cls._build(design, groups, slope_features, spread)

    @classmethod
    def from_streamed(cls, design: StreamedDesign, *, groups: bool, slope_features: str = "trees") -> FeatureMap:
        """The map of a streamed design: the same centres and spreads, from its column moments
        (the design pass's mean and ``sum (x - mean)^2`` of every model column), so that the
        features built partition by partition equal those of the same rows in memory."""
        m, lay = design.column_moments, design.layout

        def spread(x_columns: tuple[int, ...], onehot: list[tuple[int, int, str]]) -> tuple[tuple[float, ...], ...]:
            x_center, x_scale = _moment_centre_scale(m.n, m.mean, m.m2, [lay.x[j] for j in x_columns])
            slope_center, slope_scale = _moment_centre_scale(m.n, m.mean, m.m2, [lay.terms[t][j] for t, j, _ in onehot])
            return x_center, x_scale, slope_center, slope_scale

        return cls._build(design, groups, slope_features, spread)

    @classmethod
    def _build(cls, design: Design | StreamedDesign, groups: bool, slope_features: str,
               spread: Callable[[tuple[int, ...], list[tuple[int, int, str]]], tuple[tuple[float, ...], ...]]) -> FeatureMap:
        """The layout from the design's structure; ``spread`` gives the columns' centres and scales."""
        slopes = set(design.spec.formula.slope_columns)
        x_columns = tuple(population_columns(design))
        names = [safe_name(design.x_names[j]) for j in x_columns]
        kinds = ["slope" if design.x_names[j] in slopes else "predictor" for j in x_columns]
        levels: tuple[str, ...] = ()
        onehot: list[tuple[int, int, str]] = []
        if groups:
            levels = design.hierarchy.names
            names += [safe_name(lv) for lv in levels]
            kinds += [f"level:{lv}" for lv in levels]
            if slope_features == "auto":
                slope_features = "onehot" if count_onehot(design) <= AUTO_ONEHOT_MAX else "trees"
            if slope_features == "onehot":
                terms: tuple[Any, ...] = design.terms  # TermDesign or TermShape: level and coefficients
                for t, td in enumerate(terms):
                    for j, coef in enumerate(td.coefficients):
                        if coef == INTERCEPT:
                            continue
                        onehot.append((t, j, td.level))
                        n_g = design.hierarchy.level(td.level).n_groups
                        names += [safe_name(f"{coef}__{td.level}__{g}") for g in range(n_g)]
                        kinds += ["slope"] * n_g
        onehot_groups = tuple(design.hierarchy.level(lv).n_groups for _, _, lv in onehot)
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise SpecError(f"Feature names clash after making them LightGBM-safe: {dup}. Rename those columns.")
        cells = design.n * sum(onehot_groups)
        if cells > MAX_ONEHOT_CELLS:
            raise SpecError(
                f"slope_features='onehot' would build {sum(onehot_groups)} per-group slope columns for "
                f"{design.n} rows ({cells:.2g} cells); use slope_features='trees' for levels with many groups."
            )
        n_groups = tuple(design.hierarchy.level(lv).n_groups for lv in levels)
        x_center, x_scale, slope_center, slope_scale = spread(x_columns, onehot)
        return cls(tuple(names), tuple(kinds), x_columns, levels, tuple(onehot), n_groups, onehot_groups,
                   x_center, x_scale, slope_center, slope_scale)

    def unit_map(self) -> dict[str, tuple[float, float]]:
        """Per standardised feature name, ``(centre, scale)``: a value ``v`` on the trees' axis is
        ``centre + scale * v`` in the predictor's units (thresholds shown to users)."""
        out = {self.names[i]: (c, s) for i, (c, s) in enumerate(zip(self.x_center, self.x_scale))}
        start = len(self.x_columns) + len(self.levels)
        for (c, s), n_g in zip(zip(self.slope_center, self.slope_scale), self.onehot_groups):
            out.update({self.names[start + g]: (c, s) for g in range(n_g)})
            start += n_g
        return out

    def to_json(self) -> dict[str, Any]:
        """Plain data for a save (tuples, kept as tuples by the state writer)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, value: Any) -> FeatureMap:
        """The map :meth:`to_json` wrote (``ValueError``/``KeyError``/``TypeError`` if malformed).

        Examples
        --------
        >>> fm = FeatureMap(("x1", "market"), ("predictor", "level:market"), (1,), ("market",), (), (5,), (), (0.5,), (2.0,))
        >>> FeatureMap.from_json(fm.to_json()) == fm
        True
        """
        names = {f.name for f in fields(cls)}
        if not isinstance(value, dict) or set(value) != names:
            raise ValueError(f"the feature map should have the fields {sorted(names)}")
        kwargs: dict[str, Any] = {"onehot": tuple((int(t), int(j), str(lv)) for t, j, lv in value["onehot"])}
        for name, kind in _FIELD_KINDS.items():
            kwargs[name] = tuple(kind(v) for v in value[name])
        fm = cls(**kwargs)
        if len(fm.kinds) != len(fm.names) or len(fm.n_groups) != len(fm.levels) or len(fm.onehot_groups) != len(fm.onehot):
            raise ValueError("the feature map's lists have inconsistent lengths")
        return fm

    @property
    def categorical(self) -> list[int]:
        """Column indices of the hierarchy columns."""
        start = len(self.x_columns)
        return list(range(start, start + len(self.levels)))

    def matrix(self, design: RowDesign, rows: np.ndarray | slice | None = None, codes: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Feature matrix for ``rows`` of ``design``; ``codes`` overrides the group indices."""
        sel = slice(None) if rows is None else rows
        X = design.X[sel][:, list(self.x_columns)]
        if self.x_center:
            X = (X - np.array(self.x_center)) / np.array(self.x_scale)
        m = X.shape[0]
        if codes is None:
            codes = {lv: design.group_index[lv][sel] for lv in self.levels}
        parts = [X]
        for lv in self.levels:
            c = np.asarray(codes[lv], dtype=np.float64)
            parts.append(np.where(c >= 0, c, np.nan)[:, None])
        for e, ((t, j, lv), n_g) in enumerate(zip(self.onehot, self.onehot_groups)):
            z = design.terms[t].Z[sel, j]
            if self.slope_center:
                z = (z - self.slope_center[e]) / self.slope_scale[e]
            g = np.asarray(codes[lv])
            block = np.zeros((m, n_g))
            known = g >= 0
            block[np.flatnonzero(known), g[known]] = z[known]
            parts.append(block)
        return np.ascontiguousarray(np.hstack(parts)) if len(parts) > 1 else np.ascontiguousarray(X)


def _moment_centre_scale(n: int, mean: np.ndarray, m2: np.ndarray,
                         index: list[int]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """:func:`_centre_scale` of columns from their streamed moments (``m2``: co-moments about the mean)."""
    centers, scales = [], []
    for k in index:
        s = float(np.sqrt(max(float(m2[k, k]), 0.0) / n)) if n else 1.0
        centers.append(float(mean[k]) if n else 0.0)
        scales.append(s if np.isfinite(s) and s > 0 else 1.0)
    return tuple(centers), tuple(scales)


def _centre_scale(columns: list[np.ndarray]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and spread (1 for a constant) of each column, computed by centring first."""
    centers, scales = [], []
    for col in columns:
        c = float(np.mean(col)) if col.size else 0.0
        s = float(np.sqrt(np.mean((col - c) ** 2))) if col.size else 1.0
        centers.append(c)
        scales.append(s if np.isfinite(s) and s > 0 else 1.0)
    return tuple(centers), tuple(scales)


#: element type of every tuple field of :class:`FeatureMap` but ``onehot`` (for loading)
_FIELD_KINDS: dict[str, Any] = {
    "names": str, "kinds": str, "x_columns": int, "levels": str, "n_groups": int, "onehot_groups": int,
    "x_center": float, "x_scale": float, "slope_center": float, "slope_scale": float,
}  # fmt: skip


def count_onehot(design: Design | StreamedDesign) -> int:
    """Number of per-group slope columns ``slope_features="onehot"`` would add."""
    return sum(
        design.hierarchy.level(td.level).n_groups for td in design.terms for c in td.coefficients if c != INTERCEPT
    )


def validation_split(design: Design, fraction: float, how: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, valid): rows, or whole deepest-level groups (``grouped``), chosen by
    :mod:`hierfit.engines.splits` so that the split follows the rows' content, not their order
    or their groups' labels."""
    level = design.hierarchy.levels[-1].name if how != "random" and design.hierarchy.levels else None
    if level is not None and design.hierarchy.level(level).n_groups < 2:
        level = None
    valid = validation_rows(design, fraction, seed=seed, level=level)
    return ~valid, valid
