"""Group effects per level: caterpillar plots (one engine or several side by side) and the
shrinkage plot (no-pooling ``ols`` vs a partial-pooling engine, per group, with group sizes)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from hierfit.exceptions import SpecError
from hierfit.plots._common import (
    as_results,
    check_choice,
    engine_color,
    new_axes,
    new_figure,
    short_label,
)

MAX_LABELLED = 80


def _level_effects(result, level: str, term: str, kind: str, interval: float) -> pd.DataFrame:
    eff = result.group_effects(kind, level=interval)
    levels = [lv for lv in eff["level"].unique() if lv != "national"]
    check_choice("level", level, levels)
    rows = eff[(eff["level"] == level)]
    check_choice("term", term, sorted(rows["term"].unique()))
    return rows[rows["term"] == term].reset_index(drop=True)


class CaterpillarDisplay:
    """Each group's effect and interval at one level, sorted, one panel per engine.

    Examples
    --------
    >>> import hierfit
    >>> from hierfit.plots import CaterpillarDisplay
    >>> sim = hierfit.simulate(n_markets=4, n_submarkets=3, rows_per_submarket=20, seed=1)
    >>> fit = hierfit.fit(sim.formula, sim.data, engine="ols")
    >>> d = CaterpillarDisplay.from_result(fit, level="submarket", truth=sim.truth)
    >>> len(d.order), len(d.ax_)
    (12, 1)
    """

    def __init__(self, tables: dict[str, pd.DataFrame], order: list[str], *, level: str, term: str, kind: str, interval: float, truth: pd.Series | None, reference: float) -> None:
        self.tables = tables
        self.order = order
        self.level = level
        self.term = term
        self.kind = kind
        self.interval = interval
        self.truth = truth
        self.reference = reference

    @classmethod
    def from_result(
        cls,
        results: Any,
        level: str,
        term: str = "Intercept",
        kind: str = "total",
        interval: float = 0.9,
        truth: Any = None,
        *,
        ax: Any = None,
    ) -> CaterpillarDisplay:
        """Effects of ``term`` at ``level`` for one fit or several (``{"mixed": fit, ...}``), plotted.

        Groups are sorted by the first fit's estimate; ``truth`` (``sim.truth``) adds the true
        effects as crosses.
        """
        check_choice("kind", kind, ["deviation", "total"])
        fits = as_results(results)
        tables = {name: _level_effects(r, level, term, kind, interval).set_index("group") for name, r in fits.items()}
        first = next(iter(tables.values()))
        order = list(first.sort_values("estimate").index)
        true = None
        if truth is not None:
            from hierfit.evaluate.metrics import truth_effects

            t = truth_effects(truth)
            t = t[(t["level"] == level) & (t["term"] == term) & (t["kind"] == kind)]
            true = t.set_index("group")["estimate"]
        reference = 0.0
        if kind == "total":
            nat = next(iter(fits.values())).group_effects("total", level=interval)
            nat = nat[(nat["level"] == "national") & (nat["term"] == term)]
            reference = float(nat["estimate"].iloc[0]) if len(nat) else np.nan
        return cls(tables, order, level=level, term=term, kind=kind, interval=interval, truth=true, reference=reference).plot(ax=ax)

    def plot(self, ax: Any = None) -> CaterpillarDisplay:
        """Draw one panel per engine (sharing the group axis); keep ``ax_`` and ``figure_``; return the display.

        ``ax`` may be one Axes (one engine) or a sequence of Axes (one per engine).
        """
        n = len(self.order)
        k = len(self.tables)
        height = max(3.0, min(0.2 * n + 1.5, 14.0))
        if ax is None:
            fig = new_figure((min(3.4 * k + 1.5, 16.0), height))
            axes = np.atleast_1d(fig.subplots(1, k, sharey=True, sharex=True, squeeze=False)[0])
        else:
            axes = np.atleast_1d(np.asarray(ax, dtype=object))
            if len(axes) != k:
                raise SpecError(f"Give one Axes per engine: {k} engines, {len(axes)} Axes.")
            fig = axes[0].figure
        pos = {g: i for i, g in enumerate(self.order)}
        for a, (name, table) in zip(axes, self.tables.items()):
            t = table.loc[[g for g in self.order if g in table.index]]
            y = np.array([pos[g] for g in t.index])
            color = engine_color(name)
            if np.all(np.isfinite(t["lower"])):
                a.hlines(y, t["lower"], t["upper"], color=color, alpha=0.55, lw=1.4 if n <= 200 else 0.6)
            a.scatter(t["estimate"], y, s=14 if n <= 200 else 4, color=color, zorder=3, label="estimate")
            if self.truth is not None:
                tv = self.truth.reindex(self.order)
                a.scatter(tv.to_numpy(), np.arange(n), marker="x", s=16 if n <= 200 else 5, color="black", lw=0.9, zorder=4, label="truth")
            if np.isfinite(self.reference):
                a.axvline(self.reference, color="0.4", ls="--", lw=0.8)
            a.set_title(name, fontsize=10, color=color)
            a.grid(axis="x", color="0.9")
            a.set_xlabel(f"{self.kind} effect ({self.term})", fontsize=9)
            a.tick_params(labelsize=8)
        axes[0].set_ylim(n - 0.5, -0.5)
        if n <= MAX_LABELLED:
            axes[0].set_yticks(np.arange(n), [g if len(g) < 18 else short_label(g) for g in self.order], fontsize=7 if n > 40 else 8)
        else:
            axes[0].set_ylabel(f"{n} {self.level} groups, sorted by estimate", fontsize=9)
            axes[0].set_yticks([])
        if self.truth is not None:
            handles, labels = axes[0].get_legend_handles_labels()
            fig.legend(handles, labels, loc="outside upper right", ncols=2, fontsize=8, frameon=False)
        fig.suptitle(f"{self.level}: {self.kind} {self.term} effects with {int(self.interval * 100)}% intervals", fontsize=11)
        self.figure_ = fig
        self.ax_ = axes
        return self


class ShrinkageDisplay:
    """No-pooling vs partial-pooling estimates of each group's deviation from its parent.

    Left: partial-pooling against no-pooling deviation, point size by group rows; points on
    a line flatter than the diagonal show shrinkage toward the parent. Right: both estimates
    against group size, joined per group: small groups move furthest.

    Examples
    --------
    >>> import hierfit
    >>> from hierfit.plots import ShrinkageDisplay
    >>> sim = hierfit.simulate(n_markets=4, n_submarkets=3, rows_per_submarket=20, seed=1)
    >>> ols = hierfit.fit(sim.formula, sim.data, engine="ols")
    >>> d = ShrinkageDisplay.from_results(ols, ols, level="submarket")
    >>> round(d.slope, 6), len(d.ax_)
    (1.0, 2)
    """

    def __init__(self, table: pd.DataFrame, *, level: str, term: str, no_pooling: str, partial: str, slope: float) -> None:
        self.table = table
        self.level = level
        self.term = term
        self.no_pooling = no_pooling
        self.partial = partial
        self.slope = slope

    @classmethod
    def from_results(cls, no_pooling: Any, partial: Any, level: str, term: str = "Intercept", *, ax: Any = None) -> ShrinkageDisplay:
        """Match groups of two fits (typically ``ols`` and ``mixed``) at ``level`` and plot them."""
        a = _level_effects(no_pooling, level, term, "deviation", 0.9)
        b = _level_effects(partial, level, term, "deviation", 0.9)
        table = a[["group", "estimate", "n_rows"]].merge(b[["group", "estimate"]], on="group", suffixes=("_none", "_partial"))
        if table.empty:
            raise SpecError(f"The two fits share no {level!r} groups to compare.")
        x, y = table["estimate_none"].to_numpy(), table["estimate_partial"].to_numpy()
        # Least-squares slope through the origin: the average shrinkage factor.
        slope = float(x @ y / (x @ x)) if (x @ x) > 0 else np.nan
        return cls(table, level=level, term=term, no_pooling=no_pooling.engine, partial=partial.engine, slope=slope).plot(ax=ax)

    def plot(self, ax: Any = None) -> ShrinkageDisplay:
        """Draw the two panels (or only the scatter on a given ``ax``); keep ``ax_`` (the panels)
        and ``figure_``; return the display."""
        if ax is None:
            fig = new_figure((11.0, 4.8))
            ax1, ax2 = fig.subplots(1, 2)
        else:
            fig, ax1 = new_axes(ax, (5.5, 4.8))
            ax2 = None
        t = self.table
        sizes = t["n_rows"].to_numpy(dtype=float)
        s = 12 + 80 * (sizes / sizes.max())
        lim = float(np.nanmax(np.abs(t[["estimate_none", "estimate_partial"]].to_numpy()))) * 1.08 or 1.0
        ax1.plot([-lim, lim], [-lim, lim], color="0.6", ls="--", lw=0.8, label="no shrinkage (y = x)")
        ax1.axhline(0, color="0.85", lw=0.8)
        ax1.axvline(0, color="0.85", lw=0.8)
        sc = ax1.scatter(t["estimate_none"], t["estimate_partial"], s=s, c=sizes, cmap="viridis", alpha=0.8, edgecolor="0.2", linewidth=0.4)
        ax1.set_xlim(-lim, lim)
        ax1.set_ylim(-lim, lim)
        ax1.set_aspect("equal")
        ax1.set_xlabel(f"no pooling ({self.no_pooling}) deviation", fontsize=9)
        ax1.set_ylabel(f"partial pooling ({self.partial}) deviation", fontsize=9)
        ax1.set_title(f"{self.level} {self.term}: shrinkage factor {self.slope:.2f}", fontsize=10)
        ax1.legend(loc="upper left", fontsize=8, frameon=False)
        equal = bool(np.all(sizes == sizes[0]))
        if not equal:
            cb = fig.colorbar(sc, ax=ax1, shrink=0.8)
            cb.set_label("rows in group", fontsize=8)
        if ax2 is not None:
            n = np.maximum(sizes, 1)
            jitter = np.exp(np.random.default_rng(0).uniform(-0.04, 0.04, len(n)))  # separate equal sizes
            xs = n * jitter
            ax2.vlines(xs, t["estimate_none"], t["estimate_partial"], color="0.7", lw=0.7)
            ax2.scatter(xs, t["estimate_none"], s=16, facecolor="white", edgecolor=engine_color(self.no_pooling), label=f"no pooling ({self.no_pooling})", zorder=3)
            ax2.scatter(xs, t["estimate_partial"], s=16, color=engine_color(self.partial), label=f"partial pooling ({self.partial})", zorder=3)
            ax2.axhline(0, color="0.5", lw=0.8, ls="--")
            ax2.set_xscale("log")
            from matplotlib.ticker import NullLocator

            ticks = np.unique(np.round(np.geomspace(n.min(), n.max(), 5)).astype(int))
            ax2.xaxis.set_minor_locator(NullLocator())
            ax2.set_xticks(ticks, [str(t) for t in ticks])
            ax2.set_xlim(n.min() / 1.3, n.max() * 1.3)
            ax2.set_xlabel("rows in group (log scale)", fontsize=9)
            ax2.set_ylabel(f"deviation from parent ({self.term})", fontsize=9)
            ax2.set_title(f"all groups have {int(sizes[0])} rows: equal shrinkage" if equal else "small groups move furthest toward their parent", fontsize=10)
            ax2.legend(fontsize=8, frameon=False)
        for a in (ax1, ax2):
            if a is not None:
                a.tick_params(labelsize=8)
        self.figure_ = fig
        self.ax_ = [a for a in (ax1, ax2) if a is not None]
        return self
