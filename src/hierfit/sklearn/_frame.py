"""From scikit-learn's ``X`` to the DataFrame a formula reads, and the formula built from ``groups``.

scikit-learn hands estimators arrays (or DataFrames); hierfit fits a formula over named columns.
The bridge: a DataFrame with string column names is used as it is (its group columns may hold
strings) and checked by hierfit's design, which names the offending column and rows; the
columns of anything else are named ``x0, x1, ...`` (scikit-learn's names for array columns,
:func:`hierfit.evaluate.splits.array_column_names`). Arrays go through scikit-learn's
``check_array``, so they fail (no NaN, no sparse, no complex, 2-D) as every scikit-learn
estimator does, except that columns of an object array that hold strings are kept as labels:
they are group labels (or categories) that no float conversion could read.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.utils.validation import check_array

from hierfit.evaluate.splits import array_column_names
from hierfit.exceptions import DataError, SpecError

__all__ = ["auto_formula", "group_columns", "response_name", "to_frame"]

#: a name formulaic and hierfit's formula parser read bare; others are quoted in backticks
_BARE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def to_frame(X: Any, names: Sequence[str] | None = None, min_rows: int = 1) -> pd.DataFrame:
    """``X`` as a DataFrame a formula can name (an array checked as scikit-learn checks its inputs).

    ``names`` are the column names to give an array (those of the frame fitted; default
    ``x0, x1, ...``). A DataFrame keeps its rows, index and column types. ``min_rows``: 2 to
    fit (no model is estimated from one row), 1 to predict.

    Examples
    --------
    >>> to_frame(np.array([[1, 2.5], [2, 3.5]])).dtypes.tolist()
    [dtype('float64'), dtype('float64')]
    >>> to_frame(np.array([["a", 1.0], ["b", 2.0]], dtype=object)).iloc[:, 0].tolist()
    ['a', 'b']
    """
    if isinstance(X, pd.DataFrame):
        return _checked_frame(X, names, min_rows)
    # 2-D, dense, not complex, not empty: scikit-learn's own errors (its estimator checks match them)
    array = check_array(X, dtype=None, ensure_all_finite=False, ensure_min_samples=min_rows, input_name="X")
    columns = list(names) if names is not None else array_column_names(array.shape[1])
    if array.dtype != object:
        array = check_array(array, input_name="X")  # numeric and finite
        return pd.DataFrame(array, columns=columns, copy=False)
    frame = {}
    for j, name in enumerate(columns):
        col = array[:, j]
        if any(isinstance(v, str) for v in col):
            frame[name] = col  # labels: the design reads them as text (and refuses missing ones)
        else:
            frame[name] = check_array(col.reshape(-1, 1), input_name="X")[:, 0]
    return pd.DataFrame(frame)


def _checked_frame(X: pd.DataFrame, names: Sequence[str] | None, min_rows: int) -> pd.DataFrame:
    if X.shape[0] < min_rows or X.shape[1] == 0:
        raise DataError(f"X has {X.shape[0]} sample(s) and {X.shape[1]} column(s); at least {min_rows} sample(s) and "
                        "one column are needed.")
    if not all(isinstance(c, str) for c in X.columns):
        X = X.set_axis(list(names) if names is not None else array_column_names(X.shape[1]), axis=1)
    if X.columns.duplicated().any():
        dup = sorted(set(X.columns[X.columns.duplicated()]))
        raise DataError(f"X has duplicated column names {dup}: a formula names each column once. Rename them.")
    # Missing and infinite values are left to the design, which names the column and the rows,
    # and only for the columns the formula uses.
    return X.copy(deep=False)  # the response column is added to the copy, never to the caller's frame


def group_columns(groups: Any, columns: Sequence[str]) -> list[str]:
    """The names of the columns ``groups`` designates: names, or integer positions.

    Examples
    --------
    >>> group_columns(["market", 3], ["x", "market", "z", "submarket"])
    ['market', 'submarket']
    """
    if groups is None:
        return []
    items = [groups] if isinstance(groups, (str, int, np.integer)) else list(groups)
    out: list[str] = []
    for g in items:
        if isinstance(g, (int, np.integer)) and not isinstance(g, bool):
            if not -len(columns) <= g < len(columns):
                raise DataError(f"'groups' position {g} is out of range: X has {len(columns)} columns (0 .. {len(columns) - 1}).")
            name = columns[int(g)]
        elif isinstance(g, str):
            if g not in columns:
                raise DataError(f"'groups' names column {g!r}, which X does not have; its columns are {sorted(columns)}.")
            name = g
        else:
            raise SpecError(f"'groups' lists column names or integer positions of X; got {g!r} ({type(g).__name__}).")
        if name in out:
            raise SpecError(f"'groups' lists column {name!r} twice; list each grouping column once, top level first.")
        out.append(name)
    return out


def response_name(columns: Sequence[str], wanted: str = "y") -> str:
    """A name for the response column that no column of ``X`` has (``y``, else ``y_``, ...)."""
    name = wanted
    while name in columns:
        name += "_"
    return name


def quote(name: str) -> str:
    """``name`` as a formula term: bare where the parsers read it so, else in backticks.

    Examples
    --------
    >>> quote("x1"), quote("unit price"), quote("lambda")
    ('x1', '`unit price`', '`lambda`')
    """
    if _BARE.match(name) and not keyword.iskeyword(name):
        return name
    if "`" in name:
        raise DataError(f"Column {name!r} has a backtick in its name, which no formula can quote; rename it.")
    return f"`{name}`"


def auto_formula(response: str, columns: Sequence[str], groups: Sequence[str]) -> str:
    """Every non-group column as a population-level term, and nested random intercepts for
    ``groups`` (top level first).

    Examples
    --------
    >>> auto_formula("y", ["x1", "market", "x2", "submarket"], ["market", "submarket"])
    'y ~ x1 + x2 + (1 | market) + (1 | market:submarket)'
    >>> auto_formula("y", ["g"], ["g"])
    'y ~ 1 + (1 | g)'
    """
    population = [quote(c) for c in columns if c not in groups] or ["1"]
    nested = [":".join(quote(g) for g in groups[: i + 1]) for i in range(len(groups))]
    return f"{quote(response)} ~ " + " + ".join(population + [f"(1 | {path})" for path in nested])
