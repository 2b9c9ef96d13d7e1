"""The reference data-generating process, with the true effects in the estimates' schema.

Default: ``United_state``-style national root (intercept 1.0) → 10 markets → 5 submarkets each
× 100 rows; ``x1, x2 ~ N(0, 1)`` standardised; market (intercept, x1-slope) deviations
bivariate normal with SDs 0.8 and 0.5 and correlation 0.3; submarket intercepts N(0, 0.4);
population slopes x1 = 0.5 and x2 = 0.6; residual SD 1.0. True model::

    y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)

Every size, SD, correlation, slope and the depth are configurable through :class:`LevelSim`;
options add unbalanced group sizes, a nonlinear population part, and bernoulli/poisson outcomes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from hierfit.exceptions import SpecError
from hierfit.model import DEFAULT_NATIONAL, get_family

NONLINEAR_TERMS = ("interaction", "sin", "threshold")


@dataclass(frozen=True)
class LevelSim:
    """One simulated level.

    Parameters
    ----------
    name
        Column name (``"market"``).
    n_groups
        Groups under each parent group.
    sd
        SD of the intercept deviations.
    slope_sds
        SD of each varying slope's deviations, e.g. ``{"x1": 0.5}``.
    corr
        Correlation between all pairs of this level's coefficients (intercept first).
    label
        Prefix of group labels; top-level labels are unique (``Market_01``), deeper ones repeat
        under each parent (``Sub_1``), as in real data.
    """

    name: str
    n_groups: int
    sd: float
    slope_sds: Mapping[str, float] = field(default_factory=dict)
    corr: float = 0.0
    label: str = ""

    @property
    def coefficients(self) -> tuple[str, ...]:
        return ("Intercept", *self.slope_sds)

    def covariance(self) -> np.ndarray:
        sds = np.array([self.sd, *self.slope_sds.values()], dtype=float)
        k = len(sds)
        R = np.full((k, k), self.corr) + (1 - self.corr) * np.eye(k)
        return R * np.outer(sds, sds)


@dataclass(frozen=True, eq=False)
class Truth:
    """True parameters in the same schemas as a FitResult's tables."""

    fixed: pd.DataFrame
    variance: pd.DataFrame
    effects: pd.DataFrame
    eta: np.ndarray
    mean: np.ndarray
    nonlinear: np.ndarray

    def fixed_effects(self) -> pd.DataFrame:
        return self.fixed.copy()

    def variance_components(self) -> pd.DataFrame:
        return self.variance.copy()

    def group_effects(self, kind: str = "both") -> pd.DataFrame:
        if kind == "both":
            return self.effects.copy()
        return self.effects[self.effects["kind"] == kind].reset_index(drop=True)


@dataclass(frozen=True, eq=False)
class Simulation:
    """Simulated data, the formula of the true model, and the truth."""

    data: pd.DataFrame
    formula: str
    truth: Truth
    national: str
    family: str


def reference_levels(
    n_markets: int = 10,
    n_submarkets: int = 5,
    market_sd: float = 0.8,
    market_slope_sd: float = 0.5,
    market_corr: float = 0.3,
    submarket_sd: float = 0.4,
) -> tuple[LevelSim, ...]:
    """The reference tree: markets with a varying x1 slope, submarkets with intercepts."""
    return (
        LevelSim("market", n_markets, market_sd, {"x1": market_slope_sd}, market_corr, "Market"),
        LevelSim("submarket", n_submarkets, submarket_sd, {}, 0.0, "Sub"),
    )


