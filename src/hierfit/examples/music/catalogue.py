"""The music catalogue: the public Spotify songs table layout, loading and preparing it.

The public table (often distributed as ``spotify_songs.csv``) has one row per track *per
playlist*: the same ``track_id`` appears once for every playlist that lists it, possibly under
another ``playlist_genre``. :func:`load_spotify` keeps the first occurrence of every track in
file order (a deterministic, documented rule) and reports how many rows it dropped.

Examples
--------
>>> import pandas as pd
>>> raw = pd.DataFrame({
...     "track_id": ["t1", "t1", "t2"], "track_name": ["a", "a", "b"],
...     "track_artist": ["X", "X", "Y"], "track_popularity": [50, 50, 20],
...     "playlist_genre": ["pop", "rock", "rock"], "playlist_subgenre": ["electropop", "hard rock", "hard rock"],
...     "danceability": [0.7, 0.7, 0.4], "energy": [0.8, 0.8, 0.9], "loudness": [-5.0, -5.0, -4.0],
...     "valence": [0.5, 0.5, 0.3], "tempo": [120.0, 120.0, 140.0], "duration_ms": [200000, 200000, 180000]})
>>> cat = clean_catalogue(raw)
>>> len(cat.data), cat.duplicates_dropped, cat.data["playlist_genre"].tolist()
(2, 1, ['pop', 'rock'])
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from hierfit.exceptions import DataError
from hierfit.io import read_table

logger = logging.getLogger(__name__)

#: the audio features the example model uses, in the public table's units
FEATURES: tuple[str, ...] = ("danceability", "energy", "loudness", "valence", "tempo", "duration_ms")
#: identifier, grouping and outcome columns the example needs
KEY_COLUMNS: tuple[str, ...] = ("track_id", "track_artist", "track_popularity", "playlist_genre", "playlist_subgenre")
REQUIRED_COLUMNS: tuple[str, ...] = KEY_COLUMNS + FEATURES
#: text columns read as text whatever they contain (an artist called "NA" stays "NA")
TEXT_COLUMNS: tuple[str, ...] = ("track_id", "track_name", "track_artist", "playlist_genre", "playlist_subgenre")
SYNTHETIC_LABEL = "SYNTHETIC"


@dataclass(eq=False)
class Catalogue:
    """One de-duplicated track table and what was done to get it.

    Attributes
    ----------
    data
        One row per track (unique ``track_id``), in the public layout, plus nothing else.
    source
        Where it came from: a file path, or a description of the synthetic generator.
    synthetic
        True for generated data; every output made from it says SYNTHETIC.
    rows_read
        Rows before cleaning.
    duplicates_dropped
        Rows dropped because their ``track_id`` appeared earlier in the file.
    missing_dropped
        Rows dropped because a required column was empty (see ``missing_by_column``).
    missing_by_column
        Empty cells per required column among the rows read (after de-duplication).
    truth
        For synthetic catalogues: the true artist totals and the generating parameters
        (:class:`hierfit.examples.music.synthetic.CatalogueTruth`); ``None`` for real data.
    """

    data: pd.DataFrame
    source: str
    synthetic: bool = False
    rows_read: int = 0
    duplicates_dropped: int = 0
    missing_dropped: int = 0
    missing_by_column: dict[str, int] = field(default_factory=dict)
    truth: object | None = None

    @property
    def label(self) -> str:
        """``"SYNTHETIC"`` or ``"real data"``: prefix of every title and heading."""
        return SYNTHETIC_LABEL if self.synthetic else "real data"

    def describe(self) -> str:
        """A few lines: source, rows, what was dropped and why, the tree's size."""
        d = self.data
        per_artist = d.groupby(["playlist_genre", "track_artist"], sort=False).size()
        multi_genre = int((d.groupby("track_artist")["playlist_genre"].nunique() > 1).sum())
        lines = [
            f"[{self.label}] catalogue from {self.source}",
            f"  rows read {self.rows_read}; duplicate track_id rows dropped {self.duplicates_dropped} "
            f"(first occurrence kept); rows with empty required cells dropped {self.missing_dropped}",
            f"  {len(d)} tracks, {d['playlist_genre'].nunique()} genres, "
            f"{d.groupby(['playlist_genre', 'playlist_subgenre']).ngroups} subgenres, "
            f"{d['track_artist'].nunique()} artists ({per_artist.size} genre x artist groups; "
            f"{multi_genre} artists appear under more than one genre)",
            f"  tracks per artist-in-genre: median {int(per_artist.median())}, max {int(per_artist.max())}; "
            f"{float((per_artist <= 3).mean()):.0%} have 1-3 tracks",
        ]
        if any(self.missing_by_column.values()):
            detail = ", ".join(f"{c} ({n})" for c, n in sorted(self.missing_by_column.items()) if n)
            lines.insert(2, f"  empty cells: {detail}")
        return "\n".join(lines)


