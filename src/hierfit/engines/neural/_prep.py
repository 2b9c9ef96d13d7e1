"""Numbers for training, built from a Design with numpy only: scaling, features, splits, information.

Internally the network works on standardised data so one learning rate suits every data set
and float32 keeps every digit that matters: the gaussian outcome is centred (when the formula
has an intercept) and divided by its spread, and the columns of ``X`` and ``Z`` are centred
(beside an intercept; for ``Z`` only in correlated terms) and scaled, with the column maps of
the mixed-model core (:class:`hierfit.engines.mixed.Standardization`). Each map is an exact
reparametrisation of the linear part *and* of its Gaussian prior (``b ~ N(0, Sigma)`` becomes
``B^-1 b ~ N(0, B^-1 Sigma B^-T)``), so the MAP is unchanged and the parameters are mapped
back exactly: a price in the millions or a predictor far from zero trains like any other.
The MLP gets its own standardised (centred) features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hierfit.design import Design, RowDesign
from hierfit.engines.mixed import ColumnMap, column_map
from hierfit.exceptions import DataError
from hierfit.formula import INTERCEPT
from hierfit.model import Family


@dataclass(frozen=True, eq=False)
class Scaling:
    """How the network's units map to the data's (kept on the fit for new data)."""

    y_center: float
    y_scale: float
    x_map: ColumnMap
    z_maps: tuple[ColumnMap, ...]
    feature_names: tuple[str, ...]
    f_mean: np.ndarray
    f_scale: np.ndarray


def feature_matrix(design: RowDesign, names: tuple[str, ...] | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
    """MLP inputs: population columns except the intercept, then slope columns not among them."""
    cols: dict[str, np.ndarray] = {}
    for j, name in enumerate(design.x_names):
        if name != INTERCEPT:
            cols[name] = design.X[:, j]
    for td in design.terms:
        for j, coef in enumerate(td.coefficients):
            if coef != INTERCEPT and coef not in cols:
                cols[coef] = td.Z[:, j]
    if names is None:
        names = tuple(cols)
    F = np.column_stack([cols[c] for c in names]) if names else np.empty((design.n, 0))
    return F, names


def make_scaling(design: Design, family: Family) -> Scaling:
    y = design.y
    if family.normal_errors:
        center = float(y.mean()) if INTERCEPT in design.x_names else 0.0
        scale = float(np.sqrt(np.mean((y - center) ** 2)))
        scale = scale if scale > 0 else 1.0
    else:
        center, scale = 0.0, 1.0
    F, names = feature_matrix(design)
    f_mean = F.mean(axis=0) if F.size else np.zeros(0)
    f_sd = F.std(axis=0) if F.size else np.ones(0)
    return Scaling(
        y_center=center,
        y_scale=scale,
        x_map=column_map([design.X[:, j] for j in range(design.X.shape[1])], center=True),
        z_maps=tuple(column_map([td.Z[:, j] for j in range(td.Z.shape[1])], center=bool(td.term.correlated))
                     for td in design.terms),
        feature_names=names,
        f_mean=f_mean,
        f_scale=np.where(f_sd > 0, f_sd, 1.0),
    )


def scaled_arrays(design: RowDesign, scaling: Scaling) -> dict[str, Any]:
    """Float32-ready arrays for one design (new data too): X, Z per term, features, indices."""
    F, _ = feature_matrix(design, scaling.feature_names)
    out: dict[str, object] = {
        "X": scaling.x_map.apply(design.X.T).T,
        "Z": [zm.apply(td.Z.T).T for td, zm in zip(design.terms, scaling.z_maps)],
        "F": (F - scaling.f_mean) / scaling.f_scale,
        "term_index": [design.group_index[td.level] for td in design.terms],
        "level_index": [design.group_index[lv.name] for lv in design.hierarchy.levels],
    }
    # the offset is a known part of the linear predictor: in the network's units like the outcome
    out["offset"] = np.zeros(design.n) if design.offset is None else design.offset / scaling.y_scale
    out["trials"] = np.ones(design.n) if design.trials is None else np.asarray(design.trials, dtype=float)
    if isinstance(design, Design):
        out["y"] = (design.y - scaling.y_center) / scaling.y_scale
        out["prior"] = prior_weights(design)
    return out


def prior_weights(design: Design) -> np.ndarray:
    """The design's prior weights (lme4's ``weights``), ones without them."""
    return np.ones(design.n) if design.weights is None else np.asarray(design.weights, dtype=float)


def glm_start(design: Design, family: Family) -> tuple[float, float]:
    """A GLM's starting intercept (link scale, offsets and trials accounted for) and, for a
    family with a size, a moment estimate of the negative-binomial ``theta``.

    The intercept is the link of the weighted mean outcome per trial, less the mean offset
    (exact for a log link with a constant offset). ``theta`` solves ``Var = mu + mu²/theta``
    over the rows around their smoothed group means; it starts training and sets the GLM
    weights of the Laplace term (training then learns theta; the final fit re-estimates it).
    """
    w = prior_weights(design)
    n = np.ones(design.n) if design.trials is None else np.asarray(design.trials, dtype=float)
    off = np.zeros(design.n) if design.offset is None else design.offset
    mean = float(np.sum(w * design.y) / max(float(np.sum(w * n)), 1e-300))
    start = float(family.link.link(family.clip_mean(np.array([mean])))[0] - np.sum(w * off) / np.sum(w))
    theta = 1.0
    if family.dispersion == "theta":
        mu = _row_means(design, family, w, n, off)
        excess = float(np.sum(w * ((design.y - mu) ** 2 - mu)))
        theta = float(np.clip(np.sum(w * mu**2) / excess, 0.05, 1e4)) if excess > 0 else 1e4
    return start, theta


def _row_means(design: Design, family: Family, w: np.ndarray, n: np.ndarray, off: np.ndarray) -> np.ndarray:
    """Each row's mean outcome from its finest group's smoothed mean per trial and its offset."""
    if not design.hierarchy.levels:
        idx, G = np.zeros(design.n, dtype=int), 1
    else:
        level = leaf_level(design)
        idx, G = design.group_index[level], design.hierarchy.level(level).n_groups
    p = family.clip_mean(_smoothed_group_mean(w * design.y, w * n, idx, G))
    eta = family.link.link(p)[idx] + off - _group_mean(w * off, w, idx, G)[idx]
    return n * family.inverse_link(eta)


def leaf_level(design: Design) -> str:
    """The finest level without children (most groups): whole groups of it are held out."""
    leaves = [lv for lv in design.hierarchy.levels if not design.hierarchy.children(lv.name)]
    return max(leaves, key=lambda lv: lv.n_groups).name


def validation_split(design: Design, how: str, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of validation rows: random rows, or all rows of random leaf groups."""
    n = design.n
    if n < 20:
        raise DataError(f"Engine 'neural' needs at least 20 rows to hold out a validation split; got {n}. Use engine 'mixed' or 'ols'.")
    if how == "random":
        n_val = max(1, round(fraction * n))
        mask = np.zeros(n, dtype=bool)
        mask[rng.choice(n, n_val, replace=False)] = True
        return mask
    if not design.hierarchy.levels:
        raise DataError("validation='group' holds out whole groups, but the formula has no grouping level. Use validation='random'.")
    level = leaf_level(design)
    lv = design.hierarchy.level(level)
    if lv.n_groups < 3:
        raise DataError(
            f"validation='group' holds out whole {level!r} groups, but there are only {lv.n_groups}. "
            "Use validation='random'."
        )
    order = rng.permutation(lv.n_groups)
    cum = np.cumsum(lv.sizes[order])
    # at least one group, and never all but one
    k = min(max(1, int(np.searchsorted(cum, fraction * n)) + 1), lv.n_groups - 1)
    held = np.zeros(lv.n_groups, dtype=bool)
    held[order[:k]] = True
    return held[design.group_index[level]]


