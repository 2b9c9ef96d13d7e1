"""Parquet files as pieces: one file per piece, read with ``pyarrow.dataset`` in record batches.

A source is a file, a folder (read as a dataset, Hive-style ``key=value`` folders giving
columns) or a glob (``"lake/*.parquet"``). Only the columns a pass needs are read, a record
batch at a time: the table is never materialised. Before any pass, the files' own schemas
are compared on the model's columns, so a file that lacks one or stores it with another type
is named (a dataset would otherwise read it with the first file's schema, or fail midway).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hierfit.exceptions import DataError

from .arrow import LabelCategoricals, arrow_to_pandas
from .base import Batch, check_columns, row_range

__all__ = ["ParquetPiece", "check_parquet_schemas", "is_path_list", "parquet_pieces"]

_GLOB = set("*?[")


@dataclass(frozen=True)
class ParquetPiece:
    """One Parquet file; ``partition`` holds the Hive folder keys above it (``market=M1``)."""

    path: str
    label: str
    partition: tuple[tuple[str, Any], ...] = ()

    def batches(self, columns: Sequence[str], batch_size: int, index: int, labels: Collection[str] = ()) -> Iterator[Batch]:
        import pyarrow as pa
        import pyarrow.dataset as ds

        keys = dict(self.partition)
        dataset = ds.dataset(self.path, format="parquet")
        check_columns([*dataset.schema.names, *keys], columns, self.label)
        in_file = [c for c in columns if c not in keys]
        start = 0
        label_categoricals = LabelCategoricals()
        for rb in dataset.to_batches(columns=in_file, batch_size=batch_size):
            if rb.num_rows == 0:
                continue
            table = pa.Table.from_batches([rb])
            for key in (c for c in columns if c in keys):
                table = table.append_column(key, pa.array([keys[key]] * rb.num_rows))
            stop = start + rb.num_rows
            yield Batch(arrow_to_pandas(table.select(list(columns)), start, labels, label_categoricals), f"{self.label} ({row_range(start, stop)})", index)
            start = stop


def is_path_list(data: object) -> bool:
    """Whether ``data`` is a non-empty list or tuple of paths (files or globs of a source)."""
    return isinstance(data, (list, tuple)) and len(data) > 0 and all(isinstance(p, (str, os.PathLike)) for p in data)


def _listed_files(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """The files of a list of Parquet files and globs, sorted, each once."""
    files: set[str] = set()
    for path in paths:
        text = os.fspath(path)
        if os.path.isdir(text):
            raise DataError(f"{text!r} in the list of Parquet files is a folder; a list holds files and globs. Give the folder "
                            "on its own (it is read as one dataset, Hive-style key=value folders included), or its files.")
        found, _ = _files(text)
        files.update(found)
    return sorted(files)


def _files(path: str | Path) -> tuple[list[str], str | None]:
    """The Parquet files of a path, folder or glob, sorted, and the folder for Hive keys."""
    text = os.fspath(path)
    if any(ch in _GLOB for ch in text):
        files = sorted(f for f in glob.glob(text, recursive=True) if os.path.isfile(f))
        if not files:
            raise DataError(f"No files match {text!r}. Check the pattern (e.g. 'lake/*.parquet') and the working directory.")
        return files, None
    if os.path.isdir(text):
        return [], text
    if os.path.isfile(text):
        return [text], None
    raise DataError(f"Data source {text!r} does not exist; give a Parquet file, a folder of them, or a glob.")


def parquet_pieces(path: str | Path | Sequence[str | os.PathLike[str]]) -> tuple[list[ParquetPiece], Any, str]:
    """The pieces of a Parquet source (a file, folder or glob, or a list of files and globs),
    its Arrow schema and a description for messages."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    if isinstance(path, (str, os.PathLike)):
        files, folder = _files(path)
        name = repr(os.fspath(path))
    else:
        files, folder = _listed_files(path), None
        name = f"the {len(files)} listed files"
    try:
        if folder is not None:
            dataset = ds.dataset(folder, format="parquet", partitioning="hive", exclude_invalid_files=True)
        else:
            dataset = ds.dataset(files, format="parquet")
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"Cannot read {name} as Parquet: {str(exc).splitlines()[0]}") from None
    fragments = sorted(dataset.get_fragments(), key=lambda f: f.path)
    if not fragments:
        raise DataError(f"Folder {name} holds no Parquet files.")
    root = folder if folder is not None else os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files])
    pieces = []
    for frag in fragments:
        keys = ds.get_partition_keys(frag.partition_expression) if folder is not None else {}
        name = os.path.relpath(frag.path, root) if folder is not None else os.path.relpath(os.path.abspath(frag.path), root)
        pieces.append(ParquetPiece(frag.path, f"file {name!r}", tuple(sorted(keys.items()))))
    where = f"{len(pieces)} Parquet file{'s' if len(pieces) != 1 else ''} in {root!r}"
    return pieces, dataset.schema, where


def _kind(arrow_type: Any) -> str:
    """A coarse type: files may store an integer column as int32 in one and int64 in another."""
    import pyarrow as pa

    t = arrow_type.value_type if pa.types.is_dictionary(arrow_type) else arrow_type
    for name, test in (("integer", pa.types.is_integer), ("floating-point", pa.types.is_floating),
                       ("boolean", pa.types.is_boolean), ("string", lambda x: pa.types.is_string(x) or pa.types.is_large_string(x))):
        if test(t):
            return name
    return str(t)


def check_parquet_schemas(pieces: Sequence[ParquetPiece], columns: Sequence[str]) -> None:
    """Refuse files that lack one of ``columns`` or store it with a different kind of type.

    Reads each file's footer only (its schema), not its rows.
    """
    import pyarrow.parquet as pq

    first: dict[str, tuple[str, str]] = {}
    for piece in pieces:
        keys = dict(piece.partition)
        schema = pq.read_schema(piece.path)
        have = {name: _kind(schema.field(name).type) for name in schema.names}
        check_columns([*have, *keys], columns, piece.label)
        for col in columns:
            if col in keys:
                continue
            kind = have[col]
            seen = first.setdefault(col, (kind, piece.label))
            if seen[0] != kind:
                raise DataError(
                    f"Column {col!r} is {kind} in {piece.label} but {seen[0]} in {seen[1]}: the Parquet files of one source "
                    "must store the model's columns with the same type. Rewrite that file with the others' schema "
                    "(or cast the column), or leave it out of the source."
                )
