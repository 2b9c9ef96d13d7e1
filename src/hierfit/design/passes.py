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
  variance partition) and the count of rows with a positive prior weight;
* optionally (``per_cell``) the :class:`~hierfit.design.moments.CellMoments` of those columns
  in every cell: every group's sums are sums of its cells', so the mixed model's statistics
  follow from this one pass (:mod:`hierfit.engines.mixed._stream`) without reading the source
  again.

Cells are found from integer codes, not from label text: a grouping column read as a sorted
categorical (:func:`hierfit.design.sources.arrow.arrow_to_pandas`) is its codes already, any
other is factorized once; the codes combine into one integer per row, counted with
``numpy.bincount``. Only each distinct cell's labels are looked up.

Merging sorts cells and values by label, so the result does not depend on the order in which
batches arrive; the cells remember the first batch each combination was seen in (by a
sortable ordinal), which lets an error name the files where a child met two parents.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from hierfit.design._jit import compiled
from hierfit.design.build import DesignEncoding
from hierfit.design.columns import weights_vector
from hierfit.design.direct import DirectColumns, DirectPlan, direct_columns, direct_plan
from hierfit.design.moments import CellMoments, ColumnMoments
from hierfit.design.sources import Batch
from hierfit.exceptions import DataError

__all__ = ["MAX_CELL_VALUES", "DesignPass", "DesignSummary", "label_columns", "merge_summaries", "model_columns"]

#: cell columns beside the grouping columns
ROWS, FIRST = "__rows__", "__first__"

#: most numbers per-cell moments may hold (cells x (q + q (q + 1) / 2), 8 bytes each: 256 MB);
#: beyond, a pass keeps the overall moments only and the engine reads the source again
MAX_CELL_VALUES = 1 << 25

