"""The music example's data side: the Spotify-layout loader and the synthetic catalogue."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hierfit.examples.music import (
    FEATURES,
    REQUIRED_COLUMNS,
    clean_catalogue,
    load_spotify,
    synthetic_catalogue,
)
from hierfit.exceptions import DataError

HEADER = (
    "track_id,track_name,track_artist,track_popularity,track_album_name,playlist_name,playlist_genre,"
    "playlist_subgenre,danceability,energy,key,loudness,mode,valence,tempo,duration_ms"
)
# Hand-made rows in the public layout: t1 is listed in a pop and then a rock playlist, t3 three
# times; the artist literally called "NA" must stay text; t5 has an empty popularity cell.
ROWS = [
    "t1,Song One,Alpha,66,Album A,Pop Hits,pop,dance pop,0.748,0.916,6,-2.634,1,0.518,122.036,194754",
    "t2,Song Two,Beta,41,Album B,Rock On,rock,hard rock,0.41,0.93,1,-4.2,1,0.31,141.0,230000",
    "t1,Song One,Alpha,66,Album A,Rock Mix,rock,classic rock,0.748,0.916,6,-2.634,1,0.518,122.036,194754",
    "t3,Song Three,NA,12,Album C,Rap Caviar,rap,trap,0.8,0.6,5,-7.1,0,0.4,90.5,180000",
    "t4,Song Four,Alpha,70,Album A,Pop Hits,pop,dance pop,0.7,0.8,2,-5.0,1,0.6,118.0,200000",
    "t3,Song Three,NA,12,Album C,Latin Mix,latin,reggaeton,0.8,0.6,5,-7.1,0,0.4,90.5,180000",
    "t5,Song Five,Gamma,,Album D,EDM Now,edm,big room,0.6,0.95,7,-3.3,1,0.2,128.0,210000",
    "t3,Song Three,NA,12,Album C,Rap Caviar 2,rap,trap,0.8,0.6,5,-7.1,0,0.4,90.5,180000",
]


def write_csv(path, rows=ROWS, header=HEADER):
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def test_loader_deduplicates_first_occurrence_and_reports_counts(tmp_path):
    cat = load_spotify(write_csv(tmp_path / "spotify_songs.csv"))
    d = cat.data
    assert cat.rows_read == 8
    assert cat.duplicates_dropped == 3  # t1 once, t3 twice
    assert cat.missing_dropped == 1 and cat.missing_by_column["track_popularity"] == 1
    assert d["track_id"].tolist() == ["t1", "t2", "t3", "t4"]  # file order, t5 dropped
    # first occurrence wins: t1 stays pop (not rock), t3 stays rap (not latin)
    assert d.set_index("track_id").loc["t1", "playlist_genre"] == "pop"
    assert d.set_index("track_id").loc["t3", "playlist_genre"] == "rap"
    assert d.set_index("track_id").loc["t3", "track_artist"] == "NA"  # text, not a missing value
    assert d["track_popularity"].tolist() == [66.0, 41.0, 12.0, 70.0]
    assert not cat.synthetic and cat.label == "real data"
    assert d.attrs["duplicates_dropped"] == 3 and d.attrs["label"] == "real data"
    text = cat.describe()
    assert "duplicate track_id rows dropped 3" in text and "track_popularity (1)" in text


def test_loader_na_error_names_columns(tmp_path):
    path = write_csv(tmp_path / "songs.csv")
    with pytest.raises(DataError, match=r"track_popularity \(1\)"):
        load_spotify(path, na="error")


def test_loader_missing_columns_named_with_required_list(tmp_path):
    header = HEADER.replace(",energy", "").replace(",tempo", "")
    rows = [",".join(v for i, v in enumerate(r.split(",")) if i not in (9, 14)) for r in ROWS]
    path = write_csv(tmp_path / "songs.csv", rows, header)
    with pytest.raises(DataError) as err:
        load_spotify(path)
    msg = str(err.value)
    assert "'energy'" in msg and "'tempo'" in msg
    assert "Required: " + ", ".join(sorted(REQUIRED_COLUMNS)) in msg


def test_loader_rejects_non_numeric_and_missing_ids(tmp_path):
    bad = [ROWS[0].replace(",0.916,", ",loud,"), *ROWS[1:]]
    with pytest.raises(DataError, match=r"'energy'.*'loud'"):
        load_spotify(write_csv(tmp_path / "a.csv", bad))
    no_id = [",Song,Alpha" + ROWS[0][len("t1,Song One,Alpha"):], *ROWS[1:]]
    with pytest.raises(DataError, match="no track_id"):
        load_spotify(write_csv(tmp_path / "b.csv", no_id))
    with pytest.raises(DataError, match="does not exist"):
        load_spotify(tmp_path / "nope.csv")


def test_loader_reads_parquet_like_csv(tmp_path):
    csv = load_spotify(write_csv(tmp_path / "songs.csv"))
    raw = pd.read_csv(tmp_path / "songs.csv", keep_default_na=False, na_values=[""], dtype={"track_artist": "string"})
    raw.to_parquet(tmp_path / "songs.parquet")
    pq = load_spotify(tmp_path / "songs.parquet")
    assert pq.duplicates_dropped == csv.duplicates_dropped == 3
    assert pq.data["track_id"].tolist() == csv.data["track_id"].tolist()


@pytest.fixture(scope="module")
def catalogue():
    return synthetic_catalogue(n_artists=400, seed=11)


def test_synthetic_is_labelled_everywhere(catalogue):
    assert catalogue.synthetic and catalogue.label == "SYNTHETIC"
    assert "SYNTHETIC" in catalogue.source and catalogue.describe().startswith("[SYNTHETIC]")
    for frame in (catalogue.data, catalogue.raw, catalogue.truth.artists):
        assert frame.attrs["label"] == "SYNTHETIC" and frame.attrs["synthetic"] is True
    assert catalogue.data["track_artist"].str.startswith("SYN Artist ").all()


def test_synthetic_is_seeded():
    a, b, c = (synthetic_catalogue(n_artists=80, seed=s) for s in (5, 5, 6))
    pd.testing.assert_frame_equal(a.raw, b.raw)
    pd.testing.assert_frame_equal(a.truth.artists, b.truth.artists)
    assert not a.raw["track_popularity"].equals(c.raw["track_popularity"])


def test_synthetic_layout_ranges_and_duplicates(catalogue):
    d, raw = catalogue.data, catalogue.raw
    assert set(REQUIRED_COLUMNS) <= set(raw.columns)
    assert d["track_id"].is_unique and catalogue.duplicates_dropped == len(raw) - len(d) > 0
    assert d["track_popularity"].between(0, 100).all()
    for f in ("danceability", "energy", "valence"):
        assert d[f].between(0, 1).all()
    assert d["loudness"].between(-30, 0).all() and -9 < d["loudness"].median() < -4
    assert d["tempo"].between(60, 200).all()
    minutes = d["duration_ms"] / 60_000
    assert 3.0 < minutes.median() < 4.0
    # clipping to [0, 100] is rare, as promised in the docstring
    assert catalogue.truth.clipped_share < 0.02


def test_synthetic_tracks_per_artist_are_heavy_tailed(catalogue):
    n = catalogue.truth.artists["n_tracks"]
    assert n.sum() == len(catalogue.data)
    assert (n <= 3).mean() > 0.6 and (n == 1).mean() > 0.35
    assert n.max() >= 20 and n.max() <= 60
    assert (n == n.max()).sum() <= 3  # truncated, not clipped: no pile-up at the cap


def test_synthetic_truth_matches_the_data(catalogue):
    """Artist means minus the known feature effects scatter around the true totals by noise only."""
    d, truth = catalogue.data, catalogue.truth
    z = {f: (d[f] - d[f].mean()) / d[f].std(ddof=1) for f in FEATURES}
    resid = d["track_popularity"] - sum(truth.feature_effects[f] * z[f] for f in FEATURES)
    means = resid.groupby(d["track_artist"]).mean()
    merged = truth.artists.set_index("track_artist").join(means.rename("adj"))
    big = merged[merged["n_tracks"] >= 20]
    # noise SD 12 over >= 20 tracks: SE <= 2.7; 6 points is > 2 SE for every artist checked
    assert np.abs(big["adj"] - big["true_total"]).max() < 6
    assert abs(float(merged["true_total"].mean()) - truth.mu) < 8


def test_clean_catalogue_validates_na_option():
    raw = synthetic_catalogue(n_artists=5, seed=0).raw
    with pytest.raises(DataError, match="'na' must be"):
        clean_catalogue(raw, na="keep")