def simulate(
    *,
    n_markets: int = 10,
    n_submarkets: int = 5,
    rows_per_submarket: int = 100,
    national: float = 1.0,
    market_sd: float = 0.8,
    market_slope_sd: float = 0.5,
    market_corr: float = 0.3,
    submarket_sd: float = 0.4,
    slopes: Mapping[str, float] | None = None,
    residual_sd: float = 1.0,
    levels: Sequence[LevelSim] | None = None,
    unbalanced: bool = False,
    nonlinear: str | Sequence[str] | None = None,
    nonlinear_scale: float = 1.0,
    family: str = "gaussian",
    trials: int = 10,
    dispersion: float = 2.0,
    exposure: bool = False,
    national_name: str = DEFAULT_NATIONAL,
    seed: int = 0,
) -> Simulation:
    """Simulate hierarchical data with known truth.

    ``levels`` overrides the market/submarket arguments for any depth; ``rows_per_submarket``
    is then the mean rows per deepest group. ``nonlinear`` adds ``sin`` (1.2 sin 2x2),
    ``threshold`` (1.0 [x1 > 0.5]), ``interaction`` (0.6 x1 x2), or ``"all"``, times
    ``nonlinear_scale``.

    Families: ``gaussian`` (``residual_sd``), ``bernoulli``, ``binomial`` (successes out of
    ``trials``: the ``n`` column holds 1 to ``2 trials - 1`` trials per row, the formula reads
    ``cbind(y, n - y)``), ``poisson`` and ``negative_binomial`` (NB2 with size ``dispersion``:
    ``Var = mu + mu^2 / dispersion``; the truth's residual row holds it). ``exposure=True``
    (count families) adds an ``exposure`` column whose log is an offset in the formula.

    Examples
    --------
    >>> sim = simulate(seed=1)
    >>> sim.data.shape, sim.formula
    ((5000, 5), 'y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)')
    >>> sim.truth.group_effects("total").query("level == 'national'").estimate.tolist()
    [1.0, 0.5]
    """
    rng = np.random.default_rng(seed)
    fam = get_family(family)
    if exposure and fam.mean_range != (0.0, np.inf):
        raise SpecError(f"exposure=True makes a count a rate; family {family!r} is not a count family (poisson, negative_binomial).")
    if not (isinstance(trials, int) and trials >= 1):
        raise SpecError(f"'trials' must be a positive integer; got {trials!r}.")
    if not dispersion > 0:
        raise SpecError(f"'dispersion' (the negative-binomial size) must be positive; got {dispersion!r}.")
    lv = tuple(levels) if levels is not None else reference_levels(n_markets, n_submarkets, market_sd, market_slope_sd, market_corr, submarket_sd)
    slopes = dict(slopes if slopes is not None else {"x1": 0.5, "x2": 0.6})
    _validate(lv, slopes, rows_per_submarket, nonlinear)
    # groups level by level: each group's path of indices from the top
    paths = [np.arange(lv[0].n_groups)[:, None]]
    for level in lv[1:]:
        prev = paths[-1]
        paths.append(np.concatenate([np.repeat(prev, level.n_groups, axis=0), np.tile(np.arange(level.n_groups), len(prev))[:, None]], axis=1))
    n_leaf = len(paths[-1])
    if unbalanced:
        sizes = np.maximum(1, np.round(rows_per_submarket * np.exp(rng.normal(-0.5, 1.0, n_leaf)))).astype(int)
    else:
        sizes = np.full(n_leaf, rows_per_submarket)
    leaf = np.repeat(np.arange(n_leaf), sizes)
    n = len(leaf)
    data = {}
    for name in slopes:
        x = rng.standard_normal(n)
        data[name] = (x - x.mean()) / x.std()
    deviations = []
    for depth, level in enumerate(lv):
        cov = level.covariance()
        deviations.append(rng.multivariate_normal(np.zeros(len(cov)), cov, size=len(paths[depth])))
    eta = np.full(n, float(national))
    for name, slope in slopes.items():
        eta += slope * data[name]
    group_of_row = []
    for depth, level in enumerate(lv):
        # index of the row's group at this depth: leaves' path prefix -> group number
        n_below = int(np.prod([l.n_groups for l in lv[depth + 1 :]])) if depth + 1 < len(lv) else 1
        g = leaf // n_below
        group_of_row.append(g)
        dev = deviations[depth]
        eta += dev[g, 0]
        for j, name in enumerate(level.slope_sds, start=1):
            eta += dev[g, j] * data[name]
    f = _nonlinear_part(nonlinear, data, nonlinear_scale)
    eta += f
    extra: dict[str, np.ndarray] = {}
    n_trials = None
    if fam.has_trials:
        n_trials = rng.integers(1, 2 * trials, n).astype(float)
        extra["n"] = n_trials
    if exposure:
        extra["exposure"] = np.exp(rng.uniform(-1.0, 1.0, n))
        eta = eta + np.log(extra["exposure"])
    mean = fam.inverse_link(eta)
    disp = {"sigma": residual_sd, "theta": dispersion}.get(fam.dispersion or "")
    y = fam.sample(rng, mean, n_trials, disp)
    frame = {"y": y, **data, **extra}
    for depth, level in enumerate(lv):
        idx = paths[depth][group_of_row[depth], depth]
        prefix = level.label or level.name.capitalize()
        width = max(2, len(str(level.n_groups))) if depth == 0 else len(str(level.n_groups))
        names = np.array([f"{prefix}_{i + 1:0{width}d}" for i in range(level.n_groups)], dtype=object)
        frame[level.name] = names[idx]
    df = pd.DataFrame(frame)
    formula = _true_formula(lv, slopes, fam.has_trials, exposure)
    truth = _truth(df, formula, lv, slopes, national, deviations, group_of_row, disp, eta, mean, f, national_name, family)
    return Simulation(df, formula, truth, national_name, family)