def check_columns(frame: pd.DataFrame, required: Sequence[str] = REQUIRED_COLUMNS, *, where: str = "the table") -> None:
    """Raise a :class:`DataError` naming every missing column and listing what is required."""
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(
            f"{where} lacks the column(s) {', '.join(repr(c) for c in missing)} of the Spotify songs layout. "
            f"Required: {', '.join(sorted(required))}. Columns found: {', '.join(sorted(map(str, frame.columns)))}. "
            "Rename your columns to these names (other columns are kept but not used)."
        )


def clean_catalogue(
    raw: pd.DataFrame,
    *,
    source: str = "a data frame",
    na: Literal["drop", "error"] = "drop",
    synthetic: bool = False,
) -> Catalogue:
    """De-duplicate tracks and handle empty cells of a table in the public layout.

    Parameters
    ----------
    raw
        One row per track per playlist.
    source
        Where the table came from (for messages).
    na
        ``"drop"``: drop rows with an empty required cell and report the count per column;
        ``"error"``: raise, naming the columns and counts.
    synthetic
        Mark the catalogue as synthetic.

    Returns
    -------
    Catalogue
        Rows keep file order; the index is reset.

    Notes
    -----
    De-duplication keeps the **first** row of each ``track_id`` in file order, so a track listed
    in a pop and then a rock playlist counts as pop. It runs before the empty-cell check, so a
    track whose first row is incomplete is dropped rather than replaced by a later copy.

    Examples
    --------
    See the module docstring.
    """
    check_columns(raw, where=f"The table from {source}")
    if na not in ("drop", "error"):
        raise DataError(f"'na' must be 'drop' or 'error'; got {na!r}.")
    data = raw.reset_index(drop=True)
    rows_read = len(data)
    ids = data["track_id"]
    no_id = ids.isna() | (ids.astype(str).str.strip() == "")
    if no_id.any():
        raise DataError(
            f"{int(no_id.sum())} of {rows_read} rows in {source} have no track_id (e.g. row {int(np.flatnonzero(no_id)[0])}); "
            "tracks cannot be de-duplicated without it. Drop those rows or give them identifiers."
        )
    dup = ids.duplicated(keep="first")
    data = data[~dup].reset_index(drop=True)
    for col in ("track_popularity", *FEATURES):
        data[col] = _numeric(data[col], col, source)
    empty = {c: int(_is_empty(data[c]).sum()) for c in REQUIRED_COLUMNS}
    bad = np.zeros(len(data), dtype=bool)
    for c in REQUIRED_COLUMNS:
        bad |= _is_empty(data[c]).to_numpy()
    if bad.any() and na == "error":
        detail = ", ".join(f"{c} ({n})" for c, n in sorted(empty.items()) if n)
        raise DataError(
            f"{int(bad.sum())} of {len(data)} tracks in {source} have empty required cells: {detail}. "
            "Fill them, or load with na='drop' to drop those tracks (the count is reported)."
        )
    data = data[~bad].reset_index(drop=True)
    if len(data) == 0:
        raise DataError(f"No complete tracks are left in {source} after dropping empty cells ({empty}).")
    out = Catalogue(
        data=data,
        source=source,
        synthetic=synthetic,
        rows_read=rows_read,
        duplicates_dropped=int(dup.sum()),
        missing_dropped=int(bad.sum()),
        missing_by_column=empty,
    )
    data.attrs.update(catalogue_attrs(out))
    logger.info(
        "%s: %d rows read, %d duplicate track_id rows dropped, %d incomplete tracks dropped",
        source, rows_read, out.duplicates_dropped, out.missing_dropped,
    )
    return out


