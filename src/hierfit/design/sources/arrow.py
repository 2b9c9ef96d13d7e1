"""Arrow data as pieces: a ``pyarrow.Table`` in memory, and the conversion of Arrow batches to pandas.

pyarrow is imported inside the functions: ``import hierfit`` stays quick.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from .base import Batch, check_columns, row_range

__all__ = ["ArrowPiece", "arrow_to_pandas", "is_arrow_table"]


def is_arrow_table(data: object) -> bool:
    """Whether ``data`` is a ``pyarrow.Table`` (without importing pyarrow when it is not loaded)."""
    import sys

    pa = sys.modules.get("pyarrow")
    return pa is not None and isinstance(data, pa.Table)


def arrow_to_pandas(table: Any, start: int = 0) -> pd.DataFrame:
    """A pandas frame of an Arrow table or record batch, index ``start, start + 1, ...``.

    Dictionary-encoded columns (pandas categoricals written to Parquet) are decoded to their
    values first: each file or batch has its own dictionary, and labels must sort by value,
    as they do in memory, whatever dictionary a batch happens to carry.
    """
    import pyarrow as pa

    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    columns = []
    for col in table.columns:
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        columns.append(col)
    frame = pa.table(columns, names=table.column_names).to_pandas(ignore_metadata=True)
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

    def batches(self, columns: Sequence[str], batch_size: int, index: int) -> Iterator[Batch]:
        check_columns(self.table.column_names, columns, self.label)
        start = 0
        for rb in self.table.select(list(columns)).to_batches(max_chunksize=batch_size):
            if rb.num_rows == 0:
                continue
            stop = start + rb.num_rows
            yield Batch(arrow_to_pandas(rb, start), f"{self.label} ({row_range(start, stop)})", index)
            start = stop
