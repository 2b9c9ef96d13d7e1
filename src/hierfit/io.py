"""Reading and writing tables by file extension (CSV or Parquet)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from hierfit.exceptions import DataError

FORMATS = (".csv", ".parquet")


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet file; the extension decides."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"Data file {str(path)!r} does not exist.")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return pd.read_csv(path)
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    raise DataError(f"Data file {str(path)!r} must end in one of: {', '.join(FORMATS)}. Got {suffix or 'no extension'!r}.")


def write_table(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a CSV or Parquet file; the extension decides. Creates the parent folder."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise DataError(f"Output file {str(path)!r} must end in one of: {', '.join(FORMATS)}. Got {suffix or 'no extension'!r}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path