def load_spotify(path: str | Path, *, na: Literal["drop", "error"] = "drop") -> Catalogue:
    """Load a track table in the public Spotify songs layout (CSV or Parquet).

    Parameters
    ----------
    path
        A ``.csv`` or ``.parquet`` file with at least the columns in :data:`REQUIRED_COLUMNS`.
    na
        What to do with tracks that have an empty required cell: ``"drop"`` (default; the
        count per column is reported on the result) or ``"error"``.

    Returns
    -------
    Catalogue
        ``.data`` has one row per ``track_id`` (first occurrence kept);
        ``.duplicates_dropped`` and ``.missing_dropped`` say what was removed.

    Notes
    -----
    In CSV files only an empty cell counts as missing: text such as ``NA`` or ``null`` in a
    text column is kept as text (artists have such names), and numeric columns must parse as
    numbers or the load fails naming the column.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from hierfit.examples.music import synthetic_catalogue
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "songs.csv"
    >>> synthetic_catalogue(n_artists=30, seed=1).raw.to_csv(p, index=False)
    >>> cat = load_spotify(p)
    >>> cat.duplicates_dropped > 0, cat.data["track_id"].is_unique
    (True, True)
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"Data file {str(path)!r} does not exist. Download the Spotify songs table and pass its path.")
    if path.suffix.lower() == ".csv":
        header = pd.read_csv(path, nrows=0).columns
        dtypes = {c: "string" for c in TEXT_COLUMNS if c in header}
        raw = pd.read_csv(path, dtype=dtypes, keep_default_na=False, na_values={c: [""] for c in header})
    else:
        raw = read_table(path)
    return clean_catalogue(raw, source=str(path), na=na)


def standardise(data: pd.DataFrame, features: Sequence[str] = FEATURES, suffix: str = "_z") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Add ``<feature>_z`` columns (mean 0, SD 1 in these data) and return the scaling table.

    The population coefficients are then "popularity points per SD of the feature", comparable
    across features, and the intercept is the popularity of a track with average features --
    so an artist's total is their popularity at average audio features.

    Examples
    --------
    >>> import pandas as pd
    >>> out, scale = standardise(pd.DataFrame({"tempo": [100.0, 120.0, 140.0]}), ["tempo"])
    >>> out["tempo_z"].round(3).tolist(), float(scale.loc["tempo", "sd"])
    ([-1.0, 0.0, 1.0], 20.0)
    """
    out = data.copy()
    rows = {}
    for f in features:
        x = out[f].to_numpy(dtype=float)
        mean, sd = float(x.mean()), float(x.std(ddof=1))
        if not np.isfinite(sd) or sd == 0:
            raise DataError(f"Feature {f!r} is constant ({mean:g}) in these data; drop it from the model's features.")
        out[f + suffix] = (x - mean) / sd
        rows[f] = {"mean": mean, "sd": sd}
    out.attrs = dict(data.attrs)
    return out, pd.DataFrame.from_dict(rows, orient="index")


def catalogue_attrs(cat: Catalogue) -> dict[str, object]:
    """The labels every frame made from a catalogue carries in ``attrs``."""
    return {
        "label": cat.label,
        "synthetic": cat.synthetic,
        "source": cat.source,
        "duplicates_dropped": cat.duplicates_dropped,
        "missing_dropped": cat.missing_dropped,
    }


def _is_empty(col: pd.Series) -> pd.Series:
    empty = col.isna()
    if not pd.api.types.is_numeric_dtype(col):
        empty |= col.astype("string").str.strip().fillna("") == ""
    return empty


def _numeric(col: pd.Series, name: str, source: str) -> pd.Series:
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        return col.astype(float)
    converted = pd.to_numeric(col.astype("string").str.strip().replace("", pd.NA), errors="coerce")
    bad = converted.isna() & ~_is_empty(col)
    if bad.any():
        example = col[bad].iloc[0]
        raise DataError(
            f"Column {name!r} in {source} must be numeric; {int(bad.sum())} cells are not numbers "
            f"(e.g. {example!r}). Fix or blank them."
        )
    return converted.astype(float)
