"""Marginal effects for every engine: predictions, slopes and comparisons over a data grid.

What lme4 users assemble from emmeans and marginaleffects, computed from hierfit's one result,
so the same question gets the same kind of answer from every engine. Each quantity is a
function of the mean (response scale, or link scale) of one or two *copies* of the rows:

* **predictions** -- each row's mean (``by=None``), or its average over all rows
  (``by=True``) or within groups of columns (``by="market"``, ``by=["market", "x2"]``);
* **slopes** -- ``(m(x + h/2) - m(x - h/2)) / h``, a centred difference with
  ``h = 1e-4 ×`` the range of ``x`` in the data (R marginaleffects' step), averaged the same
  way: the average marginal effect. On a linear predictor's link scale it is the coefficient
  to rounding; for a network it is the numerical derivative of the engine's own prediction.
  Trees (``lightgbm``, ``boosted-mixed``: ``Capabilities.smooth`` is false) are piecewise
  constant, so a tiny step sees a jump at the few rows next to a split, divided by ``h``: their
  step is ``0.1 ×`` the range (a secant; on simulated linear data the average then sits within
  the noise of the true slope, where ``1e-4`` gave 5 to 10 times it);
* **comparisons** -- the mean at ``hi`` against the mean at ``lo``: a difference, or a ratio of
  the averages (marginaleffects' ``ratioavg``; row by row with ``by=None``).

Rows of groups not seen in fitting use their ancestor's effects, as in ``predict``; their new
group's own effect is taken at its mean, 0 (lme4's ``allow.new.levels``), so intervals here do
not include its spread (``predict(interval="prediction")`` does).

Uncertainty comes from each engine's own (``EngineFit.linear_predictor_draws`` /
``linear_predictor_gaussian``):

* draws -- posterior draws (pymc, stan), the mixed model's joint draws of all effects, an
  ensemble's draws (neural): the quantity is computed per draw, with the *same* draw in both
  copies of a contrast; its SD is the standard error and the interval its quantiles (a
  Student-t interval on the SD below :data:`QUANTILE_MIN_DRAWS` draws, e.g. a handful of
  bootstrap members);
* an exact Gaussian sampling distribution (ols): the delta method with the analytic Jacobian,
  exact for a quantity linear in the coefficients, with the fit's t quantiles;
* neither (lightgbm): estimates only, NaN bounds and one warning.

The ``marginaleffects`` package (0.6.0; 0.6.1 needs Python 3.12) was evaluated first and is
not used: its intervals are the delta method with a finite-difference Jacobian over the
coefficient vector and a dense coefficient covariance. A hierarchical fit's predictions
depend on every group's coefficients (thousands), for which the mixed and Bayesian engines
have joint draws, not a dense covariance, and the Jacobian would cost one prediction per
coefficient; it also brings polars. Its conventions are kept: the names ``predictions``,
``slopes``, ``comparisons`` and ``datagrid``, ``by``, centred differences, a ``+1`` contrast
centred on each row's value, the ratio of averages.

Examples
--------
>>> import hierfit
>>> sim = hierfit.simulate(n_markets=4, n_submarkets=3, rows_per_submarket=20, seed=3)
>>> fit = hierfit.fit("y ~ x1 + x2 + (1 | market/submarket)", sim.data, engine="ols")
>>> ame = fit.slopes(sim.data, "x1")
>>> beta = fit.fixed_effects().set_index("term").loc["x1", "estimate"]
>>> bool(abs(ame["estimate"].iloc[0] - beta) < 1e-6)
True
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse, stats

from hierfit.engines import ENGINES
from hierfit.exceptions import DataError, FitWarning, SpecError

#: Parameter draws used at most (evenly thinned): Monte Carlo error of an SD ≈ 1/sqrt(2 × 1000) ≈ 2%.
MAX_DRAWS = 1000
#: Below this many draws, intervals are mean ± t × SD rather than quantiles.
QUANTILE_MIN_DRAWS = 50
#: Draws × rows formed at once (16 MB).
CHUNK_ENTRIES = 2_000_000
#: Slope step as a share of the variable's range (R marginaleffects' ``eps``), and for trees.
SLOPE_STEP = 1e-4
TREE_SLOPE_STEP = 0.1
ESTIMATE_COLUMNS = ["estimate", "std_error", "lower", "upper"]
COMPARISONS = ("difference", "ratio")
SCALES = ("response", "link")

By = bool | str | Sequence[str] | None


# ----------------------------------------------------------------------------- estimands
@dataclass(frozen=True)
class Estimand:
    """``f(a_1, ..., a_k)`` of the averages ``a_j`` of the means of ``k`` copies of the rows,
    with its gradient ``[df/da_1, ..., df/da_k]`` (for the delta method)."""

    value: Callable[[list[np.ndarray]], np.ndarray]
    gradient: Callable[[list[np.ndarray]], list[np.ndarray]]


IDENTITY = Estimand(lambda a: a[0], lambda a: [np.ones_like(a[0])])
DIFFERENCE = Estimand(lambda a: a[1] - a[0], lambda a: [-np.ones_like(a[0]), np.ones_like(a[1])])
RATIO = Estimand(lambda a: a[1] / a[0], lambda a: [-a[1] / a[0] ** 2, 1.0 / a[0]])


def _scaled(estimand: Estimand, factor: float) -> Estimand:
    return Estimand(lambda a: estimand.value(a) * factor, lambda a: [g * factor for g in estimand.gradient(a)])


# ----------------------------------------------------------------------------- grouping
@dataclass(frozen=True, eq=False)
class _Groups:
    """Which rows each reported estimate averages: ``keys`` (one row per estimate, or None for
    one estimate per row) and the ``(groups × rows)`` averaging matrix."""

    keys: pd.DataFrame | None
    average: sparse.csr_matrix


def _groups(data: pd.DataFrame, by: By) -> _Groups:
    n = len(data)
    if by is None or by is False:
        return _Groups(None, sparse.identity(n, format="csr"))
    if by is True:
        codes = np.zeros(n, dtype=np.int64)
        keys = pd.DataFrame({"n_rows": [n]})
    else:
        cols = [by] if isinstance(by, str) else list(by)
        missing = [c for c in cols if c not in data.columns]
        if not cols or missing:
            raise SpecError(
                f"'by' must be None (one estimate per row), True (the average over all rows) or columns of the data to "
                f"average within; got {by!r}{f' (not columns: {missing})' if missing else ''}. Columns: {', '.join(map(str, data.columns))}."
            )
        grouped = data.groupby(cols, sort=True, dropna=False, observed=True)
        codes = grouped.ngroup().to_numpy()
        keys = grouped.size().rename("n_rows").reset_index()
    size = np.bincount(codes, minlength=len(keys)).astype(float)
    average = sparse.csr_matrix((1.0 / size[codes], (codes, np.arange(n))), shape=(len(keys), n))
    return _Groups(keys, average)


# ----------------------------------------------------------------------------- computing
def estimate(result: Any, frames: list[pd.DataFrame], estimand: Estimand, by: By, scale: str, level: float) -> pd.DataFrame:
    """``estimand`` of the copies ``frames`` (same rows), averaged per ``by``, with its uncertainty.

    Returns the group keys (when averaging) and :data:`ESTIMATE_COLUMNS`; indexed like the
    data for ``by=None``.
    """
    if scale not in SCALES:
        raise SpecError(f"'scale' must be 'response' or 'link'; got {scale!r}.")
    groups = _groups(frames[0], by)
    ef = result.engine_fit
    family = result.spec.family
    designs = [result._design(frame) for frame in frames]
    etas = [ef.contributions(d).to_numpy().sum(axis=1) for d in designs]

    def mean_of(eta: np.ndarray) -> np.ndarray:
        return family.inverse_link(eta) if scale == "response" else eta

    point = estimand.value([groups.average @ mean_of(eta) for eta in etas])
    se = lower = upper = np.full(len(point), np.nan)
    # whether the engine has draws, asked of one row (a nonlinear engine's draws cost a forward pass)
    if ef.linear_predictor_draws(result.encoding.apply(frames[0].iloc[:1]), 2) is not None:
        se, lower, upper = _from_draws(result, frames, designs, estimand, groups, mean_of, level)
    else:
        gaussian = [ef.linear_predictor_gaussian(d) for d in designs]
        if all(g is not None for g in gaussian):
            se, lower, upper = _delta_method(gaussian, etas, estimand, groups, family, scale, point, level)
        else:
            # the user's call -> FitResult method -> this module's function -> estimate -> here
            warn_without_uncertainty(result.engine, "'std_error', 'lower' and 'upper' are", stacklevel=5)
    table = pd.DataFrame({"estimate": point, "std_error": se, "lower": lower, "upper": upper})
    if groups.keys is None:
        table.index = frames[0].index
        return table
    return pd.concat([groups.keys.drop(columns="n_rows"), table, groups.keys[["n_rows"]]], axis=1)


def warn_without_uncertainty(engine: str, what: str, stacklevel: int) -> None:
    """Say once that ``engine`` gives no intervals (``what`` is NaN) and which engines do."""
    able = sorted(n for n, e in ENGINES.items() if e.capabilities.uncertainty != "none")
    warnings.warn(
        f"Engine {engine!r} has no uncertainty to give intervals from, so {what} NaN. "
        f"Use an engine with intervals ({', '.join(able)}) for them.",
        FitWarning,
        stacklevel=stacklevel,
    )


def _from_draws(result: Any, frames: list[pd.DataFrame], designs: list[Any], estimand: Estimand, groups: _Groups,
                mean_of: Callable[[np.ndarray], np.ndarray], level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SD and interval of the estimand over the engine's draws, a block of rows at a time."""
    n = len(frames[0])
    step = max(1, CHUNK_ENTRIES // MAX_DRAWS)
    if groups.keys is None:  # one estimate per row: every block is finished on its own
        se, lower, upper = (np.empty(n) for _ in range(3))
        for start in range(0, n, step):
            rows = slice(start, min(start + step, n))
            a = [mean_of(_draws(result, frames[j], designs[j], rows, n)) for j in range(len(frames))]
            se[rows], lower[rows], upper[rows] = _summarise(estimand.value(a), level)
        return se, lower, upper
    sums: list[np.ndarray] | None = None
    for start in range(0, n, step):
        rows = slice(start, min(start + step, n))
        block = groups.average[:, rows]
        parts = [np.asarray(block @ mean_of(_draws(result, frames[j], designs[j], rows, n)).T).T for j in range(len(frames))]
        sums = parts if sums is None else [s + p for s, p in zip(sums, parts)]
    assert sums is not None
    return _summarise(estimand.value(sums), level)


def _draws(result: Any, frame: pd.DataFrame, design: Any, rows: slice, n: int) -> np.ndarray:
    """``(n_draws, rows)`` linear-predictor draws of one block of ``frame``'s rows."""
    sub = design if rows.start == 0 and rows.stop == n else result.encoding.apply(frame.iloc[rows])
    draws = result.engine_fit.linear_predictor_draws(sub, MAX_DRAWS)
    assert draws is not None, "the engine gave draws for the first design"
    return draws


def _summarise(values: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SD and interval of ``(n_draws, m)`` draws of ``m`` estimates."""
    se = values.std(axis=0, ddof=1)
    if len(values) >= QUANTILE_MIN_DRAWS:
        lower, upper = np.quantile(values, [(1 - level) / 2, (1 + level) / 2], axis=0)
        return se, lower, upper
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * se  # a few members: their SD is itself estimated
    centre = values.mean(axis=0)
    return se, centre - half, centre + half


def _delta_method(gaussian: list[Any], etas: list[np.ndarray], estimand: Estimand, groups: _Groups, family: Any, scale: str,
                  point: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standard errors from the analytic Jacobian ``Σ_j df/da_j · A diag(dm/deta_j) R_j``."""
    a = [groups.average @ (family.inverse_link(eta) if scale == "response" else eta) for eta in etas]
    grads = estimand.gradient(a)
    J: sparse.csr_matrix | None = None
    for (R, _), eta, g in zip(gaussian, etas, grads):
        slope = family.link.mu_eta(eta) if scale == "response" else np.ones_like(eta)
        part = sparse.diags(g) @ groups.average @ sparse.diags(slope) @ R
        J = part if J is None else J + part
    coefficients = gaussian[0][1]
    se = coefficients.std_errors(sparse.csr_matrix(J))
    q = coefficients.quantile(level)
    return se, point - q * se, point + q * se


# ----------------------------------------------------------------------------- the three questions
def predictions(result: Any, data: pd.DataFrame, *, by: By = None, scale: str = "response", level: float = 0.9) -> pd.DataFrame:
    """Means of ``data``'s rows, or their averages ``by`` groups (see the module doc)."""
    return estimate(result, [data], IDENTITY, by, scale, level)


def slopes(result: Any, data: pd.DataFrame, variable: str, *, by: By = True, scale: str = "response",
           level: float = 0.9, eps: float | None = None) -> pd.DataFrame:
    """Average marginal effect ``d mean / d variable`` (centred difference of step ``eps``), averaged ``by``."""
    x = _numeric_variable(result, data, variable, "slopes")
    if eps is None:
        spread = float(np.ptp(x)) if len(x) else 0.0
        share = SLOPE_STEP if ENGINES[result.engine].capabilities.smooth else TREE_SLOPE_STEP
        h = share * (spread if spread > 0 else 1.0)
    elif isinstance(eps, (int, float)) and not isinstance(eps, bool) and np.isfinite(eps) and eps > 0:
        h = float(eps)
    else:
        raise SpecError(f"'eps' (the step of the numerical derivative) must be a positive number or None; got {eps!r}.")
    frames = [data.assign(**{variable: x - h / 2}), data.assign(**{variable: x + h / 2})]
    table = estimate(result, frames, _scaled(DIFFERENCE, 1.0 / h), by, scale, level)
    return _labelled(table, term=variable)


def comparisons(result: Any, data: pd.DataFrame, variable: str, *, values: Any = None, comparison: str = "difference",
                by: By = True, scale: str = "response", level: float = 0.9) -> pd.DataFrame:
    """The mean with ``variable`` at ``hi`` against ``lo``: ``hi - lo`` or ``hi / lo`` (ratio of averages).

    ``values``: for a numeric variable ``None`` (``+1``, centred on each row's value), a number
    ``d`` (``+d``, centred) or a pair ``(lo, hi)`` set on every row; for a categorical or
    grouping variable ``None`` (every other level against the first, sorted) or a pair.
    """
    if comparison not in COMPARISONS:
        raise SpecError(f"'comparison' must be one of {', '.join(COMPARISONS)}; got {comparison!r}.")
    _check_variable(result, data, variable)
    estimand = DIFFERENCE if comparison == "difference" else RATIO
    sign = " - " if comparison == "difference" else " / "
    tables = []
    for label, lo, hi in _contrasts(data, variable, values, sign):
        table = estimate(result, [data.assign(**{variable: lo}), data.assign(**{variable: hi})], estimand, by, scale, level)
        tables.append(_labelled(table, term=variable, contrast=label))
    return pd.concat(tables) if by is None else pd.concat(tables, ignore_index=True)


def _contrasts(data: pd.DataFrame, variable: str, values: Any, sign: str) -> list[tuple[str, Any, Any]]:
    """``(label, lo, hi)`` of each contrast asked for."""
    col = data[variable]
    numeric = pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)
    if isinstance(values, (tuple, list)) and len(values) == 2:
        lo, hi = values
        return [(f"{hi}{sign}{lo}", lo, hi)]
    if values is None and not numeric:
        levels = sorted(pd.unique(col.dropna()), key=str)
        if len(levels) < 2:
            raise DataError(f"Column {variable!r} has one value ({levels[0] if levels else 'none'!r}) in the data: nothing to compare.")
        return [(f"{lv}{sign}{levels[0]}", levels[0], lv) for lv in levels[1:]]
    if numeric and (values is None or (isinstance(values, (int, float)) and not isinstance(values, bool))):
        d = 1.0 if values is None else float(values)
        x = col.to_numpy(dtype=float)
        return [(f"+{d:g}", x - d / 2, x + d / 2)]
    raise SpecError(
        f"'values' for {variable!r} must be None, a number (a centred change of a numeric variable) or a pair (lo, hi); "
        f"got {values!r}."
    )


def _labelled(table: pd.DataFrame, **labels: str) -> pd.DataFrame:
    for i, (name, value) in enumerate(labels.items()):
        table.insert(i, name, value)
    return table


def _check_variable(result: Any, data: pd.DataFrame, variable: str) -> None:
    if not isinstance(variable, str) or variable not in data.columns:
        raise DataError(f"Variable {variable!r} is not a column of the data; columns: {', '.join(map(str, data.columns))}.")
    spec = result.spec
    if variable == spec.response or not re.search(rf"(?<![\w.]){re.escape(variable)}(?![\w.])", spec.text):
        raise SpecError(
            f"Variable {variable!r} is not a predictor of the formula {spec.text!r}: its effect is 0 by construction. "
            "Name a predictor or a grouping column of the formula."
        )


def _numeric_variable(result: Any, data: pd.DataFrame, variable: str, what: str) -> np.ndarray:
    _check_variable(result, data, variable)
    col = data[variable]
    if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
        raise DataError(
            f"{what}() needs a numeric variable; {variable!r} has dtype {col.dtype}. Use comparisons(data, {variable!r}) "
            "for the contrasts between its levels."
        )
    return col.to_numpy(dtype=float)


# ----------------------------------------------------------------------------- grids
def datagrid(data: pd.DataFrame, *, grid_type: str = "mean_or_mode", **values: Any) -> pd.DataFrame:
    """A grid of rows to ask for predictions, slopes or comparisons at (marginaleffects' ``datagrid``).

    ``grid_type="mean_or_mode"``: one row per combination of ``values``, every other column at
    its mean (numeric) or, jointly, the most frequent combination of the other columns (so a
    submarket stays under its own market). ``grid_type="counterfactual"``: a copy of every row
    of ``data`` per combination of ``values`` (average predictions over the observed rows).

    Examples
    --------
    >>> import pandas as pd
    >>> d = pd.DataFrame({"x": [1.0, 2.0, 6.0], "market": ["a", "b", "b"], "y": [0.0, 1.0, 2.0]})
    >>> datagrid(d, x=[0, 10])[["x", "market"]].values.tolist()
    [[0, 'b'], [10, 'b']]
    >>> len(datagrid(d, grid_type="counterfactual", x=[0, 10]))
    6
    """
    if not isinstance(data, pd.DataFrame) or data.empty:
        raise DataError("datagrid() needs a non-empty DataFrame of the rows the model describes.")
    missing = [k for k in values if k not in data.columns]
    if missing:
        raise DataError(f"datagrid() values name columns not in the data: {missing}; columns: {', '.join(map(str, data.columns))}.")
    combos = pd.MultiIndex.from_product([list(np.atleast_1d(v)) for v in values.values()], names=list(values)).to_frame(index=False) \
        if values else pd.DataFrame(index=[0])
    if grid_type == "counterfactual":
        copies = [data.assign(**{k: row[k] for k in values}) for _, row in combos.iterrows()]
        return pd.concat(copies, ignore_index=True)
    if grid_type != "mean_or_mode":
        raise SpecError(f"'grid_type' must be 'mean_or_mode' or 'counterfactual'; got {grid_type!r}.")
    rest = [c for c in data.columns if c not in values]
    numeric = [c for c in rest if pd.api.types.is_numeric_dtype(data[c]) and not pd.api.types.is_bool_dtype(data[c])]
    other = [c for c in rest if c not in numeric]
    typical: dict[str, Any] = {c: data[c].mean() for c in numeric}
    if other:
        mode = data.groupby(other, sort=True, dropna=False, observed=True).size().idxmax()
        typical.update(zip(other, mode if len(other) > 1 else (mode,)))
    grid = combos.assign(**typical) if values else pd.DataFrame([typical])
    return grid[[c for c in data.columns]]
