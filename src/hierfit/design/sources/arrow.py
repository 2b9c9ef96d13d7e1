"""Arrow data as pieces: a ``pyarrow.Table`` in memory, and the conversion of Arrow batches to pandas.

pyarrow is imported inside the functions: ``import hierfit`` stays quick.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .base import Batch, check_columns, row_range

__all__ = ["ArrowPiece", "LabelCategoricals", "arrow_to_pandas", "is_arrow_table"]


def is_arrow_table(data: object) -> bool:
    """Whether ``data`` is a ``pyarrow.Table`` (without importing pyarrow when it is not loaded)."""
    import sys

    pa = sys.modules.get("pyarrow")
    return pa is not None and isinstance(data, pa.Table)


def _is_text(arrow_type: Any) -> bool:
    import pyarrow as pa

    t = arrow_type.value_type if pa.types.is_dictionary(arrow_type) else arrow_type
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))


class LabelCategoricals:
    """Text columns as pandas Categoricals of their distinct values, without a string per row.

    Group labels are only ever compared, counted and sorted by value, so the codes of a
    dictionary (Arrow's own hash encoding) stand in for the text. The categories are the
    dictionary's values in its own order: sorted where the dictionary is (one written from a
    pandas categorical), else as they come, and whoever sorts the labels ranks the categories
    (:func:`hierfit.design.passes._label_codes`: a few hundred values, not millions of rows).

    One instance reads the batches of one piece: the batches of a Parquet file mostly carry
    the same dictionary, so its categories (the same dtype object for all those batches) are
    made once.

    Examples
    --------
    >>> import pyarrow as pa
    >>> labels = LabelCategoricals()
    >>> col = pa.array(["b", "a", None, "b"]).dictionary_encode()
    >>> cat = labels.categorical("g", col)
    >>> list(cat.categories), cat.codes.tolist(), labels.categorical("g", col).dtype is cat.dtype
    (['b', 'a'], [0, 1, -1, 0], True)
    """

    def __init__(self) -> None:
        #: per column: the last dictionary seen and the categorical dtype of its values
        self._last: dict[str, tuple[Any, pd.CategoricalDtype]] = {}

    def _dtype(self, name: str, dictionary: Any) -> pd.CategoricalDtype:
        last = self._last.get(name)
        if last is not None and last[0].equals(dictionary):
            return last[1]
        dtype = pd.CategoricalDtype(pd.Index(np.asarray(dictionary.to_pylist(), dtype=object), dtype=object))
        self._last[name] = (dictionary, dtype)
        return dtype

    def categorical(self, name: str, col: Any) -> pd.Categorical:
        """Column ``name`` (an Arrow array or chunked array of text) as a Categorical."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if isinstance(col, pa.ChunkedArray):
            arr = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
        else:
            arr = col
        if not pa.types.is_dictionary(arr.type):
            arr = pc.dictionary_encode(arr)
        dtype = self._dtype(name, arr.dictionary)
        # the dictionary's own indices (zero-copy without nulls), cast once to the type pandas
        # keeps codes in for this many categories
        indices = arr.indices.to_numpy(zero_copy_only=False) if arr.null_count == 0 else \
            arr.indices.fill_null(0).to_numpy(zero_copy_only=False)
        codes = indices.astype(_code_dtype(len(dtype.categories)), copy=False)
        if arr.null_count:
            codes = codes.copy() if codes is indices else codes
            codes[arr.is_null().to_numpy(zero_copy_only=False)] = -1
        # the codes are in range by construction (validating them was a pass over the rows)
        return pd.Categorical.from_codes(codes, dtype=dtype, validate=False)


def _code_dtype(n_categories: int) -> np.dtype:
    """The integer type pandas gives the codes of ``n_categories`` categories."""
    for dtype in (np.int8, np.int16, np.int32):
        if n_categories < np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def arrow_to_pandas(table: Any, start: int = 0, labels: Collection[str] = (),
                    label_categoricals: LabelCategoricals | None = None) -> pd.DataFrame:
    """A pandas frame of an Arrow table or record batch, index ``start, start + 1, ...``.

    Dictionary-encoded columns (pandas categoricals written to Parquet) are decoded to their
    values first: each file or batch has its own dictionary, and labels must sort by value,
    as they do in memory, whatever dictionary a batch happens to carry. Text columns named in
    ``labels`` (grouping columns that nothing else reads) become pandas Categoricals of the
    dictionary's codes instead (:class:`LabelCategoricals`, which a reader keeps for a piece's
    batches): decoding millions of labels to Python strings, and hashing them again to find
    the groups, was most of the time of a pass.

    Examples
    --------
    >>> import pyarrow as pa
    >>> t = pa.table({"g": pa.array(["b", "a", None, "b"]).dictionary_encode(), "x": [1.0, 2.0, 3.0, 4.0]})
    >>> frame = arrow_to_pandas(t, labels=["g"])
    >>> frame["g"].tolist(), list(frame["g"].cat.categories)
    (['b', 'a', nan, 'b'], ['b', 'a'])
    >>> arrow_to_pandas(t)["g"].tolist()
    ['b', 'a', nan, 'b']
    """
    import pyarrow as pa

    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    columns, names, categorical = [], [], {}
    sorter = label_categoricals or LabelCategoricals()
    for name, col in zip(table.column_names, table.columns):
        if name in labels and _is_text(col.type):
            categorical[name] = sorter.categorical(name, col)
            continue
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        columns.append(col)
        names.append(name)
    # split_blocks: each float64 column stays its own zero-copy array (not copied into one block)
    plain = pa.table(columns, names=names).to_pandas(ignore_metadata=True, split_blocks=True) if names else None
    if not categorical:
        assert plain is not None
        plain.index = pd.RangeIndex(start, start + len(plain))
        return plain
    parts = {name: categorical[name] if name in categorical else plain[name]  # type: ignore[index]
             for name in table.column_names}
    frame = pd.DataFrame(parts, index=pd.RangeIndex(table.num_rows), copy=False)
    frame.index = pd.RangeIndex(start, start + table.num_rows)
    return frame


def empty_frame(schema: Any) -> pd.DataFrame:
    """An empty pandas frame with the columns and dtypes batches of ``schema`` will have."""
    return arrow_to_pandas(schema.empty_table())


@dataclass(frozen=True, eq=False)
class ArrowPiece:
    """A ``pyarrow.Table`` as one piece, read in record batches (no pandas copy of the whole table)."""

    table: Any
    label: str = "the Arrow table"

    def batches(self, columns: Sequence[str], batch_size: int, index: int, labels: Collection[str] = ()) -> Iterator[Batch]:
        check_columns(self.table.column_names, columns, self.label)
        start = 0
        label_categoricals = LabelCategoricals()
        for rb in self.table.select(list(columns)).to_batches(max_chunksize=batch_size):
            if rb.num_rows == 0:
                continue
            stop = start + rb.num_rows
            yield Batch(arrow_to_pandas(rb, start, labels, label_categoricals), f"{self.label} ({row_range(start, stop)})", index)
            start = stop
