"""A :class:`Source` from what a user hands :func:`hierfit.fit`: a ``pyarrow.Table``, a
Parquet path, folder or glob, or a Dask DataFrame; and the Dask cluster behind ``workers=N``.

:func:`open_source` is a context manager: a ``LocalCluster`` it starts for ``workers=N`` is
closed when the ``with`` block ends, whatever happens inside. Where the folds run:

* a Dask DataFrame: one task per partition, on the active ``dask.distributed`` client if
  there is one (else on the ``LocalCluster`` of ``workers=N``, else Dask's default scheduler);
* Parquet files: one task per file on the active ``dask.distributed`` client if there is one
  (``hierfit fit --scheduler ADDRESS`` makes one) or on the ``LocalCluster`` of ``workers=N``;
  else in this process, file after file;
* an Arrow table: in this process (it is in memory already).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from hierfit.exceptions import DataError, EngineError, SpecError

from .arrow import ArrowPiece, empty_frame, is_arrow_table
from .base import Batch, SourceInfo, plain_text
from .parquet import check_parquet_schemas, is_path_list, parquet_pieces
from .runner import DaskRunner, LocalRunner, Runner, active_client

__all__ = ["DEFAULT_BATCH_ROWS", "Source", "dask_client", "is_dask_frame", "is_source", "open_source"]

S = TypeVar("S")

#: rows per batch when ``batch_size`` is not given: large enough that per-batch overhead
#: (building the model matrix, one summary of every cell, merging it) is small, small enough
#: that a batch's arrays stay a few hundred MB at most (a Parquet batch is also never more
#: than one row group). Measured on the scale benchmark's 100M rows (row groups of 2^20):
#: the design pass 10.5 s in batches of 2^20 rows, 16.0 s in batches of 2^19.
DEFAULT_BATCH_ROWS = 1 << 20

DASK_MISSING = "Streaming from Dask (a Dask DataFrame, or workers=N) needs an optional dependency: pip install 'hierfit[dask]'."


@dataclass(frozen=True, eq=False)
class Source:
    """Rows that need not fit in memory, read as a fold over their batches.

    Attributes
    ----------
    kind
        ``"arrow"``, ``"parquet"`` or ``"dask"``.
    description
        For messages and summaries: ``"3 Parquet files in 'lake'"``.
    pieces
        The independently readable parts (files, partitions, the table).
    schema
        An empty pandas frame with the columns and dtypes every batch has.
    batch_size
        Rows per batch at most.
    runner
        Where the folds run (:mod:`.runner`).
    """

    kind: str
    description: str
    pieces: tuple[Any, ...]
    schema: pd.DataFrame
    batch_size: int
    runner: Runner

    @property
    def columns(self) -> list[str]:
        return [str(c) for c in self.schema.columns]

    @property
    def info(self) -> SourceInfo:
        return SourceInfo(self.kind, self.description, len(self.pieces), self.batch_size)

    def check_columns(self, columns: Sequence[str]) -> None:
        """Refuse, before any pass, a source whose parts lack or disagree on ``columns``.

        Parquet files are compared by their footers; a Dask partition or an Arrow table is
        checked as it is read (its schema is one for all of it, or known only on its worker).
        """
        missing = [c for c in columns if c not in self.columns]
        if missing:
            raise DataError(
                f"Column {missing[0]!r} is not in the data source ({self.description}); its columns are "
                f"{sorted(self.columns)}. Fix the formula or add the column."
            )
        if self.kind == "parquet":
            check_parquet_schemas(self.pieces, columns)

    def fold(self, summarise: Callable[[Batch], S], merge: Callable[[list[S]], S], columns: Sequence[str], *,
             what: str = "pass") -> S:
        """``merge`` of ``summarise`` over every batch (only ``columns`` are read); ``what`` names
        the pass for progress displays (:func:`~.runner.observe_folds`)."""
        result = self.runner.fold(self.pieces, summarise, merge, list(columns), self.batch_size, what)
        if result is None:
            raise DataError(f"The data source ({self.description}) has no rows.")
        return result


def is_dask_frame(data: object) -> bool:
    """Whether ``data`` is a Dask DataFrame (without importing Dask when it is not loaded)."""
    dd = sys.modules.get("dask.dataframe")
    return dd is not None and isinstance(data, dd.DataFrame)


def is_source(data: object) -> bool:
    """Whether :func:`hierfit.fit` streams ``data`` (anything but a pandas frame it can read)."""
    return is_arrow_table(data) or is_dask_frame(data) or isinstance(data, (str, os.PathLike)) or is_path_list(data)


@contextlib.contextmanager
def _cluster(workers: int | None) -> Iterator[None]:
    """A ``LocalCluster`` of ``workers`` processes (one thread each) and its client, for the block."""
    if workers is None:
        yield
        return
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise SpecError(f"'workers' must be a positive number of worker processes; got {workers!r}.")
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise EngineError(DASK_MISSING) from None
    client = active_client()
    if client is not None:
        raise SpecError(
            f"workers={workers} starts a LocalCluster, but a Dask client is already active ({client.scheduler.address}). "
            "Drop workers= to fit on that client."
        )
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster):
        yield


@contextlib.contextmanager
def dask_client(*, workers: int | None = None, scheduler: str | None = None) -> Iterator[None]:
    """For the block: a client of the Dask scheduler at ``scheduler`` (closed after; the cluster
    stays up), or a ``LocalCluster`` of ``workers`` processes, or nothing when neither is given.

    Every fold inside the block runs on that client (:func:`open_source` finds it).
    """
    if workers is not None and scheduler is not None:
        raise SpecError(f"Give workers (a LocalCluster started for the fit) or a scheduler address ({scheduler!r}), not both.")
    if scheduler is None:
        with _cluster(workers):
            yield
        return
    try:
        from distributed import Client
    except ImportError:
        raise EngineError(DASK_MISSING) from None
    try:
        client = Client(scheduler, timeout="10s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise EngineError(f"Cannot connect to the Dask scheduler at {scheduler!r} ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}). Check the address (e.g. tcp://10.0.0.5:8786) "
                          "and that the scheduler is running.") from None
    with client:
        yield


@contextlib.contextmanager
def open_source(data: Any, *, batch_size: int | None = None, workers: int | None = None) -> Iterator[Source]:
    """The :class:`Source` of ``data``, with the cluster ``workers`` asks for while it is open.

    Examples
    --------
    >>> import pyarrow as pa
    >>> table = pa.table({"y": [1.0, 2.0, 3.0], "g": ["a", "b", "a"]})
    >>> with open_source(table, batch_size=2) as source:
    ...     source.fold(lambda batch: len(batch.frame), sum, ["y"])
    3
    """
    if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1):
        raise SpecError(f"'batch_size' must be a positive number of rows; got {batch_size!r}.")
    size = batch_size or DEFAULT_BATCH_ROWS
    if is_arrow_table(data):
        if workers is not None:
            raise SpecError("workers= distributes Parquet files and Dask DataFrames; an Arrow table is read in this process.")
        yield Source("arrow", f"an Arrow table of {data.num_rows} rows", (ArrowPiece(data),), empty_frame(data.schema), size,
                     LocalRunner())
        return
    if is_dask_frame(data):
        with _cluster(workers):
            pieces = tuple(data.to_delayed())
            yield Source("dask", f"a Dask DataFrame of {len(pieces)} partitions", pieces, plain_text(data._meta.iloc[:0]), size,
                         DaskRunner())
        return
    listed = is_path_list(data)
    if isinstance(data, (str, os.PathLike)) or listed:
        paths = [os.fspath(p) for p in data] if listed else [os.fspath(data)]
        csv = [p for p in paths if Path(p).suffix.lower() == ".csv"]
        if csv:
            raise DataError(f"{csv[0]!r} is CSV; streaming reads Parquet files. Convert it, or read it with pandas.read_csv.")
        pieces_, schema, where = parquet_pieces(paths if listed else paths[0])
        with _cluster(workers):
            runner: Runner = DaskRunner() if workers is not None or active_client() is not None else LocalRunner()
            yield Source("parquet", where, tuple(pieces_), empty_frame(schema), size, runner)
        return
    raise DataError(
        f"Data must be a pandas DataFrame, a pyarrow.Table, a Parquet path (file, folder or glob, or a list of files and "
        f"globs) or a Dask DataFrame; "
        f"got {type(data).__name__}."
    )
