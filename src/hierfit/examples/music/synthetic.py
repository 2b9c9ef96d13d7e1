"""A synthetic music catalogue in the public Spotify songs layout, with known truth.

No real catalogue can be downloaded here, so this generator stands in for one -- and every
catalogue it returns is marked SYNTHETIC (``Catalogue.synthetic``, ``data.attrs["label"]``,
artist names ``"SYN Artist 0042"``, ``source``). The generating process:

* 6 genres × 4 subgenres (the public table's names); each artist belongs to one subgenre;
* tracks per artist heavy-tailed: a Zipf(1.8) draw truncated at ``max_tracks`` -- about half the
  artists have one track, three quarters have at most three, a few have dozens;
* audio features in plausible ranges, shifted by genre: danceability, energy, valence in
  [0, 1] (beta); loudness in dB, around -6.5 and within [-30, 0] (negative gamma); tempo
  60-200 BPM; duration log-normal around 3.5 minutes;
* popularity (one track, features standardised in the catalogue)::

      track_popularity = mu + genre + subgenre + artist + sum_k beta_k * z_k + noise

  with genre ~ N(0, 6^2), subgenre ~ N(0, 3^2), artist ~ N(0, 12^2), noise ~ N(0, 12^2),
  then rounded to an integer and clipped to [0, 100] like the real score. With mu = 45 the
  clip touches about 1% of tracks (reported as ``truth.clipped_share``); the model ignores it.

The true *artist total* -- the popularity of the artist's track with average audio features,
``mu + genre + subgenre + artist`` -- is what ``group_effects("total")`` estimates at level
``track_artist``; it is in ``truth.artists``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from hierfit.examples.music.catalogue import (
    FEATURES,
    SYNTHETIC_LABEL,
    Catalogue,
    clean_catalogue,
)

#: the public table's genres and subgenres
GENRES: dict[str, tuple[str, ...]] = {
    "edm": ("big room", "electro house", "pop edm", "progressive electro house"),
    "latin": ("latin hip hop", "latin pop", "reggaeton", "tropical"),
    "pop": ("dance pop", "electropop", "indie poptimism", "post-teen pop"),
    "r&b": ("hip pop", "neo soul", "new jack swing", "urban contemporary"),
    "rap": ("gangster rap", "hip hop", "southern hip hop", "trap"),
    "rock": ("album rock", "classic rock", "hard rock", "permanent wave"),
}
#: genre shifts of the feature means (danceability, energy, valence; loudness in dB)
GENRE_STYLE: dict[str, tuple[float, float, float, float]] = {
    "edm": (0.05, 0.12, -0.05, 1.0),
    "latin": (0.08, 0.02, 0.12, 0.0),
    "pop": (0.03, 0.0, 0.0, 0.3),
    "r&b": (0.02, -0.12, -0.02, -1.2),
    "rap": (0.10, -0.04, -0.03, -0.3),
    "rock": (-0.13, 0.05, 0.03, -0.8),
}
#: popularity points per SD of each feature
FEATURE_EFFECTS: dict[str, float] = {
    "danceability": 3.0,
    "energy": -4.0,
    "loudness": 4.0,
    "valence": 1.0,
    "tempo": 0.5,
    "duration_ms": -2.5,
}


@dataclass(frozen=True, eq=False)
class CatalogueTruth:
    """The parameters a synthetic catalogue was generated from.

    Attributes
    ----------
    mu
        Popularity of a track with average features in an average genre, subgenre and artist.
    feature_effects
        Points per SD of each feature (``<feature>_z`` in the model).
    genres, subgenres
        Tables of the true genre / subgenre deviations.
    artists
        One row per artist: ``playlist_genre, playlist_subgenre, track_artist, n_tracks,
        artist_effect`` (deviation from its subgenre) and ``true_total`` (mu + genre +
        subgenre + artist: the artist's popularity at average features).
    sd
        The SDs used: ``genre, subgenre, artist, noise``.
    clipped_share
        Share of tracks whose popularity was clipped to 0 or 100.
    """

    mu: float
    feature_effects: dict[str, float]
    genres: pd.DataFrame
    subgenres: pd.DataFrame
    artists: pd.DataFrame
    sd: dict[str, float]
    clipped_share: float


@dataclass(eq=False)
class SyntheticCatalogue(Catalogue):
    """A :class:`Catalogue` with the raw table (duplicates included) and the truth."""

    raw: pd.DataFrame | None = None


def synthetic_catalogue(
    n_artists: int = 600,
    seed: int = 0,
    *,
    mu: float = 45.0,
    genre_sd: float = 6.0,
    subgenre_sd: float = 3.0,
    artist_sd: float = 12.0,
    noise_sd: float = 12.0,
    zipf_a: float = 1.8,
    max_tracks: int = 60,
    duplicate_share: float = 0.08,
) -> SyntheticCatalogue:
    """Generate a SYNTHETIC catalogue in the public layout, with the true artist effects.

    Parameters
    ----------
    n_artists
        Artists (each in one genre and subgenre, drawn uniformly).
    seed
        Seeds everything: the same seed gives the same catalogue.
    mu, genre_sd, subgenre_sd, artist_sd, noise_sd
        The popularity model (see the module docstring).
    zipf_a, max_tracks
        Tracks per artist ~ Zipf(zipf_a) truncated to at most ``max_tracks``.
    duplicate_share
        Share of tracks listed again in a later playlist of another genre, as in the public
        table; :func:`clean_catalogue` drops these rows again (first occurrence kept).

    Returns
    -------
    SyntheticCatalogue
        ``.raw`` the table with duplicates, ``.data`` the de-duplicated tracks, ``.truth`` a
        :class:`CatalogueTruth`; ``synthetic`` is True.

    Examples
    --------
    >>> cat = synthetic_catalogue(n_artists=50, seed=3)
    >>> cat.label, cat.data.attrs["label"], cat.truth.artists["track_artist"].iloc[0]
    ('SYNTHETIC', 'SYNTHETIC', 'SYN Artist 0001')
    >>> bool(cat.data["track_popularity"].between(0, 100).all())
    True
    """
    if n_artists < 1:
        raise ValueError(f"n_artists must be at least 1; got {n_artists!r}.")
    rng = np.random.default_rng(seed)
    genres = sorted(GENRES)
    genre_eff = dict(zip(genres, rng.normal(0, genre_sd, len(genres))))
    sub_rows = [(g, s) for g in genres for s in GENRES[g]]
    sub_eff = dict(zip(sub_rows, rng.normal(0, subgenre_sd, len(sub_rows))))

    art_sub = rng.integers(len(sub_rows), size=n_artists)
    n_tracks = _truncated_zipf(rng, zipf_a, max_tracks, n_artists)
    art_eff = rng.normal(0, artist_sd, n_artists)
    names = np.array([f"SYN Artist {i + 1:04d}" for i in range(n_artists)], dtype=object)
    art_genre = np.array([sub_rows[i][0] for i in art_sub], dtype=object)
    art_subgenre = np.array([sub_rows[i][1] for i in art_sub], dtype=object)

    artist_of = np.repeat(np.arange(n_artists), n_tracks)
    n = artist_of.size
    tracks = pd.DataFrame(
        {
            "track_id": [f"syn{seed}_{i:06d}" for i in range(n)],
            "track_name": [f"SYN Track {i + 1}" for i in range(n)],
            "track_artist": names[artist_of],
            "playlist_genre": art_genre[artist_of],
            "playlist_subgenre": art_subgenre[artist_of],
        }
    )
    feats = _features(rng, tracks["playlist_genre"].to_numpy(), artist_of, n_artists)
    z = {f: (feats[f] - feats[f].mean()) / feats[f].std(ddof=1) for f in FEATURES}
    total = (
        mu
        + np.array([genre_eff[g] for g in art_genre])
        + np.array([sub_eff[(g, s)] for g, s in zip(art_genre, art_subgenre)])
        + art_eff
    )
    latent = total[artist_of] + sum(FEATURE_EFFECTS[f] * z[f] for f in FEATURES) + rng.normal(0, noise_sd, n)
    popularity = np.clip(np.round(latent), 0, 100)
    clipped = float(np.mean((latent < 0) | (latent > 100)))
    for f in FEATURES:
        tracks[f] = feats[f]
    tracks.insert(3, "track_popularity", popularity.astype(int))
    playlist = rng.integers(1, 6, size=n)
    tracks.insert(4, "playlist_name", [f"SYN {s} mix {k}" for s, k in zip(tracks["playlist_subgenre"], playlist)])
    raw = _with_duplicates(tracks, rng, duplicate_share)

    truth_artists = pd.DataFrame(
        {
            "playlist_genre": art_genre,
            "playlist_subgenre": art_subgenre,
            "track_artist": names,
            "n_tracks": n_tracks,
            "artist_effect": art_eff,
            "true_total": total,
        }
    )
    truth = CatalogueTruth(
        mu=mu,
        feature_effects=dict(FEATURE_EFFECTS),
        genres=pd.DataFrame({"playlist_genre": genres, "effect": [genre_eff[g] for g in genres]}),
        subgenres=pd.DataFrame(
            {"playlist_genre": [g for g, _ in sub_rows], "playlist_subgenre": [s for _, s in sub_rows],
             "effect": [sub_eff[k] for k in sub_rows]}
        ),
        artists=truth_artists,
        sd={"genre": genre_sd, "subgenre": subgenre_sd, "artist": artist_sd, "noise": noise_sd},
        clipped_share=clipped,
    )
    source = f"{SYNTHETIC_LABEL} generator synthetic_catalogue(n_artists={n_artists}, seed={seed})"
    cat = clean_catalogue(raw, source=source, synthetic=True)
    out = SyntheticCatalogue(**{k: getattr(cat, k) for k in cat.__dataclass_fields__}, raw=raw)
    out.truth = truth
    raw.attrs.update(out.data.attrs)
    truth_artists.attrs.update(out.data.attrs)
    return out


def _truncated_zipf(rng: np.random.Generator, a: float, cap: int, size: int) -> np.ndarray:
    """Zipf draws redrawn above ``cap`` (clipping would pile artists up at exactly ``cap``)."""
    out = rng.zipf(a, size=size)
    while (over := out > cap).any():
        out[over] = rng.zipf(a, size=int(over.sum()))
    return out


def _features(rng: np.random.Generator, genre: np.ndarray, artist_of: np.ndarray, n_artists: int) -> dict[str, np.ndarray]:
    """Audio features: genre style + an artist's own style + track noise, in the real units."""
    n = genre.size
    style = np.array([GENRE_STYLE[g] for g in genre])
    own = rng.normal(0, 1, size=(n_artists, 4))[artist_of]  # artists have a sound of their own

    def unit(base: float, shift: np.ndarray, artist: np.ndarray, conc: float = 14.0) -> np.ndarray:
        # a beta draw around a mean kept inside (0.05, 0.95): values stay in [0, 1]
        m = np.clip(base + shift + 0.07 * artist, 0.05, 0.95)
        return rng.beta(m * conc, (1 - m) * conc)

    loud = -rng.gamma(5.0, 1.3, n) + style[:, 3] + 0.8 * own[:, 3]
    return {
        "danceability": unit(0.65, style[:, 0], own[:, 0]),
        "energy": unit(0.70, style[:, 1], own[:, 1]),
        "loudness": np.clip(loud, -30.0, -0.05).round(3),
        "valence": unit(0.51, style[:, 2], own[:, 2], conc=6.0),
        "tempo": np.clip(rng.normal(121, 27, n), 60, 200).round(3),
        "duration_ms": np.clip(rng.lognormal(np.log(210_000), 0.22, n), 60_000, 600_000).round().astype(int),
    }


def _with_duplicates(tracks: pd.DataFrame, rng: np.random.Generator, share: float) -> pd.DataFrame:
    """Append copies of some tracks under another genre's playlist (after the originals)."""
    k = int(round(share * len(tracks)))
    if k == 0:
        return tracks.reset_index(drop=True)
    pick = np.sort(rng.choice(len(tracks), size=k, replace=False))
    copies = tracks.iloc[pick].copy()
    genres = sorted(GENRES)
    new_genre = [genres[(genres.index(g) + int(rng.integers(1, len(genres)))) % len(genres)] for g in copies["playlist_genre"]]
    copies["playlist_genre"] = new_genre
    copies["playlist_subgenre"] = [GENRES[g][int(rng.integers(4))] for g in new_genre]
    copies["playlist_name"] = [f"SYN {s} mix {int(rng.integers(1, 6))}" for s in copies["playlist_subgenre"]]
    return pd.concat([tracks, copies], ignore_index=True)
