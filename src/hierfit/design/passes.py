"""What one batch contributes to a streamed design, and how two contributions merge.

A :class:`DesignSummary` of a batch holds

* its row count and the distinct combinations of its grouping columns with their row
  counts (*cells*): the tree of groups, its sizes and its validation need nothing more;
* the distinct values of the categorical population variables (``C(x)``, text columns): the
  population encoding, learned so that every batch is encoded the same way;
* the kind of every column read (number, text, ...): a partition that stores a column
  differently from the others is refused by name;
* optionally the :class:`~hierfit.design.moments.ColumnMoments` of the model's columns
  ``[X, y, offset, Z]`` (for the standardisation of the mixed model, the rank check, the
  variance partition) and the count of rows with a positive prior weight.

Merging sorts cells and values by label, so the result does not depend on the order in which
batches arrive; the cells remember the first batch each combination was seen in (by a
sortable ordinal), which lets an error name the files where a child met two parents.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from hierfit.design.build import DesignEncoding
from hierfit.design.columns import weights_vector
from hierfit.design.moments import ColumnMoments
from hierfit.design.sources import Batch
from hierfit.exceptions import DataError

__all__ = ["DesignPass", "DesignSummary", "label_columns", "merge_summaries", "model_columns"]

#: cell columns beside the grouping columns
ROWS, FIRST = "__rows__", "__first__"


def label_columns(grouping: Sequence[str], used: Sequence[str]) -> tuple[str, ...]:
    """The grouping columns that no population term, outcome, offset or weight reads: only their
    labels' identity and order matter, so a reader may keep them dictionary-encoded."""
    return tuple(c for c in grouping if c not in set(used))


def column_kind(dtype: object) -> str:
    """A coarse kind of a pandas dtype: ``number``, ``boolean``, ``text``, or the dtype's name."""
    if pd.api.types.is_bool_dtype(dtype):
        return "boolean"
    if pd.api.types.is_numeric_dtype(dtype):
        return "number"
    if pd.api.types.is_string_dtype(dtype) or pd.api.types.is_object_dtype(dtype) or isinstance(dtype, pd.CategoricalDtype):
        return "text"
    return str(dtype)


def ordinal(batch: Batch) -> int:
    """A sortable id of a batch: its piece, then its first row within the piece."""
    start = int(batch.frame.index[0]) if len(batch.frame) else 0
    return (batch.piece << 40) + start


@dataclass(frozen=True, eq=False)
class DesignSummary:
    """One batch's (or several merged batches') contribution to a streamed design."""

    n: int
    cells: pd.DataFrame
    levels: dict[str, np.ndarray]
    kinds: dict[str, tuple[str, str]]
    where: dict[int, str]
    moments: ColumnMoments | None = None
    positive_weights: int = 0
    grouping: tuple[str, ...] = field(default=())


def model_columns(encoding: DesignEncoding, frame: pd.DataFrame) -> tuple[np.ndarray, bool]:
    """The model's columns ``[X, y, offset, Z_1, ..., Z_T]`` of some rows (see :func:`moment_layout`)
    and whether an offset column is among them."""
    cols = encoding.columns(frame, observed=True)
    assert cols.y is not None
    parts = [cols.X, cols.y[:, None]]
    if cols.offset is not None:
        parts.append(cols.offset[:, None])
    parts += [np.asarray(td.Z, dtype=np.float64) for td in cols.terms]
    # built column-major: what ColumnMoments.of reads fastest (no row-major copy first)
    widths = [1 if p.ndim == 1 else p.shape[1] for p in parts]
    C = np.empty((len(frame), sum(widths)), dtype=np.float64, order="F")
    start = 0
    for part, width in zip(parts, widths):
        C[:, start:start + width] = part.reshape(len(frame), width)
        start += width
    return C, cols.offset is not None