def bootstrap_weights(n_members: int, train: np.ndarray, enabled: bool, rng: np.random.Generator) -> np.ndarray:
    """Per-member row weights (members × rows): a *balanced* Bayesian bootstrap.

    Row ``i`` gets ``w_mi = M E_mi / sum_m E_mi`` with ``E ~ Exp(1)``: each member's weights are
    a Bayesian-bootstrap-like draw, and every row's weights sum to ``M`` over the members, so
    the ensemble mean is (to first order) the unweighted fit rather than a noisy bagged one.
    The members' spread is then ``M / (M + 1)`` times the Bayesian bootstrap variance, which
    :data:`spread_factor` undoes. Validation rows get weight 0.
    """
    if enabled and n_members > 1:
        E = rng.exponential(1.0, size=(n_members, len(train)))
        w = n_members * E / E.sum(axis=0, keepdims=True)
    else:
        w = np.ones((n_members, len(train)))
    return w * train


def spread_factor(n_members: int, bootstrap: bool) -> float:
    """SD multiplier making the balanced bootstrap's member spread a bootstrap standard error."""
    return float(np.sqrt((n_members + 1) / n_members)) if bootstrap and n_members > 1 else 1.0


def information(design: Design, arrays: dict, weights: np.ndarray, family: Family, theta: float = 1.0) -> list[np.ndarray]:
    """Per term: ``S[m, g] = sum_i w_mi v_i z_i z_iᵀ`` (members × groups × k × k), scaled units.

    ``v_i`` is the row's prior weight times its GLM weight (gaussian: 1, its ``1/sigma²`` is
    applied in the penalty), evaluated at the group's smoothed mean outcome per trial, moved by
    the row's offset relative to the group's mean offset, with the row's trials and, for the
    negative binomial, the starting size ``theta`` (:func:`glm_start`).
    """
    y = design.y
    prior = arrays["prior"]
    trials = arrays["trials"]
    off = np.zeros(design.n) if design.offset is None else design.offset
    out = []
    for t, td in enumerate(design.terms):
        idx = arrays["term_index"][t]
        Z = arrays["Z"][t]
        G = design.hierarchy.level(td.level).n_groups
        k = Z.shape[1]
        if family.normal_errors:
            v = prior.copy()
        else:
            p = family.clip_mean(_smoothed_group_mean(prior * y, prior * trials, idx, G))
            eta = family.link.link(p)[idx] + off - _group_mean(prior * off, prior, idx, G)[idx]
            v = prior * family.fisher_weights(eta, trials, theta if family.has_dispersion else None)
        S = np.zeros((weights.shape[0], G, k, k))
        for m in range(weights.shape[0]):
            wv = weights[m] * v
            for a in range(k):
                for c in range(a, k):
                    S[m, :, a, c] = S[m, :, c, a] = np.bincount(idx, weights=wv * Z[:, a] * Z[:, c], minlength=G)
        out.append(S)
    return out


def _smoothed_group_mean(y: np.ndarray, n: np.ndarray, idx: np.ndarray, n_groups: int) -> np.ndarray:
    """Each group's mean outcome per trial (``sum y / sum n``, both weighted) shrunk by two
    pseudo-trials at the overall mean."""
    overall = float(y.sum() / max(float(n.sum()), 1e-300))
    sums = np.bincount(idx, weights=y, minlength=n_groups)
    counts = np.bincount(idx, weights=n, minlength=n_groups)
    return (sums + 2 * overall) / (counts + 2)


def _group_mean(x: np.ndarray, w: np.ndarray, idx: np.ndarray, n_groups: int) -> np.ndarray:
    """Weighted mean of ``x`` (already times ``w``) per group; 0 for a group of weight 0."""
    sums = np.bincount(idx, weights=x, minlength=n_groups)
    total = np.bincount(idx, weights=w, minlength=n_groups)
    return np.where(total > 0, sums / np.where(total > 0, total, 1.0), 0.0)
