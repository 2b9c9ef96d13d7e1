"""Fit the music model, rank artists with intervals, measure shrinkage and recovery.

The model (``variant="genre"``)::

    track_popularity ~ danceability_z + energy_z + loudness_z + valence_z + tempo_z
                       + duration_ms_z + (1 | playlist_genre/track_artist)

``/`` nests artists in genres: ``(1 | playlist_genre) + (1 | playlist_genre:track_artist)``.
An artist whose tracks sit under two genres is therefore **two groups** (``pop:X`` and
``rock:X``), each pooled toward its own genre; nothing ties the two together. The
``"subgenre"`` variant nests artists in ``playlist_genre/playlist_subgenre`` the same way.

An artist's *total* (``result.group_effects("total")`` at level ``track_artist``) is the
national intercept plus the genre (and subgenre) and artist deviations: the expected
popularity of one of the artist's tracks with average audio features.

Examples
--------
>>> from hierfit.examples.music import synthetic_catalogue
>>> music_formula("subgenre", features=("energy",))
'track_popularity ~ energy_z + (1 | playlist_genre/playlist_subgenre/track_artist)'
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from hierfit.api import fit
from hierfit.design.hierarchy import group_labels
from hierfit.examples.music.catalogue import (
    FEATURES,
    Catalogue,
    catalogue_attrs,
    standardise,
)
from hierfit.exceptions import SpecError
from hierfit.results import FitResult

ARTIST_LEVEL = "track_artist"
#: group-level part of each model variant
VARIANTS: dict[str, str] = {
    "genre": "(1 | playlist_genre/track_artist)",
    "subgenre": "(1 | playlist_genre/playlist_subgenre/track_artist)",
}
#: columns that identify an artist's group in each variant
VARIANT_KEYS: dict[str, tuple[str, ...]] = {
    "genre": ("playlist_genre", "track_artist"),
    "subgenre": ("playlist_genre", "playlist_subgenre", "track_artist"),
}
#: bins of tracks per artist used by the shrinkage and recovery tables
TRACK_BINS: tuple[tuple[int, int, str], ...] = ((1, 1, "1"), (2, 3, "2-3"), (4, 9, "4-9"), (10, 10**9, "10+"))
DEFAULT_ENGINE = "mixed"


def music_formula(variant: str = "genre", features: Sequence[str] = FEATURES) -> str:
    """The example's formula text for a variant (``"genre"`` or ``"subgenre"``).

    Examples
    --------
    >>> music_formula()
    'track_popularity ~ danceability_z + energy_z + loudness_z + valence_z + tempo_z + duration_ms_z + (1 | playlist_genre/track_artist)'
    """
    if variant not in VARIANTS:
        raise SpecError(f"'variant' must be one of: {', '.join(sorted(VARIANTS))}. Got {variant!r}.")
    population = " + ".join(f"{f}_z" for f in features) if features else "1"
    return f"track_popularity ~ {population} + {VARIANTS[variant]}"


def model_data(catalogue: Catalogue, features: Sequence[str] = FEATURES) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The catalogue's tracks with standardised features (``<feature>_z``), and the scaling.

    Examples
    --------
    >>> from hierfit.examples.music import synthetic_catalogue
    >>> data, scaling = model_data(synthetic_catalogue(n_artists=30, seed=1))
    >>> round(float(data["tempo_z"].std()), 6), data.attrs["label"], list(scaling.columns)
    (1.0, 'SYNTHETIC', ['mean', 'sd'])
    """
    data, scaling = standardise(catalogue.data, features)
    data.attrs.update(catalogue_attrs(catalogue))
    return data, scaling


def fit_music(
    data: pd.DataFrame,
    *,
    variant: str = "genre",
    engine: str = DEFAULT_ENGINE,
    features: Sequence[str] = FEATURES,
    quiet: bool = False,
    **options: Any,
) -> FitResult:
    """Fit the example model to prepared data (see :func:`model_data`).

    Parameters
    ----------
    data
        Tracks with ``<feature>_z`` columns.
    variant
        ``"genre"`` (artists in genres) or ``"subgenre"`` (artists in subgenres in genres).
    engine
        Any registered engine; ``"mixed"`` (REML, the lme4 class) by default. ``"pymc"``
        gives posterior intervals.
    quiet
        Silence hierfit's data-check warnings (they stay on ``result.diagnostics``); the
        catalogue has many one-track artists by nature, which the ``single_row_groups``
        check flags.
    **options
        Engine options, e.g. ``draws=500`` for ``pymc``.

    Examples
    --------
    >>> from hierfit.examples.music import synthetic_catalogue
    >>> data, _ = model_data(synthetic_catalogue(n_artists=60, seed=2))
    >>> r = fit_music(data, engine="mixed", quiet=True)
    >>> r.hierarchy.names
    ('playlist_genre', 'track_artist')
    """
    formula = music_formula(variant, features)
    national = "all_tracks"
    if quiet:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fit(formula, data, engine=engine, national=national, **options)
    return fit(formula, data, engine=engine, national=national, **options)


