"""Decomposition of chosen rows: the national, market, submarket and slope parts of each
row's prediction as stacked bars (positive parts to the right of zero, negative to the left),
with the prediction (their sum) and the observed value marked."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from hierfit.design.hierarchy import group_labels
from hierfit.exceptions import SpecError
from hierfit.plots._common import new_axes

MAX_ROWS = 40


class DecompositionDisplay:
    """Stacked additive parts of the linear predictor for a few rows.

    Examples
    --------
    >>> import hierfit
    >>> from hierfit.plots import DecompositionDisplay
    >>> sim = hierfit.simulate(n_markets=4, n_submarkets=3, rows_per_submarket=20, seed=1)
    >>> fit = hierfit.fit(sim.formula, sim.data, engine="ols")
    >>> d = DecompositionDisplay.from_result(fit, sim.data, rows=[0, 100, 200])
    >>> bool(np.allclose(d.parts.sum(axis=1), d.total)), d.ax_ is not None
    (True, True)
    """

    def __init__(self, parts: pd.DataFrame, total: np.ndarray, observed: np.ndarray | None, labels: list[str], *, engine: str) -> None:
        self.parts = parts
        self.total = total
        self.observed = observed
        self.labels = labels
        self.engine = engine

    @classmethod
    def from_result(cls, result: Any, data: pd.DataFrame, rows: Sequence[int] | None = None, n: int = 8, seed: int = 0, *,
                    ax: Any = None) -> DecompositionDisplay:
        """Decompose ``data.iloc[rows]`` (default: ``n`` rows drawn at random, seeded) and plot it.

        Rows are positions in ``data``; labels show the row and its deepest group.
        """
        if rows is None:
            rng = np.random.default_rng(seed)
            rows = [int(r) for r in np.sort(rng.choice(len(data), size=min(n, len(data)), replace=False))]
        rows = list(rows)
        if not rows or len(rows) > MAX_ROWS:
            raise SpecError(f"Choose between 1 and {MAX_ROWS} rows to decompose; got {len(rows)}.")
        bad = [r for r in rows if not (isinstance(r, (int, np.integer)) and 0 <= r < len(data))]
        if bad:
            raise SpecError(f"'rows' are positions 0..{len(data) - 1} in the data; got {bad[0]!r}.")
        subset = data.iloc[rows]
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an unseen group's part is 0 by design; labels say so
            parts = result.decompose(subset).reset_index(drop=True)
        parts = parts.loc[:, (parts.abs() > 1e-12).any(axis=0) | (parts.columns == "national")]
        deepest = result.hierarchy.levels[-1] if result.hierarchy.levels else None
        where = group_labels(subset, deepest.factor) if deepest is not None else np.array([""] * len(rows))
        labels = [f"row {r}  {w}" for r, w in zip(rows, where)]
        response = result.spec.response
        observed = subset[response].to_numpy(dtype=float) if response in subset.columns else None
        return cls(parts, parts.to_numpy().sum(axis=1), observed, labels, engine=result.engine).plot(ax=ax)

    def plot(self, ax: Any = None) -> DecompositionDisplay:
        """Draw the stacked bars; keep ``ax_`` and ``figure_``; return the display."""
        import matplotlib

        n = len(self.labels)
        fig, ax = new_axes(ax, (10.0, max(3.0, 0.45 * n + 1.6)))
        cols = list(self.parts.columns)
        cmap = matplotlib.colormaps["tab10"]
        y = np.arange(n)
        pos = np.zeros(n)
        neg = np.zeros(n)
        for i, c in enumerate(cols):
            v = self.parts[c].to_numpy()
            left = np.where(v >= 0, pos, neg + v)
            ax.barh(y, np.abs(v), left=left, height=0.62, color=cmap(i % 10), edgecolor="white", linewidth=0.5, label=c)
            pos = pos + np.where(v >= 0, v, 0)
            neg = neg + np.where(v < 0, v, 0)
        ax.scatter(self.total, y, marker="D", s=36, color="black", zorder=4, label="prediction (sum)")
        if self.observed is not None:
            ax.scatter(self.observed, y, marker="x", s=40, color="#D55E00", lw=1.6, zorder=4, label="observed")
        ax.axvline(0, color="0.3", lw=0.8)
        ax.set_yticks(y, self.labels, fontsize=8)
        ax.set_ylim(n - 0.5, -0.5)
        ax.set_xlabel("contribution to the linear predictor", fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="x", color="0.92")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
        ax.set_title(f"{self.engine}: additive parts of {n} rows' predictions (link scale)", fontsize=10)
        self.figure_ = fig
        self.ax_ = ax
        return self
