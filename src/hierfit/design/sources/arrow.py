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

__all__ = ["ArrowPiece", "arrow_to_pandas", "is_arrow_table"]


def is_arrow_table(data: object) -> bool:
    """Whether ``data`` is a ``pyarrow.Table`` (without importing pyarrow when it is not loaded)."""
    import sys

    pa = sys.modules.get("pyarrow")
    return pa is not None and isinstance(data, pa.Table)


def _is_text(arrow_type: Any) -> bool:
    import pyarrow as pa

    t = arrow_type.value_type if pa.types.is_dictionary(arrow_type) else arrow_type
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))


def _sorted_categorical(col: Any) -> pd.Categorical:
    """A text column as a pandas Categorical whose categories are its distinct values, sorted.

    Group labels are only ever compared, counted and sorted by value, so the codes of a
    dictionary (Arrow's own hash encoding: no Python string per row) stand in for the text,
    and the categories' sorted order is the order the text itself would sort in.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if not pa.types.is_dictionary(arr.type):
        arr = pc.dictionary_encode(arr)
    values = np.asarray(arr.dictionary.to_pylist(), dtype=object)
    order = np.argsort(values, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    indices = arr.indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    codes = rank[indices] if len(rank) else np.zeros(len(indices), dtype=np.int64)
    if arr.null_count:
        codes[arr.is_null().to_numpy(zero_copy_only=False)] = -1
    return pd.Categorical.from_codes(codes, categories=pd.Index(values[order], dtype=object))


def arrow_to_pandas(table: Any, start: int = 0, labels: Collection[str] = ()) -> pd.DataFrame:
    """A pandas frame of an Arrow table or record batch, index ``start, start + 1, ...``.

    Dictionary-encoded columns (pandas categoricals written to Parquet) are decoded to their
    values first: each file or batch has its own dictionary, and labels must sort by value,
    as they do in memory, whatever dictionary a batch happens to carry. Text columns named in
    ``labels`` (grouping columns that nothing else reads) become pandas Categoricals with
    sorted categories instead: decoding millions of labels to Python strings, and hashing
    them again to find the groups, was most of the time of a pass.

    Examples
    --------
    >>> import pyarrow as pa
    >>> t = pa.table({"g": pa.array(["b", "a", None, "b"]).dictionary_encode(), "x": [1.0, 2.0, 3.0, 4.0]})
    >>> frame = arrow_to_pandas(t, labels=["g"])
    >>> list(frame["g"].cat.categories), frame["g"].cat.codes.tolist()
    (['a', 'b'], [1, 0, -1, 1])
    >>> arrow_to_pandas(t)["g"].tolist()
    ['b', 'a', nan, 'b']
    """
    import pyarrow as pa

    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    columns, names, categorical = [], [], {}
    for name, col in zip(table.column_names, table.columns):
        if name in labels and _is_text(col.type):
            categorical[name] = _sorted_categorical(col)
            continue
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        columns.append(col)
        names.append(name)
    frame = pa.table(columns, names=names).to_pandas(ignore_metadata=True) if names else pd.DataFrame(index=range(table.num_rows))
    for name, values in categorical.items():
        frame[name] = values
    frame = frame[list(table.column_names)]
    frame.index = pd.RangeIndex(start, start + len(frame))
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
        for rb in self.table.select(list(columns)).to_batches(max_chunksize=batch_size):
            if rb.num_rows == 0:
                continue
            stop = start + rb.num_rows
            yield Batch(arrow_to_pandas(rb, start, labels), f"{self.label} ({row_range(start, stop)})", index)
            start = stop
