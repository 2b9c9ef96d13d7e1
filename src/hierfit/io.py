"""Reading and writing tables by file extension (CSV or Parquet), with errors that say why.

Writes are atomic (a temporary file in the same folder, renamed into place): an interrupted
command leaves no half-written file. Folders are never created implicitly: a typo in an
output path is an error, not a new directory tree.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd

from hierfit.exceptions import DataError

FORMATS = (".csv", ".parquet")
_SNIFF = 8192


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet file; the extension decides.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "empty.csv"
    >>> _ = p.write_text("")
    >>> read_table(p)
    Traceback (most recent call last):
    ...
    hierfit.exceptions.DataError: Data file '...empty.csv' is empty; write a header row and data rows.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"Data file {str(path)!r} does not exist.")
    if path.is_dir():
        raise DataError(f"Data file {str(path)!r} is a folder; give the path of a .csv or .parquet file.")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise DataError(f"Data file {str(path)!r} must end in one of: {', '.join(FORMATS)}. Got {suffix or 'no extension'!r}.")
    if path.stat().st_size == 0:
        raise DataError(f"Data file {str(path)!r} is empty; write a header row and data rows.")
    if suffix == ".csv":
        return _read_csv(path)
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow's errors for a file that is not Parquet (or truncated)
        raise DataError(f"Data file {str(path)!r} cannot be read as Parquet: {_first_line(exc)}") from None


def _read_csv(path: Path) -> pd.DataFrame:
    with open(path, "rb") as fh:
        head = fh.read(_SNIFF)
    if b"\x00" in head:
        raise DataError(f"Data file {str(path)!r} looks binary (it contains NUL bytes), not like CSV text; export the data as CSV or Parquet.")
    try:
        return pd.read_csv(path)
    except UnicodeDecodeError as exc:
        byte = exc.object[exc.start : exc.start + 1].hex()
        raise DataError(
            f"Data file {str(path)!r} is not UTF-8 text (byte 0x{byte} at position {exc.start}); re-save it as UTF-8, "
            "e.g. iconv -f latin1 -t utf-8 in.csv > out.csv."
        ) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"Data file {str(path)!r} cannot be read as CSV: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def check_output_folder(path: str | Path) -> Path:
    """The folder an output goes into must exist (nothing is created silently)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise DataError(f"The folder of the output {str(path)!r} does not exist ({str(parent)!r}); create it first.")
    return path


def write_table(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a CSV or Parquet file atomically; the extension decides. The folder must exist."""
    path = check_output_folder(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise DataError(f"Output file {str(path)!r} must end in one of: {', '.join(FORMATS)}. Got {suffix or 'no extension'!r}.")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        if suffix == ".csv":
            frame.to_csv(tmp, index=False)
        else:
            frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