def artist_ranking(result: FitResult, data: pd.DataFrame, level: float = 0.9) -> pd.DataFrame:
    """Every artist (group at level ``track_artist``), ranked by its pooled total.

    Columns: ``rank, playlist_genre[, playlist_subgenre], track_artist, n_tracks, raw_mean,
    estimate, lower, upper, width, std_error, shrinkage`` where ``raw_mean`` is the plain
    mean popularity of the artist's tracks, ``estimate`` the pooled total (popularity at
    average features) with its ``level`` interval, ``width = upper - lower`` and
    ``shrinkage = estimate - raw_mean``. ``attrs`` carry the catalogue's label and the engine.

    Examples
    --------
    >>> from hierfit.examples.music import synthetic_catalogue
    >>> data, _ = model_data(synthetic_catalogue(n_artists=60, seed=2))
    >>> rank = artist_ranking(fit_music(data, engine="mixed", quiet=True), data)
    >>> rank.attrs["label"], int(rank["rank"].iloc[0]), len(rank) == data["track_artist"].nunique()
    ('SYNTHETIC', 1, True)
    """
    lv = result.hierarchy.level(ARTIST_LEVEL)
    columns = lv.factor.columns
    effects = result.group_effects("total", level=level)
    effects = effects[(effects["level"] == ARTIST_LEVEL) & (effects["term"] == "Intercept")]
    labels = group_labels(data, lv.factor)
    frame = data[list(columns)].copy()
    frame["group"] = labels
    frame["track_popularity"] = data["track_popularity"].to_numpy(dtype=float)
    raw = frame.groupby("group", sort=False).agg(
        **{c: (c, "first") for c in columns}, n_tracks=("track_popularity", "size"), raw_mean=("track_popularity", "mean")
    )
    out = effects.set_index("group")[["estimate", "lower", "upper", "std_error"]].join(raw, how="inner")
    out["width"] = out["upper"] - out["lower"]
    out["shrinkage"] = out["estimate"] - out["raw_mean"]
    out = out.sort_values(["estimate", "n_tracks"], ascending=[False, False], kind="mergesort").reset_index(drop=True)
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    ordered = ["rank", *columns, "n_tracks", "raw_mean", "estimate", "lower", "upper", "width", "std_error", "shrinkage"]
    out = out[ordered]
    out.attrs = {**dict(data.attrs), "engine": result.engine, "interval_level": level, "formula": result.spec.text}
    return out


