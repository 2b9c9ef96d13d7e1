"""The shrinkage figure: raw artist means vs pooled estimates, by number of tracks."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from hierfit.examples.music.analysis import recovery_table


def plot_shrinkage(ranking: pd.DataFrame, truth_artists: pd.DataFrame | None = None, *, title: str | None = None) -> Any:
    """Draw how pooling moves each artist, and (with the truth) how much closer it gets.

    Panels: (1) pooled estimate against raw mean, coloured by tracks per artist, with the
    identity line -- points far below/above it were pulled toward their genre; (2) the move
    ``pooled - raw`` against tracks per artist (log axis): large for one-track artists, near
    zero for prolific ones; (3) with ``truth_artists`` (synthetic catalogues only), RMSE
    against the true artist totals by tracks per artist, raw vs pooled.

    Parameters
    ----------
    ranking
        From :func:`hierfit.examples.music.artist_ranking`; its ``attrs["label"]``
        (``SYNTHETIC`` or ``real data``) starts the title.
    truth_artists
        ``catalogue.truth.artists`` for a synthetic catalogue.
    title
        Overrides the default title (the label is still prefixed).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> r = pd.DataFrame({"n_tracks": [1, 2, 12], "raw_mean": [80.0, 20.0, 50.0], "estimate": [55.0, 40.0, 50.5],
    ...                   "shrinkage": [-25.0, 20.0, 0.5]})
    >>> r.attrs["label"] = "SYNTHETIC"
    >>> fig = plot_shrinkage(r)
    >>> fig.get_suptitle().startswith("[SYNTHETIC]")
    True
    """
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    label = str(ranking.attrs.get("label", "data"))
    engine = ranking.attrs.get("engine", "")
    panels = 3 if truth_artists is not None else 2
    # a bare Figure, not pyplot's: nothing is registered globally, so loops do not leak figures
    fig = Figure(figsize=(5.2 * panels, 4.6), layout="constrained")
    axes = fig.subplots(1, panels)
    n = ranking["n_tracks"].to_numpy()
    raw, pooled = ranking["raw_mean"].to_numpy(), ranking["estimate"].to_numpy()
    norm = LogNorm(vmin=1, vmax=max(2, int(n.max())))

    ax = axes[0]
    sc = ax.scatter(raw, pooled, c=n, norm=norm, cmap="viridis", s=12, alpha=0.75, linewidths=0)
    lo, hi = float(min(raw.min(), pooled.min())), float(max(raw.max(), pooled.max()))
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--", label="no pooling (y = x)")
    ax.set_xlabel("raw mean popularity of the artist's tracks")
    ax.set_ylabel("pooled artist estimate (average features)")
    ax.set_title("pooled vs raw")
    ax.legend(loc="upper left", fontsize=8)
    fig.colorbar(sc, ax=ax, label="tracks per artist")

    ax = axes[1]
    jitter = np.random.default_rng(0).uniform(-0.08, 0.08, n.size)  # fixed seed: same picture every run
    ax.scatter(n * np.exp(jitter), ranking["shrinkage"].to_numpy(), s=12, alpha=0.6, linewidths=0, color="tab:blue")
    ax.axhline(0, color="grey", lw=1, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("tracks per artist (log scale)")
    ax.set_ylabel("pooled - raw (points of popularity)")
    ax.set_title("the move shrinks as tracks accumulate")

    if truth_artists is not None:
        ax = axes[2]
        table = recovery_table(ranking, truth_artists)
        table = table[table["tracks_per_artist"] != "all"]
        x = np.arange(len(table))
        ax.bar(x - 0.2, table["rmse_raw_mean"], width=0.4, label="raw mean", color="tab:orange")
        ax.bar(x + 0.2, table["rmse_pooled"], width=0.4, label="pooled", color="tab:blue")
        ax.set_xticks(x, [f"{b}\n({a} artists)" for b, a in zip(table["tracks_per_artist"], table["artists"])])
        ax.set_xlabel("tracks per artist")
        ax.set_ylabel("RMSE vs true artist total")
        ax.set_title("error against the known truth")
        ax.legend(fontsize=8)

    head = title or f"Artist popularity: raw means vs partial pooling{f' ({engine})' if engine else ''}"
    fig.suptitle(f"[{label}] {head}")
    return fig