def _validate(lv, slopes, rows, nonlinear) -> None:
    if not lv:
        raise SpecError("Simulation needs at least one level.")
    for level in lv:
        if level.n_groups < 1:
            raise SpecError(f"Level {level.name!r} needs n_groups >= 1; got {level.n_groups}.")
        for s in level.slope_sds:
            if s not in slopes:
                raise SpecError(f"Level {level.name!r} varies slope {s!r}, which is not among the predictors {sorted(slopes)}; add it to 'slopes'.")
        if not -1 < level.corr < 1 and len(level.coefficients) > 1:
            raise SpecError(f"Level {level.name!r} correlation must be in (-1, 1); got {level.corr}.")
    if rows < 1:
        raise SpecError(f"rows_per_submarket must be >= 1; got {rows}.")
    if nonlinear is not None:
        terms = NONLINEAR_TERMS if nonlinear == "all" else ((nonlinear,) if isinstance(nonlinear, str) else tuple(nonlinear))
        bad = [t for t in terms if t not in NONLINEAR_TERMS]
        if bad:
            raise SpecError(f"Unknown nonlinear term {bad[0]!r}; choose from: all, {', '.join(NONLINEAR_TERMS)}.")
        if not {"x1", "x2"} <= set(slopes):
            raise SpecError("The nonlinear terms use predictors x1 and x2; keep both in 'slopes'.")


def _nonlinear_part(nonlinear, data, scale) -> np.ndarray:
    n = len(next(iter(data.values()))) if data else 0
    f = np.zeros(n)
    if nonlinear is None:
        return f
    terms = NONLINEAR_TERMS if nonlinear == "all" else ((nonlinear,) if isinstance(nonlinear, str) else tuple(nonlinear))
    if "sin" in terms:
        f += 1.2 * np.sin(2 * data["x2"])
    if "threshold" in terms:
        f += 1.0 * (data["x1"] > 0.5)
    if "interaction" in terms:
        f += 0.6 * data["x1"] * data["x2"]
    return scale * f


def _true_formula(lv, slopes, trials: bool = False, exposure: bool = False) -> str:
    parts = [" + ".join(slopes)] if slopes else ["1"]
    if exposure:
        parts.append("offset(log(exposure))")
    for depth, level in enumerate(lv):
        lhs = " + ".join(["1", *level.slope_sds])
        parts.append(f"({lhs} | {':'.join(l.name for l in lv[: depth + 1])})")
    return ("cbind(y, n - y)" if trials else "y") + " ~ " + " + ".join(parts)


def _truth(df, formula, lv, slopes, national, deviations, group_of_row, residual_sd, eta, mean, f, national_name, family) -> Truth:
    from hierfit.design import build_design
    from hierfit.engines.layout import ParameterLayout
    from hierfit.model import make_spec

    spec = make_spec(formula, national=national_name, family=family)
    design = build_design(spec, df)
    layout = ParameterLayout.from_design(design)
    beta = np.array([national if n == "Intercept" else slopes[n] for n in design.x_names])
    b = []
    for depth, (td, level) in enumerate(zip(design.terms, lv)):
        # design groups are sorted labels; map each back to its simulation index via the rows
        order = np.empty(design.hierarchy.level(td.level).n_groups, dtype=np.int64)
        order[design.group_index[td.level]] = group_of_row[depth]
        b.append(deviations[depth][order])
    keys, M = layout.effect_map(design.hierarchy)
    effects = keys.copy()
    effects["estimate"] = M @ layout.flatten(beta, b)
    fixed = pd.DataFrame({"term": list(design.x_names), "estimate": beta})
    rows = []
    for level in lv:
        cov = level.covariance()
        names = level.coefficients
        for i, a in enumerate(names):
            rows.append({"level": level.name, "term1": a, "term2": "", "variance": cov[i, i], "sd_or_corr": np.sqrt(cov[i, i])})
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                rows.append({"level": level.name, "term1": names[i], "term2": names[j], "variance": cov[i, j], "sd_or_corr": level.corr})
    if residual_sd is not None:
        if get_family(family).dispersion == "theta":  # the negative-binomial size
            rows.append({"level": "dispersion", "term1": "theta", "term2": "", "variance": residual_sd, "sd_or_corr": residual_sd})
        else:
            rows.append({"level": "residual", "term1": "", "term2": "", "variance": residual_sd**2, "sd_or_corr": residual_sd})
    return Truth(fixed, pd.DataFrame(rows), effects, eta, mean, f)
