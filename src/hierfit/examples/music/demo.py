"""``hierfit demo --example music``: the whole example, end to end, with its report.

Loads a Spotify-layout table (``data=``) or generates a SYNTHETIC catalogue, fits the model
with each requested engine (``mixed`` and ``pymc`` by default; the subgenre variant with the
first engine that fits), ranks artists, draws the shrinkage figure and writes (``out`` a folder,
or the report's own ``.html`` path with the other two files beside it)::

    out/music_report.html          self-contained report
    out/music_artist_ranking.csv   every artist, pooled estimate and interval (first column: catalogue label)
    out/music_shrinkage.png        the shrinkage figure
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hierfit.checks import Diagnostic
from hierfit.engines import ENGINES
from hierfit.examples.music.analysis import (
    ARTIST_LEVEL,
    artist_ranking,
    feature_adjusted_means,
    fit_music,
    model_data,
    raw_top,
    recovery_table,
    shrinkage_by_tracks,
    top_bottom,
)
from hierfit.examples.music.catalogue import Catalogue, load_spotify
from hierfit.examples.music.plots import plot_shrinkage
from hierfit.examples.music.synthetic import synthetic_catalogue
from hierfit.exceptions import EngineError
from hierfit.results import FitResult

DEFAULT_ENGINES: tuple[str, ...] = ("mixed", "pymc")
#: engines whose cost grows steeply with the number of artist groups (dense per-gradient algebra)
SLOW_IN_GROUPS: frozenset[str] = frozenset({"pymc", "stan"})


@dataclass(eq=False)
class MusicDemo:
    """Everything the music demo computed (also written to ``out``)."""

    catalogue: Catalogue
    data: pd.DataFrame
    scaling: pd.DataFrame
    fits: dict[tuple[str, str], FitResult]
    primary: str
    ranking: pd.DataFrame
    top: pd.DataFrame
    bottom: pd.DataFrame
    raw_top: pd.DataFrame
    shrinkage: pd.DataFrame
    figure: Any
    min_tracks: int
    recovery: pd.DataFrame | None = None
    engine_table: pd.DataFrame | None = None
    diagnostics: list[Diagnostic] = field(default_factory=list)
    report_path: Path | None = None
    ranking_path: Path | None = None
    figure_path: Path | None = None


def run_music_demo(
    out: Path | str,
    data: Path | str | None = None,
    seed: int = 0,
    echo: Callable[[str], None] = print,
    *,
    engines: Sequence[str] = DEFAULT_ENGINES,
    variants: Sequence[str] = ("genre", "subgenre"),
    n_artists: int = 200,
    min_tracks: int = 5,
    top_k: int = 10,
    max_bayes_groups: int | None = 250,
) -> MusicDemo:
    """Run the music example and write its report into ``out``.

    Parameters
    ----------
    out
        Folder for the report, ranking CSV and figure (created); or a path ending in ``.html``:
        the report is written there and the CSV and figure beside it.
    data
        A CSV/Parquet file in the public Spotify songs layout; ``None`` generates a SYNTHETIC
        catalogue of ``n_artists`` artists from ``seed``.
    seed
        Seeds the synthetic catalogue and the samplers.
    echo
        Where progress and tables are printed.
    engines
        Engines for the genre variant, in order of preference; the first that fits is the
        *primary* one (ranking, figure, subgenre variant). Unregistered or uninstalled engines
        are skipped with a message.
    variants
        ``"genre"`` and/or ``"subgenre"`` (the latter with the primary engine only).
    min_tracks, top_k
        The top/bottom tables list ``top_k`` artists with at least ``min_tracks`` tracks.
    max_bayes_groups
        ``pymc``/``stan`` are skipped, with a message, when the data have more artist groups
        than this: their gaussian likelihood does dense algebra in the number of groups
        per gradient (minutes for 300 artists on 2 cores, far longer for a full real catalogue of
        ~10,000). ``None`` always runs them; ``fit_music(data, engine="pymc")`` does too.

    Returns
    -------
    MusicDemo

    Examples
    --------
    >>> import tempfile
    >>> demo = run_music_demo(tempfile.mkdtemp(), engines=("mixed",), variants=("genre",), n_artists=60,
    ...                       echo=lambda s: None)
    >>> demo.primary, demo.ranking.attrs["label"], demo.report_path.name
    ('mixed', 'SYNTHETIC', 'music_report.html')
    """
    out = Path(out)
    report = out if out.suffix.lower() == ".html" else out / "music_report.html"
    report.parent.mkdir(parents=True, exist_ok=True)
    cat = load_spotify(data) if data is not None else synthetic_catalogue(n_artists=n_artists, seed=seed)
    label = cat.label
    echo(cat.describe())
    frame, scaling = model_data(cat)
    fits: dict[tuple[str, str], FitResult] = {}
    variants = list(variants)
    n_groups = int(frame.groupby(["playlist_genre", "track_artist"]).ngroups)
    if "genre" in variants:
        for name in engines:
            if name in SLOW_IN_GROUPS and max_bayes_groups is not None and n_groups > max_bayes_groups:
                echo(
                    f"[{label}] {name}: skipped ({n_groups} artist groups > max_bayes_groups={max_bayes_groups}; "
                    f"its cost grows steeply with groups -- pass max_bayes_groups=None, or call "
                    f"fit_music(data, engine={name!r}) yourself, to run it anyway)"
                )
                continue
            result = _fit_engine(frame, name, "genre", seed, echo, label)
            if result is not None:
                fits[(name, "genre")] = result
    if not fits and "genre" in variants:
        raise EngineError(
            f"None of the engines {', '.join(engines)} could fit the music example; install one "
            "(pip install 'hierfit[pymc]') or pass engines=('ols',) for a no-pooling baseline."
        )
    primary = next(iter(fits))[0] if fits else engines[0]
    if "subgenre" in variants:
        result = _fit_engine(frame, primary, "subgenre", seed, echo, label)
        if result is not None:
            fits[(primary, "subgenre")] = result
    if not fits:
        raise EngineError(f"Engine {primary!r} could not fit the music example.")
    main_key = (primary, "genre") if (primary, "genre") in fits else next(iter(fits))
    main = fits[main_key]
    if ENGINES[primary].capabilities.pooling != "partial":
        echo(f"[{label}] note: engine {primary!r} does not pool; its artist estimates are no-pooling estimates.")

    ranking = artist_ranking(main, frame)
    top, bottom = top_bottom(ranking, k=top_k, min_tracks=min_tracks)
    naive = raw_top(ranking, k=top_k)
    shrink = shrinkage_by_tracks(ranking)
    truth = getattr(cat.truth, "artists", None)
    recovery = None
    if truth is not None:
        recovery = recovery_table(ranking, truth, feature_adjusted_means(main, frame, ranking))
    figure = plot_shrinkage(ranking, truth)
    demo = MusicDemo(
        catalogue=cat,
        data=frame,
        scaling=scaling,
        fits=fits,
        primary=primary,
        ranking=ranking,
        top=top,
        bottom=bottom,
        raw_top=naive,
        shrinkage=shrink,
        figure=figure,
        min_tracks=min_tracks,
        recovery=recovery,
        engine_table=engine_table(fits, frame, truth),
        diagnostics=[d for r in fits.values() for d in r.diagnostics],
    )
    _print(demo, echo)
    _write(demo, report, echo)
    return demo


def engine_table(fits: dict[tuple[str, str], FitResult], data: pd.DataFrame, truth: pd.DataFrame | None) -> pd.DataFrame | None:
    """Genre-variant fits side by side: time, SDs, agreement and (synthetic) error vs truth."""
    genre = {e: r for (e, v), r in fits.items() if v == "genre"}
    if not genre:
        return None
    rankings = {e: artist_ranking(r, data) for e, r in genre.items()}
    first = next(iter(rankings.values())).set_index(["playlist_genre", "track_artist"])["estimate"]
    rows = []
    for e, r in genre.items():
        vc = r.variance_components()
        sd = {lv: float(vc.loc[(vc["level"] == lv) & (vc["term2"] == ""), "sd_or_corr"].sum()) for lv in ("playlist_genre", ARTIST_LEVEL, "residual")}
        rk = rankings[e]
        est = rk.set_index(["playlist_genre", "track_artist"])["estimate"].reindex(first.index)
        row: dict[str, object] = {
            "engine": e,
            "fit_seconds": r.timings.get("fit_seconds", float("nan")),
            "sd_genre": sd["playlist_genre"],
            "sd_artist": sd[ARTIST_LEVEL],
            "sd_residual": sd["residual"],
            "corr_with_first": float(np.corrcoef(first.to_numpy(), est.to_numpy())[0, 1]),
            "width_1_track": float(rk.loc[rk["n_tracks"] == 1, "width"].mean()),
        }
        if truth is not None:
            rec = recovery_table(rk, truth).set_index("tracks_per_artist")["rmse_pooled"]
            row["rmse_vs_truth"] = float(rec["all"])
        rows.append(row)
    return pd.DataFrame(rows)


def _fit_engine(frame: pd.DataFrame, name: str, variant: str, seed: int, echo, label: str) -> FitResult | None:
    entry = ENGINES.get(name)
    if entry is None:
        echo(f"[{label}] {name}: skipped (not registered; engines are {', '.join(sorted(ENGINES))})")
        return None
    if not entry.available:
        echo(f"[{label}] {name}: skipped (pip install 'hierfit[{entry.extra or name}]')")
        return None
    module = entry.load()
    options = entry.fast_options()
    if "seed" in {f for f in getattr(module.OPTIONS, "__dataclass_fields__", {})}:
        options["seed"] = seed
    t0 = time.perf_counter()
    result = fit_music(frame, variant=variant, engine=name, quiet=True, **options)
    echo(f"[{label}] fitted {variant} variant with {name} in {time.perf_counter() - t0:.1f} s: {result.spec.text}")
    return result


def _print(demo: MusicDemo, echo: Callable[[str], None]) -> None:
    label = demo.catalogue.label
    fmt = {"float_format": lambda v: f"{v:.2f}", "index": False}
    cols = ["rank", "playlist_genre", "track_artist", "n_tracks", "raw_mean", "estimate", "lower", "upper", "width"]
    if demo.engine_table is not None:
        echo(f"\n[{label}] engines (genre variant):\n" + demo.engine_table.to_string(**fmt))
    for (e, v), r in demo.fits.items():
        vc = r.variance_components()
        sds = ", ".join(f"{row.level} {row.sd_or_corr:.2f}" for row in vc.itertuples() if row.term2 == "")
        echo(f"[{label}] {v} variant ({e}) SDs: {sds}")
        # one-track artists are the point of the example, so that check is expected; show the rest
        for d in r.diagnostics:
            if d.check != "single_row_groups":
                echo(f"[{label}]   {e} diagnostic: {d}")
    echo(f"\n[{label}] top {len(demo.top)} artists with >= {demo.min_tracks} tracks ({demo.primary}, 90% intervals):")
    echo(demo.top[cols].to_string(**fmt))
    echo(f"\n[{label}] bottom {len(demo.bottom)} artists with >= {demo.min_tracks} tracks:")
    echo(demo.bottom[cols].to_string(**fmt))
    small = int((demo.raw_top["n_tracks"] <= 3).sum())
    echo(f"\n[{label}] by raw mean instead, {small} of the top {len(demo.raw_top)} artists have 1-3 tracks.")
    echo(f"\n[{label}] shrinkage by tracks per artist:\n" + demo.shrinkage.to_string(**fmt))
    if demo.recovery is not None:
        echo(f"\n[{label}] RMSE against the true artist totals (ratio = pooled / raw):\n" + demo.recovery.to_string(**fmt))


def _write(demo: MusicDemo, report: Path, echo: Callable[[str], None]) -> None:
    from hierfit.examples.music.report import figure_png, write_music_report

    ranking = demo.ranking.copy()
    ranking.insert(0, "catalogue", demo.catalogue.label)
    out = report.parent
    demo.ranking_path = out / "music_artist_ranking.csv"
    ranking.to_csv(demo.ranking_path, index=False)
    demo.figure_path = out / "music_shrinkage.png"
    png = figure_png(demo.figure)
    demo.figure_path.write_bytes(png)
    demo.report_path = write_music_report(demo, report, png=png)
    echo(f"\n[{demo.catalogue.label}] wrote {demo.report_path}, {demo.ranking_path}, {demo.figure_path}")
