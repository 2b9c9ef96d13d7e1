"""``predict`` and ``decompose`` over a streaming source, batch by batch or partition by partition.

Any fit predicts new rows from its encoding alone, so rows that do not fit in memory are
predicted a piece at a time with the in-memory :meth:`FitResult.predict` /
:meth:`FitResult.decompose` on each batch:

* a Dask DataFrame gives a Dask DataFrame (``map_partitions``: lazy, computed where the
  partitions live), or with ``out=`` is written to that Parquet folder;
* Parquet files need ``out=``: each input file gives one output file of the same name whose
  row ``i`` is the prediction of the input file's row ``i``, written a record batch at a time;
* an Arrow table gives a pandas frame (its rows are in memory already).

Unseen groups fall back to their deepest known ancestor as in memory (see ``level_used``);
for Parquet and Arrow one warning sums them up at the end, instead of one per batch.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from hierfit.design.build import _used_columns
from hierfit.design.sources import Batch, open_source
from hierfit.design.sources.base import located, plain_text
from hierfit.design.sources.runner import current_observer
from hierfit.design.streamed import _probe_frame, stream_labels
from hierfit.exceptions import HierfitError, SpecError, UnseenGroupsWarning

if TYPE_CHECKING:
    from hierfit.results.fit_result import FitResult

__all__ = ["apply_to_source"]


def _apply(result: FitResult, method: str, options: dict[str, Any], frame: pd.DataFrame) -> pd.DataFrame:
    """One frame's predictions or parts, its unseen-group warnings left to the caller."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnseenGroupsWarning)
        out: pd.DataFrame = getattr(result, method)(frame, **options)
    return out


def _read_columns(result: FitResult, schema: pd.DataFrame) -> list[str]:
    spec = result.spec
    grouping = [c for f in spec.formula.factors for c in f.columns]
    return list(dict.fromkeys([*_used_columns(spec, _probe_frame(schema), include_response=False), *grouping]))


def apply_to_source(result: FitResult, data: Any, method: str, *, out: str | os.PathLike[str] | None = None,
                    batch_size: int | None = None, **options: Any) -> Any:
    """``result.<method>(data, **options)`` for a streaming source (see the module docstring)."""
    with open_source(data, batch_size=batch_size) as source:
        columns = _read_columns(result, source.schema)
        source.check_columns(columns)
        task = functools.partial(_apply, result, method, dict(options))
        if source.kind == "dask":
            rows = data[columns]
            # the result's columns and dtypes, from one row of the first partition (only it is computed)
            meta = task(plain_text(rows.head(1, npartitions=1))).iloc[:0]
            parts = rows.map_partitions(functools.partial(_on_partition, task), meta=meta)
            if out is None:
                return parts
            parts.to_parquet(os.fspath(out), write_index=False)
            return Path(out)
        if source.kind == "parquet":
            if out is None:
                raise SpecError(f"{method}() of Parquet files writes Parquet files: give out='a/new/folder' (or pass a Dask "
                                "DataFrame, e.g. dask.dataframe.read_parquet(...), for a lazy result).")
            return _write_parquet(result, source, columns, task, Path(out))
        labels = stream_labels(result.spec, source.schema, include_response=False)
        frames = [_batch(task, batch) for piece in source.pieces
                  for batch in piece.batches(columns, source.batch_size, 0, labels)]
        _warn_fallbacks(result, Counter(lv for f in frames for lv in f.get("level_used", ())))
        return pd.concat(frames)


def _on_partition(task: functools.partial[pd.DataFrame], frame: pd.DataFrame) -> pd.DataFrame:
    return task(plain_text(frame))


def _batch(task: functools.partial[pd.DataFrame], batch: Batch) -> pd.DataFrame:
    try:
        return task(batch.frame)
    except HierfitError as exc:
        raise located(exc, batch.where) from None


def _write_parquet(result: FitResult, source: Any, columns: list[str], task: functools.partial[pd.DataFrame],
                   folder: Path) -> Path:
    if folder.exists() and any(folder.iterdir()):
        raise SpecError(f"out={str(folder)!r} is not empty; give a new or empty folder for the output files.")
    folder.mkdir(parents=True, exist_ok=True)
    names: Counter[str] = Counter()
    levels: Counter[str] = Counter()
    observer = current_observer()
    observer.start("predict", len(source.pieces))
    labels = stream_labels(result.spec, source.schema, include_response=False)
    try:
        for i, piece in enumerate(source.pieces):
            _write_piece(task, piece, i, (source.batch_size, labels), columns, folder, names, levels, observer)
            observer.advance(pieces=1)
    finally:
        observer.finish()
    _warn_fallbacks(result, levels)
    return folder


def _write_piece(task: functools.partial[pd.DataFrame], piece: Any, i: int, reading: tuple[int, tuple[str, ...]],
                 columns: list[str], folder: Path, names: Counter[str], levels: Counter[str], observer: Any) -> None:
    """One input file's predictions as one output file, a record batch at a time (``reading``:
    the batch size and the label columns)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = os.path.basename(piece.path)
    names[name] += 1
    target = folder / (name if names[name] == 1 else f"{names[name]}-{name}")  # Hive folders may repeat names
    writer = None
    try:
        for batch in piece.batches(columns, reading[0], i, reading[1]):
            frame = _batch(task, batch)
            levels.update(frame.get("level_used", ()))
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(target, table.schema)
            writer.write_table(table)
            observer.advance(batches=1)
    finally:
        if writer is not None:
            writer.close()


def _warn_fallbacks(result: FitResult, levels: Counter[str]) -> None:
    """One warning for all the rows whose deepest known level is above the tree's leaves."""
    h = result.hierarchy
    leaves = {lv.name for lv in h.levels if not h.children(lv.name)}
    fell_back = {lv: n for lv, n in levels.items() if not set(str(lv).split("+")) <= leaves}
    if fell_back:
        detail = ", ".join(f"{n} rows at {lv!r}" for lv, n in sorted(fell_back.items()))
        warnings.warn(f"Groups not seen in fitting: their rows use the deepest known ancestor's effects ({detail}; see the "
                      "'level_used' column).", UnseenGroupsWarning, stacklevel=4)
