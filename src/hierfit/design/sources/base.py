"""What every streaming source is made of: pieces that yield batches, and a fold over them.

A *source* is rows that need not fit in memory: a ``pyarrow.Table``, Parquet files, a Dask
DataFrame. It is split into *pieces* -- one Parquet file, one Dask partition, one Arrow
table -- that can be read independently (on another machine, for a distributed run), and each
piece yields *batches*: pandas frames of at most ``batch_size`` rows with only the columns
asked for, whose index is the row's position within its piece (so an error can name ``row 17
of file 'part-2.parquet'``).

Everything hierfit computes from a source is a *fold*: a summary of each batch (a task), and
an associative, order-insensitive merge of summaries (:mod:`.runner`). A pandas frame is one
batch; a Parquet dataset many; a Dask DataFrame one piece per partition.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pandas as pd

from hierfit.exceptions import DataError, HierfitError, TrainingRowsUnavailableError

__all__ = ["Batch", "FramePiece", "Piece", "SourceInfo", "TrainingRowsUnavailableError", "check_columns", "located"]


@dataclass(frozen=True, eq=False)
class Batch:
    """Some rows of one piece of a source.

    Attributes
    ----------
    frame
        The rows, with only the columns asked for; the index is each row's position in its piece.
    where
        Where the rows come from, for messages: ``"file 'part-2.parquet' (rows 0-999)"``.
    piece
        Index of the piece in its source (pieces are ordered: sorted file names, partitions).
    """

    frame: pd.DataFrame
    where: str
    piece: int


class Piece(Protocol):
    """One independently readable part of a source (it must pickle: a distributed run ships it)."""

    label: str

    def batches(self, columns: Sequence[str], batch_size: int, index: int, labels: Collection[str] = ()) -> Iterator[Batch]:
        """The piece's rows as batches of at most ``batch_size`` rows with ``columns`` only.

        ``labels`` are grouping columns only compared and counted: a reader may hand them over
        as pandas Categoricals of their dictionary codes (:func:`.arrow.arrow_to_pandas`).
        """
        ...


@dataclass(frozen=True)
class SourceInfo:
    """What a fit records about the source it streamed from (saved with it).

    Examples
    --------
    >>> info = SourceInfo("parquet", "3 Parquet files in 'lake'", 3, 1_000_000)
    >>> SourceInfo.from_json(info.to_json()) == info
    True
    """

    kind: str
    description: str
    n_pieces: int
    batch_size: int

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "description": self.description, "n_pieces": self.n_pieces, "batch_size": self.batch_size}

    @classmethod
    def from_json(cls, value: Any) -> SourceInfo:
        return cls(str(value["kind"]), str(value["description"]), int(value["n_pieces"]), int(value["batch_size"]))


def check_columns(frame_columns: Sequence[object], columns: Sequence[str], where: str) -> None:
    """Refuse a piece that lacks a column the model uses, naming the piece and the column."""
    have = {str(c) for c in frame_columns}
    missing = [c for c in columns if c not in have]
    if missing:
        raise DataError(
            f"{where.capitalize()} has no column {missing[0]!r}, which the model uses"
            f"{f' (nor {missing[1:]})' if len(missing) > 1 else ''}; its columns are {sorted(have)}. Every part of a "
            "source needs the model's columns: fix that part or leave it out."
        )


def located(exc: HierfitError, where: str) -> HierfitError:
    """``exc`` with ``where`` (the batch) in front of its message; its type and fields are kept."""
    if exc.args and isinstance(exc.args[0], str):
        exc.args = (f"In {where}: {exc.args[0]}", *exc.args[1:])
    return exc


def row_range(start: int, stop: int) -> str:
    return f"rows {start}-{stop - 1}" if stop - start > 1 else f"row {start}"


def plain_text(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with text columns of pandas' ``string`` dtype (missing value ``pd.NA``: what
    Dask makes of text) in the default ``str`` dtype, which formulaic reads as categorical
    (it takes ``string`` columns for numbers) and pandas and Arrow give in memory."""
    text = [c for c in frame.columns
            if isinstance(frame[c].dtype, pd.StringDtype) and frame[c].dtype.na_value is pd.NA]
    if not text:
        return frame
    out = frame.copy()
    for c in text:
        out[c] = out[c].astype("str")
    return out


@dataclass(frozen=True, eq=False)
class FramePiece:
    """A pandas frame as one piece (a Dask partition once it is computed, or a frame of rows)."""

    frame: pd.DataFrame
    label: str

    def batches(self, columns: Sequence[str], batch_size: int, index: int, labels: Collection[str] = ()) -> Iterator[Batch]:
        check_columns(self.frame.columns, columns, self.label)
        n = len(self.frame)
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            part = plain_text(self.frame.iloc[start:stop][list(columns)])
            # positions within the piece: a message's "row 17" is findable in the partition
            part.index = pd.RangeIndex(start, stop)
            yield Batch(part, f"{self.label} ({row_range(start, stop)})", index)