#: combined codes are counted with a dense ``bincount`` while their range is at most this
#: many times the rows (else they are factorized: a sparse set of combinations)
_DENSE_RANGE = 4


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
    #: per-cell moments of the model's columns, aligned with the rows of ``cells`` (``None``:
    #: not gathered, or too many cells: :data:`MAX_CELL_VALUES`); ``moments`` is then ``None``
    #: (see :meth:`overall_moments`)
    cell_moments: CellMoments | None = None

    def overall_moments(self) -> ColumnMoments | None:
        """The moments of the model's columns over all rows (from the cells' when gathered per cell)."""
        if self.moments is None and self.cell_moments is not None:
            return self.cell_moments.column_moments()
        return self.moments


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
    categoricals (:func:`hierfit.design.sources.arrow.arrow_to_pandas`). ``per_cell`` (with an
    encoding) gathers the moments per cell too (:class:`~hierfit.design.moments.CellMoments`;
    the cells are then found even when ``discover`` is off).
    """

    grouping: tuple[str, ...]
    categorical: tuple[str, ...] = ()
    discover: bool = True
    encoding: DesignEncoding | None = None
    labels: tuple[str, ...] = ()
    per_cell: bool = False
    #: batch summaries a fold merges at once (:func:`hierfit.design.sources.runner.summarise_piece`):
    #: a merge aligns the cells once, whatever the number of summaries
    merge_buffer: int = 8
    #: batches summarised at once (:func:`hierfit.design.sources.runner.batch_threads`): the
    #: reading, the cell codes and the moments' kernels release the GIL
    batch_threads: int = 2
    #: read the model's columns straight from the batch's arrays where the formula allows
    #: (:mod:`hierfit.design.direct`; ``False``: always through formulaic, to compare)
    direct: bool = True
    _plan: DirectPlan | None = field(default=None, init=False, repr=False)
    #: per grouping column, the last batch's categories, their ranks and sorted values (_label_codes)
    _categories: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)
    #: per grouping column, the last batch's categories, cell codes and labels (:meth:`_labels`)
    _last_labels: dict[str, tuple[np.ndarray, np.ndarray, pd.Series | np.ndarray]] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.direct and self.encoding is not None:
            object.__setattr__(self, "_plan", direct_plan(self.encoding))

    def __call__(self, batch: Batch) -> DesignSummary:
        frame = batch.frame
        key = ordinal(batch)
        kinds = {str(c): (column_kind(dtype), batch.where) for c, dtype in frame.dtypes.items()}
        per_cell = self.per_cell and self.encoding is not None
        cells = pd.DataFrame()
        cell = np.zeros(0, dtype=np.int64)
        levels: dict[str, np.ndarray] = {}
        if self.discover or per_cell:
            cells, cell = self._cells(frame, key)
        if self.discover:
            levels = {c: _distinct(frame[c]) for c in self.categorical}
        moments, positive, by_cell = None, 0, None
        if self.encoding is not None:
            C, direct = self._model_columns(frame)
            q = C.shape[1] if direct is None else len(direct.source)
            if per_cell and len(cells) * (q + q * (q + 1) // 2) <= MAX_CELL_VALUES:
                # the overall moments follow from the cells' when needed (CellMoments.column_moments)
                by_cell = (CellMoments.of(C, cell, len(cells)) if direct is None
                           else CellMoments.of_columns(direct.arrays, direct.source, cell, len(cells),
                                                   ranges=direct.ranges or None,
                                                   count=cells[ROWS].to_numpy(dtype=np.float64)))
            else:
                moments = ColumnMoments.of(C if direct is None else direct.matrix())
            w = weights_vector(self.encoding.spec, frame, require_positive=False)
            positive = len(frame) if w is None else int(np.count_nonzero(w > 0))
        return DesignSummary(len(frame), cells, levels, kinds, {key: batch.where}, moments, positive, self.grouping,
                             by_cell)

    def _model_columns(self, frame: pd.DataFrame) -> tuple[np.ndarray, DirectColumns | None]:
        """The batch's model columns: read directly where the plan allows (the matrix is then
        empty), else built by formulaic (:func:`model_columns`), which gives its errors."""
        assert self.encoding is not None
        direct = direct_columns(self._plan, self.encoding, frame) if self._plan is not None else None
        if direct is not None:
            return np.zeros((0, 0)), direct
        return model_columns(self.encoding, frame)[0], None

    def _cells(self, frame: pd.DataFrame, key: int) -> tuple[pd.DataFrame, np.ndarray]:
        """The batch's cells (sorted by label) with their row counts, and each row's cell."""
        n = len(frame)
        if not self.grouping:
            return pd.DataFrame({ROWS: [n], FIRST: [key]}), np.zeros(n, dtype=np.int64)
        codes, ranks, uniques = [], [], []
        for col in self.grouping:
            c, r, u = _label_codes(frame[col], self._categories)
            # the minimum first: a reduction without the temporary mask, which only a column
            # with missing labels needs (to count them)
            if c.size and c.min() < 0:
                missing = int(np.count_nonzero(c < 0))
                raise DataError(
                    f"Grouping column {col!r} has {missing} missing labels (of {len(frame)} rows); "
                    "drop those rows or give them a label before fitting."
                )
            codes.append(c)
            ranks.append(r)
            uniques.append(u)
        found = _dense_cells(codes, [len(u) for u in uniques], ranks)
        if found is None:
            codes = [(c if r is None else r[c]).astype(np.int64, copy=False) for c, r in zip(codes, ranks)]
            cell, n_cells = _combine(codes, [len(u) for u in uniques])
            rep = _representatives(cell, n_cells)
            digits, counts = [c[rep] for c in codes], np.bincount(cell, minlength=n_cells).astype(np.int64)
        else:
            cell, digits, counts = found
        columns = {col: self._labels(col, u, d) for col, d, u in zip(self.grouping, digits, uniques)}
        # copy=False: the label columns stay the (shared) arrays of _labels, so merging batches
        # that hold the same cells sees they do without comparing their labels (_same_cells)
        cells = pd.DataFrame({**columns, ROWS: counts, FIRST: np.full(len(counts), key, dtype=np.int64)}, copy=False)
        return cells, cell

    def _labels(self, column: str, uniques: np.ndarray, digits: np.ndarray) -> pd.Series | np.ndarray:
        """The labels of the cells' codes ``digits`` in a grouping column, the same object as
        the previous batch's where its categories and codes were the same (batches of a file
        sharing a dictionary, every cell in each)."""
        last = self._last_labels.get(column)
        if last is not None and last[0] is uniques and np.array_equal(last[1], digits):
            return last[2]
        labels = _label_column(uniques[digits])
        self._last_labels[column] = (uniques, digits, labels)
        return labels


def _codes(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes of a column (``-1``: missing) and the values they stand for, sorted."""
    codes, rank, uniques = _label_codes(values)
    codes = codes.astype(np.int64)
    if rank is not None:
        codes = np.where(codes >= 0, rank[np.maximum(codes, 0)], -1)
    return codes, uniques