def top_bottom(ranking: pd.DataFrame, k: int = 10, min_tracks: int = 5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``k`` highest and lowest pooled artists among those with at least ``min_tracks``.

    Why filter: a one-track artist's estimate is mostly its genre's mean plus a little of its
    one track, with a wide interval. Pooling already keeps such artists away from the
    extremes, but a "top 10" is a claim about *these* artists; with ``min_tracks`` tracks the
    interval is narrow enough for the order to mean something. Both tables keep ``width`` so
    the reader sees how sure each place is; set ``min_tracks=1`` to rank everyone.

    Examples
    --------
    >>> r = pd.DataFrame({"rank": [1, 2, 3], "track_artist": ["a", "b", "c"], "n_tracks": [9, 1, 6],
    ...                   "estimate": [70.0, 60.0, 20.0]})
    >>> top, bottom = top_bottom(r, k=1, min_tracks=5)
    >>> top["track_artist"].tolist(), bottom["track_artist"].tolist()
    (['a'], ['c'])
    """
    if k < 1 or min_tracks < 1:
        raise SpecError(f"'k' and 'min_tracks' must be at least 1; got k={k!r}, min_tracks={min_tracks!r}.")
    eligible = ranking[ranking["n_tracks"] >= min_tracks]
    top = eligible.head(k).reset_index(drop=True)
    bottom = eligible.tail(k).iloc[::-1].reset_index(drop=True)
    for t in (top, bottom):
        t.attrs = {**dict(ranking.attrs), "min_tracks": min_tracks}
    return top, bottom


def raw_top(ranking: pd.DataFrame, k: int = 10) -> pd.DataFrame:
    """The ``k`` artists with the highest raw mean popularity (what a naive ranking shows)."""
    out = ranking.sort_values(["raw_mean", "n_tracks"], ascending=[False, False], kind="mergesort").head(k)
    out = out.reset_index(drop=True)
    out.attrs = dict(ranking.attrs)
    return out


def track_bin(n_tracks: pd.Series | np.ndarray) -> pd.Series:
    """Label each track count with its bin (``1``, ``2-3``, ``4-9``, ``10+``).

    Examples
    --------
    >>> track_bin([1, 3, 4, 25]).tolist()
    ['1', '2-3', '4-9', '10+']
    """
    n = np.asarray(n_tracks)
    out = np.full(n.shape, "", dtype=object)
    for lo, hi, name in TRACK_BINS:
        out[(n >= lo) & (n <= hi)] = name
    return pd.Series(pd.Categorical(out, categories=[b[2] for b in TRACK_BINS], ordered=True))


def shrinkage_by_tracks(ranking: pd.DataFrame) -> pd.DataFrame:
    """Per track-count bin: artists, mean |pooled - raw| and mean interval width.

    Examples
    --------
    >>> r = pd.DataFrame({"n_tracks": [1, 1, 12], "shrinkage": [-8.0, 6.0, 0.5], "width": [30.0, 28.0, 9.0]})
    >>> shrinkage_by_tracks(r)["mean_abs_shrinkage"].tolist()
    [7.0, 0.5]
    """
    frame = pd.DataFrame({"bin": track_bin(ranking["n_tracks"]), "abs": ranking["shrinkage"].abs().to_numpy(),
                          "width": ranking["width"].to_numpy()})
    out = frame.groupby("bin", observed=True).agg(
        artists=("abs", "size"), mean_abs_shrinkage=("abs", "mean"), mean_interval_width=("width", "mean")
    )
    out = out.reset_index().rename(columns={"bin": "tracks_per_artist"})
    out.attrs = dict(ranking.attrs)
    return out


def feature_adjusted_means(result: FitResult, data: pd.DataFrame, ranking: pd.DataFrame) -> np.ndarray:
    """Per ranked artist, the mean of its tracks' popularity minus the fitted feature effects.

    This is the no-pooling estimate with the same feature adjustment as the model, so
    comparing it with the pooled estimate isolates what partial pooling adds.
    """
    lv = result.hierarchy.level(ARTIST_LEVEL)
    fixed = result.fixed_effects().set_index("term")["estimate"]
    adjusted = data["track_popularity"].to_numpy(dtype=float).copy()
    for term, value in fixed.items():
        if term != "Intercept":
            adjusted -= float(value) * data[term].to_numpy(dtype=float)
    groups = pd.Series(adjusted).groupby(group_labels(data, lv.factor)).mean()
    keys = group_labels(ranking, lv.factor)
    return groups.reindex(keys).to_numpy()


def recovery_table(ranking: pd.DataFrame, truth_artists: pd.DataFrame, adjusted: np.ndarray | None = None) -> pd.DataFrame:
    """RMSE against the true artist totals, raw means vs pooled estimates, by tracks per artist.

    Only for synthetic catalogues (the truth is known). Columns ``tracks_per_artist, artists,
    rmse_raw_mean, [rmse_adjusted_mean,] rmse_pooled, ratio`` (pooled / raw; below 1 means
    pooling helps), with an ``all`` row last.

    Examples
    --------
    >>> rank = pd.DataFrame({"track_artist": ["a", "b"], "playlist_genre": ["x", "x"], "n_tracks": [1, 12],
    ...                      "raw_mean": [80.0, 50.0], "estimate": [60.0, 50.5]})
    >>> truth = pd.DataFrame({"track_artist": ["a", "b"], "playlist_genre": ["x", "x"], "true_total": [55.0, 51.0]})
    >>> recovery_table(rank, truth)["ratio"].round(2).tolist()
    [0.2, 0.5, 0.2]
    """
    keys = [c for c in ("playlist_genre", "track_artist") if c in ranking.columns and c in truth_artists.columns]
    merged = ranking.merge(truth_artists[[*keys, "true_total"]], on=keys, how="inner", validate="one_to_one")
    if len(merged) == 0:
        raise SpecError("No ranked artist matches the truth table; is this ranking from the same synthetic catalogue?")
    errors = {"rmse_raw_mean": merged["raw_mean"] - merged["true_total"]}
    if adjusted is not None:
        adj = pd.Series(adjusted, index=ranking.index)
        merged_adj = ranking.assign(_adj=adj).merge(truth_artists[[*keys, "true_total"]], on=keys, how="inner")
        errors["rmse_adjusted_mean"] = merged_adj["_adj"] - merged_adj["true_total"]
    errors["rmse_pooled"] = merged["estimate"] - merged["true_total"]
    bins = track_bin(merged["n_tracks"])
    rows = []
    for name in [*bins.cat.categories, "all"]:
        mask = np.ones(len(merged), bool) if name == "all" else (bins == name).to_numpy()
        if not mask.any():
            continue
        row: dict[str, Any] = {"tracks_per_artist": name, "artists": int(mask.sum())}
        for col, err in errors.items():
            row[col] = float(np.sqrt(np.mean(np.asarray(err)[mask] ** 2)))
        row["ratio"] = row["rmse_pooled"] / row["rmse_raw_mean"]
        rows.append(row)
    out = pd.DataFrame(rows)
    out.attrs = dict(ranking.attrs)
    return out
