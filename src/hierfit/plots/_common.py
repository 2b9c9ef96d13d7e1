"""Shared helpers for the Display objects: figures, engine colours, effect colour scales."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from hierfit.engines import ENGINES
from hierfit.exceptions import SpecError

# Colour-blind-safe (Okabe-Ito), one per engine, stable across plots and reports.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#8C564B", "#F0E442"]


def engine_color(name: str) -> str:
    """A fixed colour for each engine: by its row in the registry, others hashed."""
    names = list(ENGINES)
    if name in names:
        return PALETTE[names.index(name) % len(PALETTE)]
    return PALETTE[sum(map(ord, name)) % len(PALETTE)]


def new_axes(ax: Any, figsize: tuple[float, float]):
    """``(figure, ax)``: the given axes' figure, or a new figure of ``figsize``."""
    if ax is not None:
        return ax.figure, ax
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return fig, ax


def new_figure(figsize: tuple[float, float]):
    import matplotlib.pyplot as plt

    return plt.figure(figsize=figsize, layout="constrained")


def as_results(results: Any) -> dict[str, Any]:
    """A FitResult, a list of them, or a mapping name -> FitResult, as an ordered dict."""
    if isinstance(results, Mapping):
        out = dict(results)
    elif hasattr(results, "group_effects"):
        out = {results.engine: results}
    else:
        out = {}
        for r in results:
            out[r.engine if r.engine not in out else f"{r.engine}#{len(out)}"] = r
    if not out:
        raise SpecError("Give at least one fit to plot.")
    return out


def effect_norm(values: np.ndarray, center: float):
    """A diverging colour scale centred on ``center`` and symmetric around it."""
    from matplotlib.colors import TwoSlopeNorm

    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    span = float(np.max(np.abs(values - center))) if values.size else 1.0
    span = span if span > 0 else 1.0
    return TwoSlopeNorm(vcenter=center, vmin=center - span, vmax=center + span)


def check_choice(name: str, value: Any, allowed: list[str]) -> None:
    if value not in allowed:
        raise SpecError(f"'{name}' must be one of: {', '.join(sorted(map(str, allowed)))}. Got {value!r}.")


def short_label(group: str) -> str:
    """The last part of a path label (``Market_01:Sub_2`` -> ``Sub_2``)."""
    return str(group).rsplit(":", 1)[-1]


def fmt(v: float) -> str:
    return "NA" if not np.isfinite(v) else f"{v:.2f}"