def _label_codes(values: pd.Series, memo: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """A column's codes (``-1``: missing; a categorical's own, in their small integer type, not
    copied), the rank of each code's value among the values (``None``: the codes are the ranks)
    and the values sorted. ``memo`` keeps the last categories' ranks per column: the batches
    of a piece share their categories (:class:`~hierfit.design.sources.arrow.LabelCategoricals`)."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        cats = values.cat.categories
        codes = values.cat.codes.to_numpy()
        last = memo.get(str(values.name)) if memo is not None else None
        if last is not None and last[0] is cats:
            return codes, last[1], last[2]
        if cats.is_monotonic_increasing:
            rank, uniques = None, cats.to_numpy()
        else:
            # a user's categorical (or a batch's dictionary) may list its categories in any order
            order = np.argsort(cats.to_numpy(), kind="stable")
            rank = np.empty(len(order), dtype=np.int64)
            rank[order] = np.arange(len(order))
            uniques = cats.to_numpy()[order]
        if memo is not None:
            memo[str(values.name)] = (cats, rank, uniques)
        return codes, rank, uniques
    codes, uniques = pd.factorize(values, sort=True)
    return codes.astype(np.int64, copy=False), None, np.asarray(uniques)


def _combine(codes: Sequence[np.ndarray], sizes: Sequence[int]) -> tuple[np.ndarray, int]:
    """One code per row for the combination of several columns' codes, numbered in the
    lexicographic order of the codes, and the number of distinct combinations."""
    n = len(codes[0])
    combined, size = codes[0], max(sizes[0], 1)
    for c, k in zip(codes[1:], sizes[1:]):
        if size * max(k, 1) >= 1 << 62:  # would overflow: renumber the combinations seen so far
            combined, size = _dense(combined, size, n)
        combined, size = combined * max(k, 1) + c, size * max(k, 1)
    return _dense(combined, size, n)


def _fold_digit_loops(combined: np.ndarray, codes: np.ndarray, rank: np.ndarray, width: int, first: bool,
                      counts: np.ndarray) -> None:
    """``combined = combined * width + rank[codes]`` in place in one pass (``combined = rank[codes]``
    for the ``first`` column; no ``rank``: the codes themselves), counting the combined codes
    into ``counts`` unless it is empty (the last column): no temporaries."""
    ranked, counting = rank.size > 0, counts.size > 0
    for i in range(combined.shape[0]):
        c = codes[i]
        if ranked:
            c = rank[c]
        value = c if first else combined[i] * width + c
        combined[i] = value
        if counting:
            counts[value] += 1


_fold_digit = compiled(_fold_digit_loops)


def _dense_cells(codes: Sequence[np.ndarray], sizes: Sequence[int],
                 ranks: Sequence[np.ndarray | None] | None = None) -> tuple[np.ndarray, list[np.ndarray], np.ndarray] | None:
    """:func:`_combine` where the combinations' range is small enough to count densely (else
    ``None``), with each cell's code in every column and its rows read off the same count.
    ``ranks[j]``, where given, maps column ``j``'s codes to the ranks of their labels (a
    categorical whose categories are not sorted).

    The cells are numbered as :func:`_combine` numbers them; their codes are the digits of
    the combined code, so no representative row of each cell is looked up. Where every
    combination occurs (a batch of a big source holds every cell), the combined code is the
    cell already.
    """
    n = len(codes[0])
    widths = [max(k, 1) for k in sizes]
    if float(np.prod(widths, dtype=np.float64)) > _DENSE_RANGE * n + (1 << 16):
        return None
    ranks = list(ranks) if ranks is not None else [None] * len(codes)
    size = int(np.prod(widths))
    if _fold_digit is not None:
        combined = np.empty(n, dtype=np.int64)
        counts = np.zeros(size, dtype=np.int64)
        none, last = np.zeros(0, dtype=np.int64), len(codes) - 1
        for j, (c, r, k) in enumerate(zip(codes, ranks, widths)):
            _fold_digit(combined, c, none if r is None else r, k, j == 0, counts if j == last else none)
    else:
        ranked = [c if r is None else r[c] for c, r in zip(codes, ranks)]
        combined = ranked[0].astype(np.int64)
        for c, k in zip(ranked[1:], widths[1:]):
            combined = combined * k + c
        counts = np.bincount(combined, minlength=size)
    present = np.flatnonzero(counts)
    if present.size == counts.size:
        cell = combined
    else:
        rank = np.zeros(counts.size, dtype=np.int64)
        rank[present] = np.arange(present.size)
        cell = rank[combined]
    digits, rest = [], present
    for k in reversed(widths[1:]):
        digits.append(rest % k)
        rest = rest // k
    digits.append(rest)
    return cell, digits[::-1], counts[present].astype(np.int64)


def _dense(combined: np.ndarray, size: int, n: int) -> tuple[np.ndarray, int]:
    """``combined`` renumbered ``0..k-1`` in increasing order of value, and ``k``."""
    if size <= _DENSE_RANGE * n + (1 << 16):
        present = np.flatnonzero(np.bincount(combined, minlength=size))
        rank = np.zeros(size, dtype=np.int64)
        rank[present] = np.arange(present.size)
        return rank[combined], int(present.size)
    inverse, distinct = pd.factorize(combined, sort=True)
    return inverse.astype(np.int64, copy=False), len(distinct)


def _label_column(values: np.ndarray) -> pd.Series | np.ndarray:
    """Cell labels as a frame column; text stays a plain object column (pandas would otherwise
    infer Arrow-backed strings, and converting them back for every merge cost more than the merge)."""
    return pd.Series(values, dtype=object) if values.dtype == object else values


def _representatives(cell: np.ndarray, n_cells: int) -> np.ndarray:
    """A row of each cell (any: all rows of a cell hold its labels)."""
    rep = np.zeros(n_cells, dtype=np.int64)
    rep[cell] = np.arange(cell.size)
    return rep


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
    with_cells = [p for p in parts if len(p.cells)]
    cells, index = _merge_cells(with_cells, grouping)
    names = sorted({c for p in parts for c in p.levels})
    levels = {c: _sorted_distinct([p.levels[c] for p in parts if c in p.levels]) for c in names}
    by_cell = None
    if with_cells and all(p.cell_moments is not None for p in parts):
        q = with_cells[0].cell_moments.q  # type: ignore[union-attr]
        if len(cells) * (q + q * (q + 1) // 2) <= MAX_CELL_VALUES:
            by_cell = CellMoments.combine([p.cell_moments for p in with_cells], index,  # type: ignore[misc]
                                          len(cells))
    moments = None
    if by_cell is None:
        measured = [m for m in (p.overall_moments() for p in parts) if m is not None]
        moments = ColumnMoments.merge(measured) if measured else None
    where = {k: v for p in parts for k, v in p.where.items()}
    # keep the places an error may still need: where cells were first seen, where kinds come from
    needed = set(cells[FIRST].tolist()) if len(cells) else set()
    where = {k: v for k, v in where.items() if k in needed or k == min(where)}
    return DesignSummary(sum(p.n for p in parts), cells, levels, kinds, where, moments,
                         sum(p.positive_weights for p in parts), grouping, by_cell)


def _merge_cells(parts: Sequence[DesignSummary], grouping: tuple[str, ...]) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """The cells of several summaries merged (sorted by label; rows added, first seen the
    earliest), and for each summary the merged cell of each of its cells."""
    if not parts:
        return pd.DataFrame(), []
    sizes = [len(p.cells) for p in parts]
    if grouping and _same_cells(parts, grouping):
        # consecutive batches mostly hold the same cells: nothing to align
        # the first summary's label columns as they are (not copied: nothing changes them), so
        # the next merge sees them as the same labels at once (_same_values)
        cells = pd.DataFrame({c: parts[0].cells[c] for c in grouping}, copy=False)
        cells[ROWS] = np.sum([p.cells[ROWS].to_numpy(dtype=np.int64) for p in parts], axis=0)
        cells[FIRST] = np.min([p.cells[FIRST].to_numpy(dtype=np.int64) for p in parts], axis=0)
        return cells, [np.arange(sizes[0])] * len(parts)
    joined = pd.concat([p.cells for p in parts], ignore_index=True)
    if grouping:
        codes, uniques = [], []
        for col in grouping:
            c, u = _codes(joined[col])
            codes.append(c)
            uniques.append(u)
        inverse, n_cells = _combine(codes, [len(u) for u in uniques])
        rep = _representatives(inverse, n_cells)
        cells = pd.DataFrame({col: _label_column(u[c[rep]]) for col, c, u in zip(grouping, codes, uniques)})
    else:
        inverse, n_cells = np.zeros(len(joined), dtype=np.int64), 1
        cells = pd.DataFrame(index=range(1))
    cells[ROWS] = np.bincount(inverse, weights=joined[ROWS].to_numpy(dtype=np.float64), minlength=n_cells).astype(np.int64)
    first = np.full(n_cells, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, inverse, joined[FIRST].to_numpy(dtype=np.int64))
    cells[FIRST] = first
    return cells, np.split(inverse, np.cumsum(sizes)[:-1])


def _same_cells(parts: Sequence[DesignSummary], grouping: tuple[str, ...]) -> bool:
    """Whether every summary holds the same cells in the same (sorted) order."""
    first = parts[0].cells
    return all(len(p.cells) == len(first) and all(_same_values(p.cells[c].to_numpy(), first[c].to_numpy())
                                                  for c in grouping) for p in parts[1:])


def _same_values(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two arrays hold the same values: at once where they are views of the same memory."""
    same_memory = (a.dtype == b.dtype and a.shape == b.shape and a.strides == b.strides
                   and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])
    return same_memory or np.array_equal(a, b)
