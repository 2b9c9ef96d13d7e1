"""The per-row extras of a model: offsets, binomial trials and prior weights.

* **offset** -- a known part of the linear predictor with coefficient 1: every
  ``offset(expr)`` in the formula plus the column named by ``offset=`` (lme4 adds both);
  ``offset(log(exposure))`` turns a count into a rate.
* **trials** -- for ``cbind(successes, failures) ~ ...`` (family ``binomial``), successes plus
  the failures expression, e.g. ``cbind(y, n - y)`` has ``n`` trials.
* **weights** -- prior weights (lme4's ``weights``): each row's log-likelihood counts that many
  times. Non-negative and finite.

Expressions are evaluated by formulaic as ``I(expr)``, so ``log(x)``, ``np.sqrt(x)`` and
arithmetic on columns all work, the same way for the fitting data and for new rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from formulaic import Formula

from hierfit.exceptions import DataError, SpecError
from hierfit.model import ModelSpec

__all__ = ["expression_variables", "offset_vector", "trials_vector", "weights_vector"]


def expression_variables(expr: str) -> set[str]:
    """Data columns an expression reads (``"log(expected)"`` -> ``{"expected"}``)."""
    try:
        return set(Formula(f"0 + I({expr})").required_variables)
    except Exception as exc:  # formulaic's own parse errors
        raise SpecError(f"The expression {expr!r} in the formula cannot be read: {exc}") from None


def _evaluate(expr: str, data: pd.DataFrame, role: str) -> np.ndarray:
    missing = sorted(v for v in expression_variables(expr) if v not in data.columns and v != "np")
    if missing:
        raise DataError(
            f"The {role} {expr!r} needs column {missing[0]!r}, which is not in the data; columns are "
            f"{sorted(map(str, data.columns))}."
        )
    try:
        with np.errstate(all="ignore"):
            mm = Formula(f"0 + I({expr})").get_model_matrix(data, na_action="ignore", output="numpy")
    except Exception as exc:
        raise DataError(f"Cannot evaluate the {role} {expr!r}: {exc}") from None
    values = np.asarray(mm, dtype=np.float64).reshape(len(data), -1)
    if values.shape[1] != 1:
        raise SpecError(f"The {role} {expr!r} must be one number per row (a categorical column is not an offset).")
    return values[:, 0]


def _finite(values: np.ndarray, what: str, index: pd.Index) -> np.ndarray:
    bad = ~np.isfinite(values)
    if bad.any():
        rows = ", ".join(repr(index[i]) for i in np.flatnonzero(bad)[:3])
        raise DataError(
            f"The {what} is not finite at {int(bad.sum())} rows (e.g. {rows}); log of 0 or of a negative number is the "
            "usual cause. Fix those rows or drop them."
        )
    return values


def offset_vector(spec: ModelSpec, data: pd.DataFrame) -> np.ndarray | None:
    """The offset per row (``None`` when the model has none)."""
    if not spec.has_offset:
        return None
    total = np.zeros(len(data))
    for expr in spec.formula.offsets:
        total += _finite(_evaluate(expr, data, "offset"), f"offset({expr})", data.index)
    if spec.offset is not None:
        if spec.offset not in data.columns:
            raise DataError(f"The offset column {spec.offset!r} is not in the data; columns are {sorted(map(str, data.columns))}.")
        total += _finite(data[spec.offset].to_numpy(dtype=np.float64), f"offset column {spec.offset!r}", data.index)
    return total


def trials_vector(spec: ModelSpec, data: pd.DataFrame, y: np.ndarray | None) -> np.ndarray | None:
    """Trials per row for ``cbind(successes, failures)`` (``None`` otherwise or without ``y``)."""
    failures_expr = spec.formula.failures
    if failures_expr is None or y is None:
        return None
    failures = _finite(_evaluate(failures_expr, data, "failures"), f"failures ({failures_expr})", data.index)
    if (failures < 0).any():
        bad = np.flatnonzero(failures < 0)
        raise DataError(
            f"The failures {failures_expr!r} are negative at {bad.size} rows (e.g. row {data.index[bad[0]]!r}: "
            f"{failures[bad[0]]:g}); cbind() takes successes and failures, both counts (cbind(y, n - y) for y out of n)."
        )
    return y + failures


def weights_vector(spec: ModelSpec, data: pd.DataFrame, *, require_positive: bool = True) -> np.ndarray | None:
    """Prior weights per row (``None`` when the model has none).

    ``require_positive=False`` accepts rows that all weigh 0: one batch of a streamed source
    may, as long as some batch does not (the streamed design pass checks that over all rows).
    """
    if spec.weights is None:
        return None
    if spec.weights not in data.columns:
        raise DataError(f"The weights column {spec.weights!r} is not in the data; columns are {sorted(map(str, data.columns))}.")
    w = _finite(data[spec.weights].to_numpy(dtype=np.float64), f"weights column {spec.weights!r}", data.index)
    if (w < 0).any():
        raise DataError(f"The weights column {spec.weights!r} has {int((w < 0).sum())} negative values; prior weights are >= 0.")
    if require_positive and not (w > 0).any():
        raise DataError(f"Every weight in column {spec.weights!r} is 0: no row counts.")
    return w
