"""The hierarchy drawn as a tree: national -> markets -> submarkets, each node's effect.

Each node shows its estimate and interval and is coloured by the estimate (a diverging
scale centred on the national value for totals, on zero for deviations). A forest panel on
the right repeats the leaves' estimates and intervals on a common axis.

Large trees stay legible: when the leaves would exceed ``max_rows`` rows, the deepest level is
collapsed into one row per parent, drawn as a strip of coloured cells (one per child, sorted
by effect) with the children's range; ``expand=[...]`` opens chosen groups again. When even
the top level has more than ``max_rows`` groups, the tree is paged (``page=``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hierfit.exceptions import SpecError
from hierfit.plots._common import (
    check_choice,
    effect_norm,
    fmt,
    new_axes,
    new_figure,
    short_label,
)

ROW_INCHES = 0.27
COLUMN_INCHES = 2.3


@dataclass(eq=False)
class _Node:
    level: str
    group: str
    depth: int
    estimate: float
    lower: float
    upper: float
    n_rows: int
    children: list[_Node] = field(default_factory=list)
    # layout, filled by HierarchyTreeDisplay
    y: float = 0.0
    collapsed: bool = False

    @property
    def label(self) -> str:
        return self.group if self.depth == 0 else short_label(self.group)

    def descendants_at_leaves(self) -> np.ndarray:
        """Estimates of the deepest nodes under this one (for a collapsed strip)."""
        if not self.children:
            return np.array([self.estimate])
        return np.concatenate([c.descendants_at_leaves() for c in self.children])


class HierarchyTreeDisplay:
    """Tree of group effects: :meth:`from_result` computes the layout and draws it.

    Examples
    --------
    >>> import hierfit
    >>> from hierfit.plots import HierarchyTreeDisplay
    >>> sim = hierfit.simulate(n_markets=4, n_submarkets=3, rows_per_submarket=20, seed=1)
    >>> fit = hierfit.fit(sim.formula, sim.data, engine="ols", national="United_state")
    >>> display = HierarchyTreeDisplay.from_result(fit)
    >>> display.n_rows, display.n_pages, display.figure_ is not None
    (12, 1, True)
    """

    def __init__(self, root: _Node, rows: list[_Node], *, term: str, kind: str, engine: str, interval: float, page: int, n_pages: int, center: float) -> None:
        self.root = root
        self.rows = rows
        self.term = term
        self.kind = kind
        self.engine = engine
        self.interval = interval
        self.page = page
        self.n_pages = n_pages
        self.center = center

    @property
    def n_rows(self) -> int:
        return len(self.rows)

    @classmethod
    def from_result(
        cls,
        result,
        term: str = "Intercept",
        kind: str = "total",
        interval: float = 0.9,
        max_rows: int = 60,
        expand: Sequence[str] = (),
        page: int = 0,
        *,
        ax: Any = None,
    ) -> HierarchyTreeDisplay:
        """Compute the tree layout from a fit's group effects.

        Parameters
        ----------
        result
            A FitResult.
        term
            Which coefficient's effects to show (``"Intercept"``, or a varying slope).
        kind
            ``"total"`` (national + deviations down to the group) or ``"deviation"``.
        interval
            Interval probability.
        max_rows
            Most leaf rows drawn; deeper levels are collapsed beyond it.
        expand
            Group labels (full, e.g. ``"Market_03"``) whose children stay open when collapsing.
        page
            Page of top-level groups when even those exceed ``max_rows``.
        """
        check_choice("kind", kind, ["deviation", "total"])
        effects = result.group_effects(kind, level=interval)
        terms = sorted(effects["term"].unique())
        check_choice("term", term, terms)
        effects = effects[effects["term"] == term]
        hierarchy = result.hierarchy
        nat = effects[effects["level"] == "national"]
        root_est = float(nat["estimate"].iloc[0]) if len(nat) else (0.0 if kind == "deviation" else np.nan)
        root = _Node(
            "national", hierarchy.national, 0, root_est,
            float(nat["lower"].iloc[0]) if len(nat) else np.nan, float(nat["upper"].iloc[0]) if len(nat) else np.nan, int(getattr(result, "n_obs", hierarchy.n_rows)),
        )  # fmt: skip
        nodes = {("national", hierarchy.national): root}
        for lv in hierarchy.levels:
            rows = effects[effects["level"] == lv.name]
            for r in rows.itertuples(index=False):
                parent = nodes.get((lv.parent, r.parent), root) if lv.parent else root
                node = _Node(lv.name, str(r.group), parent.depth + 1, float(r.estimate), float(r.lower), float(r.upper), int(r.n_rows))
                parent.children.append(node)
                nodes[(lv.name, str(r.group))] = node
        if not root.children:
            raise SpecError(f"No group-level effects of {term!r} to draw; the formula has no (... | group) term for it.")
        expand_set = set(map(str, expand))
        max_depth = max(n.depth for n in nodes.values())
        cut = max_depth
        while cut > 1 and _count_rows(root, cut, expand_set) > max_rows:
            cut -= 1
        pages = _pages(root, cut, expand_set, max_rows)
        if not 0 <= page < len(pages):
            raise SpecError(f"'page' must be between 0 and {len(pages) - 1} for this tree; got {page!r}.")
        shown = _Node(root.level, root.group, 0, root.estimate, root.lower, root.upper, root.n_rows, pages[page])
        rows_out: list[_Node] = []
        _layout(shown, cut, expand_set, rows_out)
        center = root_est if kind == "total" and np.isfinite(root_est) else 0.0
        return cls(shown, rows_out, term=term, kind=kind, engine=result.engine, interval=interval, page=page,
                   n_pages=len(pages), center=center).plot(ax=ax)

    # -- drawing ------------------------------------------------------------------------------
    def plot(self, ax: Any = None) -> HierarchyTreeDisplay:
        """Draw the tree (and, on a new figure, the leaves' forest panel); keep ``ax_`` and
        ``figure_``; return the display."""
        import matplotlib

        n = max(self.n_rows, 1)
        depth = max(_max_depth(self.root), 1)
        has_strip = any(r.collapsed for r in self.rows)
        n_cols = depth + 1 + (1 if has_strip else 0)
        height = max(3.5, ROW_INCHES * n + 1.6)
        if ax is None:
            fig = new_figure((COLUMN_INCHES * n_cols + 3.6, height))
            tree_ax, forest_ax = fig.subplots(1, 2, sharey=True, width_ratios=[COLUMN_INCHES * n_cols, 3.6])
        else:
            fig, tree_ax = new_axes(ax, (COLUMN_INCHES * n_cols, height))
            forest_ax = None
        values = [self.root.estimate] + [r.estimate for r in _all(self.root)]
        for r in self.rows:
            if r.collapsed:
                values.extend(r.descendants_at_leaves())
        norm = effect_norm(np.array(values), self.center)
        cmap = matplotlib.colormaps["RdBu_r"]
        self._draw_tree(tree_ax, norm, cmap)
        tree_ax.set_xlim(-0.08, n_cols - 0.05)
        tree_ax.set_ylim(n - 0.4, -0.8)
        tree_ax.axis("off")
        if forest_ax is not None:
            self._draw_forest(forest_ax, norm, cmap)
        page = f" — page {self.page + 1} of {self.n_pages}" if self.n_pages > 1 else ""
        title = f"{self.engine}: {self.kind} {self.term} effects by level, {int(self.interval * 100)}% intervals{page}"
        (fig.suptitle if forest_ax is not None else tree_ax.set_title)(title, fontsize=11)
        from matplotlib.cm import ScalarMappable

        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=forest_ax if forest_ax is not None else tree_ax, location="bottom", shrink=0.8, pad=0.01, aspect=30)
        bar.set_label(f"{self.kind} effect ({self.term})", fontsize=8)
        bar.ax.tick_params(labelsize=7)
        self.figure_ = fig
        self.ax_ = tree_ax
        return self

    def _draw_tree(self, ax, norm, cmap) -> None:
        from matplotlib.collections import LineCollection, PatchCollection
        from matplotlib.patches import Rectangle

        stub = 0.93  # where a parent's connector turns down to its children
        segments: list[list[tuple[float, float]]] = []
        cells: list[Rectangle] = []
        cell_colors: list = []
        nodes = [self.root, *_all(self.root)]
        for node in nodes:
            x = node.depth
            kids = node.children if not node.collapsed else []
            if kids:
                ys = [k.y for k in kids]
                segments.append([(x, node.y), (x + stub, node.y)])
                segments.append([(x + stub, min(ys)), (x + stub, max(ys))])
                segments.extend([(x + stub, k.y), (x + 1, k.y)] for k in kids)
            text = f"{node.label}  {fmt(node.estimate)}"
            if np.isfinite(node.lower):
                text += f" [{fmt(node.lower)}, {fmt(node.upper)}]"
            ax.text(
                x + 0.05, node.y, text, va="center", ha="left", fontsize=8 if node.depth else 9,
                fontweight="bold" if node.depth == 0 else "normal", zorder=2,
                bbox=dict(boxstyle="square,pad=0.1", fc="white", ec="none"),
            )  # fmt: skip
            if node.collapsed:
                vals = np.sort(node.descendants_at_leaves())
                x0, width = x + 1.0, 0.55
                cell = width / len(vals)
                cells.extend(Rectangle((x0 + i * cell, node.y - 0.32), cell, 0.64) for i in range(len(vals)))
                cell_colors.extend(cmap(norm(v)) for v in vals)
                ax.add_patch(Rectangle((x0, node.y - 0.32), width, 0.64, facecolor="none", edgecolor="0.4", lw=0.5, zorder=3))
                segments.append([(x + stub, node.y), (x0, node.y)])
                kind = f"{node.children[0].level} groups" if len(node.children) == len(vals) else "groups"
                ax.text(x0 + width + 0.03, node.y, f"{len(vals)} {kind}, {fmt(vals[0])} to {fmt(vals[-1])}", va="center", fontsize=7, color="0.25")
        ax.add_collection(LineCollection(segments, colors="0.6", linewidths=0.8, zorder=1))
        if cells:
            ax.add_collection(PatchCollection(cells, facecolors=cell_colors, edgecolors="none", zorder=2))
        est = np.array([n.estimate for n in nodes])
        colors = [cmap(norm(v)) if np.isfinite(v) else "0.8" for v in est]
        sizes = [70 if n.depth == 0 else 42 for n in nodes]
        ax.scatter([n.depth for n in nodes], [n.y for n in nodes], s=sizes, c=colors, edgecolors="0.2", linewidths=0.6, zorder=3)

    def _draw_forest(self, ax, norm, cmap) -> None:
        for r in self.rows:
            if r.collapsed:
                vals = r.descendants_at_leaves()
                ax.plot([vals.min(), vals.max()], [r.y, r.y], color="0.55", lw=1.2)
                ax.scatter(vals, np.full(len(vals), r.y), s=12, color=[cmap(norm(v)) for v in vals], edgecolor="0.3", linewidth=0.3, zorder=3)
            else:
                if np.isfinite(r.lower):
                    ax.plot([r.lower, r.upper], [r.y, r.y], color="0.35", lw=1.6, solid_capstyle="round")
                ax.scatter([r.estimate], [r.y], s=24, color=cmap(norm(r.estimate)), edgecolor="0.15", linewidth=0.6, zorder=3)
        if np.isfinite(self.root.estimate):
            ax.axvline(self.root.estimate, color="0.3", lw=0.8, ls="--")
        ax.set_xlabel(f"{self.kind} effect ({self.term})", fontsize=9)
        ax.tick_params(left=False, labelleft=False, labelsize=8)
        ax.grid(axis="x", color="0.9")
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)


def _count_rows(node: _Node, cut: int, expand: set[str]) -> int:
    if not node.children:
        return 1
    if node.depth >= cut and node.group not in expand:
        return 1
    return sum(_count_rows(c, cut, expand) for c in node.children)


def _pages(root: _Node, cut: int, expand: set[str], max_rows: int) -> list[list[_Node]]:
    pages: list[list[_Node]] = [[]]
    used = 0
    for child in root.children:
        rows = _count_rows(child, cut, expand)
        if pages[-1] and used + rows > max_rows:
            pages.append([])
            used = 0
        pages[-1].append(child)
        used += rows
    return pages


def _layout(node: _Node, cut: int, expand: set[str], rows: list[_Node]) -> None:
    node.collapsed = bool(node.children) and node.depth >= cut and node.group not in expand
    if not node.children or node.collapsed:
        node.y = float(len(rows))
        rows.append(node)
        return
    for c in node.children:
        _layout(c, cut, expand, rows)
    node.y = (node.children[0].y + node.children[-1].y) / 2


def _all(node: _Node) -> list[_Node]:
    out: list[_Node] = []
    if node.collapsed:
        return out
    for c in node.children:
        out.append(c)
        out.extend(_all(c))
    return out


def _max_depth(node: _Node) -> int:
    if node.collapsed or not node.children:
        return node.depth
    return max(_max_depth(c) for c in node.children)
