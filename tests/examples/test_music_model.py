"""The music example's model: pooling beats raw means against the known truth, ranking, figure, demo.

Acceptance (issue 9): on the synthetic catalogue the pooled artist estimates have lower error
against the true artist totals than raw per-artist means, most of all for artists with <= 3
tracks. Fitted with ``mixed`` (REML); ``pymc`` is checked on a smaller catalogue.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hierfit.engines import ENGINES
from hierfit.examples.music import clean_catalogue, synthetic_catalogue
from hierfit.examples.music.analysis import (
    artist_ranking,
    feature_adjusted_means,
    fit_music,
    model_data,
    music_formula,
    recovery_table,
    shrinkage_by_tracks,
    top_bottom,
)
from hierfit.examples.music.plots import plot_shrinkage
from hierfit.exceptions import EngineError, SpecError

pytestmark = pytest.mark.skipif("mixed" not in ENGINES, reason="the 'mixed' engine is not registered")


@pytest.fixture(scope="module")
def catalogue():
    return synthetic_catalogue(n_artists=600, seed=20261121)


@pytest.fixture(scope="module")
def prepared(catalogue):
    return model_data(catalogue)[0]


@pytest.fixture(scope="module")
def mixed_fit(prepared):
    return fit_music(prepared, engine="mixed", quiet=True)


@pytest.fixture(scope="module")
def ranking(mixed_fit, prepared):
    return artist_ranking(mixed_fit, prepared)


def _rows(table):
    return table.set_index("tracks_per_artist")


def test_pooled_beats_raw_means_most_for_small_artists(catalogue, mixed_fit, prepared, ranking):
    table = _rows(recovery_table(ranking, catalogue.truth.artists, feature_adjusted_means(mixed_fit, prepared, ranking)))
    assert table.loc["all", "artists"] == 600
    for b in ("1", "2-3", "all"):
        assert table.loc[b, "rmse_pooled"] < table.loc[b, "rmse_raw_mean"], b
    # The gain (points of RMSE removed) is largest for artists with 1-3 tracks ...
    m = ranking.merge(catalogue.truth.artists[["track_artist", "true_total"]], on="track_artist")
    small = m["n_tracks"] <= 3

    def gain(mask):
        rmse = lambda col: float(np.sqrt(np.mean((m.loc[mask, col] - m.loc[mask, "true_total"]) ** 2)))  # noqa: E731
        return rmse("raw_mean") - rmse("estimate")

    assert gain(small) > 1.5 * gain(~small) > 0  # measured: 4.5 vs 2.0 points
    # ... and pooling itself (not only the feature adjustment) is what helps them: against
    # no-pooling means with the same feature adjustment, small artists gain > 15%, big ones < 5%.
    vs_adjusted = table["rmse_pooled"] / table["rmse_adjusted_mean"]
    assert vs_adjusted["1"] < 0.85 and vs_adjusted["2-3"] < 0.95
    assert vs_adjusted["10+"] > 0.95


def test_intervals_cover_the_true_totals(catalogue, ranking):
    m = ranking.merge(catalogue.truth.artists[["track_artist", "true_total"]], on="track_artist")
    covered = (m["lower"] <= m["true_total"]) & (m["true_total"] <= m["upper"])
    # nominal 90%; binomial SD over 600 artists ~1.2 points, plus REML's plug-in variance
    assert 0.82 < covered.mean() < 0.96
    assert 0.80 < covered[m["n_tracks"] <= 3].mean() < 0.97


def test_variance_components_recover_the_generator(catalogue, mixed_fit):
    vc = mixed_fit.variance_components().set_index("level")["sd_or_corr"]
    sd = catalogue.truth.sd
    assert abs(vc["track_artist"] - np.hypot(sd["artist"], sd["subgenre"])) < 2.5  # subgenre folds into artists
    assert abs(vc["residual"] - sd["noise"]) < 1.0
    fx = mixed_fit.fixed_effects().set_index("term")["estimate"]
    for f, beta in catalogue.truth.feature_effects.items():
        assert abs(fx[f + "_z"] - beta) < 1.5, f  # SE ~0.3-0.5 for 3k tracks; artist-level confounding adds a little


def test_ranking_table(prepared, ranking):
    assert ranking.attrs["label"] == "SYNTHETIC" and ranking.attrs["engine"] == "mixed"
    assert ranking["n_tracks"].sum() == len(prepared)
    assert ranking["rank"].tolist() == list(range(1, len(ranking) + 1))
    assert (np.diff(ranking["estimate"].to_numpy()) <= 0).all()
    assert ((ranking["lower"] <= ranking["estimate"]) & (ranking["estimate"] <= ranking["upper"])).all()
    raw = prepared.groupby("track_artist")["track_popularity"].mean()
    np.testing.assert_allclose(ranking.set_index("track_artist")["raw_mean"].reindex(raw.index), raw)
    # intervals narrow with tracks: one-track artists are the least certain
    by = shrinkage_by_tracks(ranking).set_index("tracks_per_artist")
    assert by["mean_interval_width"].is_monotonic_decreasing
    assert by["mean_abs_shrinkage"].is_monotonic_decreasing


def test_top_bottom_keep_only_artists_with_enough_tracks(ranking):
    top, bottom = top_bottom(ranking, k=10, min_tracks=5)
    assert len(top) == len(bottom) == 10
    assert (top["n_tracks"] >= 5).all() and (bottom["n_tracks"] >= 5).all()
    eligible = ranking[ranking["n_tracks"] >= 5]
    assert top["estimate"].iloc[0] == eligible["estimate"].max()
    assert bottom["estimate"].iloc[0] == eligible["estimate"].min()
    assert top.attrs["min_tracks"] == 5 and top.attrs["label"] == "SYNTHETIC"
    with pytest.raises(SpecError, match="at least 1"):
        top_bottom(ranking, k=0)


def test_subgenre_variant(catalogue, prepared, ranking):
    fit = fit_music(prepared, variant="subgenre", engine="mixed", quiet=True)
    assert fit.hierarchy.names == ("playlist_genre", "playlist_subgenre", "track_artist")
    sub = artist_ranking(fit, prepared)
    assert "playlist_subgenre" in sub.columns and len(sub) == len(ranking)
    j = ranking.merge(sub, on="track_artist")
    assert np.corrcoef(j["estimate_x"], j["estimate_y"])[0, 1] > 0.98
    table = _rows(recovery_table(sub, catalogue.truth.artists))
    assert table.loc["1", "rmse_pooled"] < table.loc["1", "rmse_raw_mean"]


def test_artist_in_two_genres_is_two_groups():
    cat = synthetic_catalogue(n_artists=120, seed=4)
    raw = cat.data.copy()
    star = raw["track_artist"].iloc[0]
    other = "rock" if raw["playlist_genre"].iloc[0] != "rock" else "pop"
    extra = raw.iloc[[0, 0]].copy()
    extra["track_id"] = ["x1", "x2"]
    extra["playlist_genre"] = other
    both = clean_catalogue(pd.concat([raw, extra], ignore_index=True), synthetic=True)
    data = model_data(both)[0]
    rank = artist_ranking(fit_music(data, engine="mixed", quiet=True), data)
    rows = rank[rank["track_artist"] == star]
    assert sorted(rows["playlist_genre"]) == sorted({raw["playlist_genre"].iloc[0], other})
    assert rows.loc[rows["playlist_genre"] == other, "n_tracks"].item() == 2


def test_errors_name_the_allowed_values(prepared):
    with pytest.raises(SpecError, match="genre, subgenre"):
        music_formula("artist")
    with pytest.raises(EngineError, match="must be one of"):
        fit_music(prepared, engine="lmer")


def test_shrinkage_figure_is_labelled(catalogue, ranking):
    fig = plot_shrinkage(ranking, catalogue.truth.artists)
    assert fig.get_suptitle().startswith("[SYNTHETIC]")
    assert len([ax for ax in fig.axes if ax.get_label() != "<colorbar>"]) == 3
    fig2 = plot_shrinkage(ranking)
    assert len([ax for ax in fig2.axes if ax.get_label() != "<colorbar>"]) == 2


@pytest.mark.skipif(not ENGINES.get("pymc") or not ENGINES["pymc"].available, reason="pymc not installed")
def test_pymc_pools_like_mixed():
    # 60 artists: pymc's cost grows steeply with the number of groups (see the demo's max_bayes_groups)
    cat = synthetic_catalogue(n_artists=60, seed=3)
    data = model_data(cat)[0]
    post = fit_music(data, engine="pymc", quiet=True, draws=200, tune=200, chains=2, progressbar=False, seed=1)
    freq = fit_music(data, engine="mixed", quiet=True)
    rp, rm = artist_ranking(post, data), artist_ranking(freq, data)
    table = _rows(recovery_table(rp, cat.truth.artists))
    assert table.loc["1", "rmse_pooled"] < table.loc["1", "rmse_raw_mean"]
    assert table.loc["all", "rmse_pooled"] < table.loc["all", "rmse_raw_mean"]
    j = rp.merge(rm, on=["playlist_genre", "track_artist"])
    # same model, posterior mean vs conditional mode: estimates agree closely
    assert np.corrcoef(j["estimate_x"], j["estimate_y"])[0, 1] > 0.98
    assert float(np.mean(np.abs(j["estimate_x"] - j["estimate_y"]))) < 2.0