@dataclass(frozen=True, eq=False)
class DesignPass:
    """The per-batch work of a design pass: discover groups and levels, and/or gather moments.

    ``grouping`` are the grouping columns, ``categorical`` the population variables whose
    distinct values are collected (empty: none, or they are known); ``encoding`` (without a
    tree) builds the model's columns for the moments (``None``: not in this pass). ``labels``
    are the grouping columns nothing else reads, which readers may hand over as sorted
    categoricals (:func:`hierfit.design.sources.arrow.arrow_to_pandas`).
    """

    grouping: tuple[str, ...]
    categorical: tuple[str, ...] = ()
    discover: bool = True
    encoding: DesignEncoding | None = None
    labels: tuple[str, ...] = ()

    def __call__(self, batch: Batch) -> DesignSummary:
        frame = batch.frame
        key = ordinal(batch)
        kinds = {str(c): (column_kind(frame[c].dtype), batch.where) for c in frame.columns}
        cells = pd.DataFrame()
        levels: dict[str, np.ndarray] = {}
        if self.discover:
            cells = self._cells(frame, key)
            levels = {c: _distinct(frame[c]) for c in self.categorical}
        moments, positive = None, 0
        if self.encoding is not None:
            C, _ = model_columns(self.encoding, frame)
            moments = ColumnMoments.of(C)
            w = weights_vector(self.encoding.spec, frame, require_positive=False)
            positive = len(frame) if w is None else int(np.count_nonzero(w > 0))
        return DesignSummary(len(frame), cells, levels, kinds, {key: batch.where}, moments, positive, self.grouping)

    def _cells(self, frame: pd.DataFrame, key: int) -> pd.DataFrame:
        for col in self.grouping:
            missing = int(frame[col].isna().sum())
            if missing:
                raise DataError(
                    f"Grouping column {col!r} has {missing} missing labels (of {len(frame)} rows); "
                    "drop those rows or give them a label before fitting."
                )
        if not self.grouping:
            return pd.DataFrame({ROWS: [len(frame)], FIRST: [key]})
        counts = frame.groupby(list(self.grouping), sort=False, observed=True).size()
        cells = counts.rename(ROWS).reset_index()
        cells[FIRST] = key
        return cells


def _distinct(values: pd.Series) -> np.ndarray:
    return np.asarray(pd.unique(values.dropna()), dtype=object)


def _sorted_distinct(arrays: Sequence[np.ndarray]) -> np.ndarray:
    values = pd.unique(np.concatenate(arrays)) if arrays else np.zeros(0, dtype=object)
    return np.asarray(sorted(values), dtype=object)


def _merge_kinds(parts: Sequence[DesignSummary]) -> dict[str, tuple[str, str]]:
    kinds: dict[str, tuple[str, str]] = {}
    for p in parts:
        for col, (kind, where) in p.kinds.items():
            seen = kinds.setdefault(col, (kind, where))
            if seen[0] != kind:
                raise DataError(
                    f"Column {col!r} holds {kind} values in {where} but {seen[0]} values in {seen[1]}: every part of a "
                    "source must store a column the same way. Cast it in the parts that differ."
                )
    return kinds


def merge_summaries(parts: Sequence[DesignSummary]) -> DesignSummary:
    """The summary of all the batches behind ``parts``; independent of their order.

    Examples
    --------
    >>> from hierfit.design.sources import Batch
    >>> frame = pd.DataFrame({"m": ["b", "a", "b", "a"], "y": [1.0, 2.0, 3.0, 4.0]})
    >>> task = DesignPass(("m",))
    >>> parts = [task(Batch(frame.iloc[:2], "rows 0-1", 0)), task(Batch(frame.iloc[2:], "rows 2-3", 0))]
    >>> merged = merge_summaries(parts[::-1])
    >>> merged.n, merged.cells["m"].tolist(), merged.cells[ROWS].tolist()
    (4, ['a', 'b'], [2, 2])
    """
    kinds = _merge_kinds(parts)
    grouping = parts[0].grouping
    cell_parts = [p.cells for p in parts if len(p.cells)]
    cells = pd.DataFrame()
    if cell_parts:
        joined = pd.concat(cell_parts, ignore_index=True)
        if grouping:
            cells = (joined.groupby(list(grouping), sort=True, observed=True)
                     .agg(**{ROWS: (ROWS, "sum"), FIRST: (FIRST, "min")}).reset_index())
        else:
            cells = pd.DataFrame({ROWS: [int(joined[ROWS].sum())], FIRST: [int(joined[FIRST].min())]})
    names = sorted({c for p in parts for c in p.levels})
    levels = {c: _sorted_distinct([p.levels[c] for p in parts if c in p.levels]) for c in names}
    measured = [p.moments for p in parts if p.moments is not None]
    moments = ColumnMoments.merge(measured) if measured else None
    where = {k: v for p in parts for k, v in p.where.items()}
    # keep the places an error may still need: where cells were first seen, where kinds come from
    needed = set(cells[FIRST].tolist()) if len(cells) else set()
    where = {k: v for k, v in where.items() if k in needed or k == min(where)}
    return DesignSummary(sum(p.n for p in parts), cells, levels, kinds, where, moments,
                         sum(p.positive_weights for p in parts), grouping)
