"""One LightGBM tree of a fitted booster, drawn or printed with each node's *kind*.

Kinds: a split on a hierarchy column (one colour per level: ``market``, ``submarket``, ...), a
split on a slope predictor (a predictor some level varies, or a per-group slope column), a split
on another predictor, and a leaf. The national root never appears: it is the same for every
row, so it is not a feature and no tree can split on it (the booster's base score plays its
part). Everything comes from ``booster.dump_model()`` -- the real structure, thresholds and
categories of the fitted tree -- and is drawn with matplotlib alone (no graphviz).

:class:`TreeDisplay` computes nodes in ``from_model()`` and draws in ``plot(ax=None)``;
:func:`plot_tree` and :func:`tree_text` are the one-call forms. Each drawn node's text artist
carries ``gid = "<kind>|<node id>"`` (``s3`` = split 3, ``l5`` = leaf 5), so a figure can be
checked against the dump.

Trees are drawn at a size where their text is legible without zooming: each leaf gets a slot
as wide as the longest (wrapped) label, so a 31-leaf tree is a wide figure meant to be shown
at natural size and scrolled, not shrunk to a page. ``plot(max_depth=k)`` draws only the top
``k`` levels (a cut node says how many leaves hang below it), which fits a page.

Numbering: people read trees as "tree 1 of 109"; the ``tree_index`` argument counts from 0,
as LightGBM does, so tree 1 is ``tree_index=0``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hierfit.exceptions import SpecError
from hierfit.plots._common import new_axes

LEVEL_COLOURS = ["#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#999999"]
FIXED_COLOURS = {"slope": "#D55E00", "predictor": "#0072B2", "leaf": "#EEEEEE"}
MAX_CATEGORIES_SHOWN = 3
#: text size (points) of node labels, branch labels and the legend: at natural size one point is
#: 1.33 CSS pixels, so 8 pt renders as 10.7 px text (lines about 12 px high)
FONT_SIZE = 8.0
#: characters per line of a wrapped node label
LABEL_WIDTH = 18


@dataclass(frozen=True)
class TreeNode:
    """One node: ``id`` (``s<split>``/``l<leaf>``), its kind, text, position and parent."""

    id: str
    kind: str
    text: str
    x: float
    depth: int
    parent: str | None
    branch: str  # "yes" (left) / "no" (right) / "" for the root


def kind_label(kind: str) -> str:
    """Legend text of a kind."""
    if kind.startswith("level:"):
        return f"{kind.split(':', 1)[1]} split"
    return {"slope": "slope-predictor split", "predictor": "other-predictor split", "leaf": "leaf"}[kind]


def kind_colours(kinds: list[str]) -> dict[str, str]:
    """Colour per kind: levels in hierarchy order, then the fixed kinds."""
    levels = [k for k in kinds if k.startswith("level:")]
    out = {k: LEVEL_COLOURS[i % len(LEVEL_COLOURS)] for i, k in enumerate(levels)}
    out.update(FIXED_COLOURS)
    return out


def _resolve(model: Any, feature_kinds: Mapping[str, str] | None) -> tuple[
        Any, dict[str, str] | None, dict[str, tuple[str, ...]], int | None, list[str], dict[str, tuple[float, float]], float]:
    """``(booster, kind per feature name, category labels per feature, trees used, level kinds,
    (centre, scale) per feature for thresholds, the scale of leaf values)``: hierfit grows trees
    on standardised predictors and outcomes, and the plot shows them in the data's units."""
    fit = getattr(model, "engine_fit", model)  # a FitResult or an engine fit
    booster = getattr(fit, "booster", model)
    if not hasattr(booster, "dump_model"):
        raise SpecError(
            f"plot_tree() needs a LightGBM Booster or a fit of engine 'lightgbm' / 'boosted-mixed'; got {type(model).__name__}."
        )
    kinds = dict(feature_kinds) if feature_kinds is not None else None
    labels: dict[str, tuple[str, ...]] = {}
    used = None
    level_kinds: list[str] = []
    features = getattr(fit, "features", None)
    units: dict[str, tuple[float, float]] = {}
    leaf_scale = float(getattr(fit, "label", (0.0, getattr(fit, "scale", 1.0)))[1])
    if features is not None:
        units = features.unit_map()
        kinds = dict(zip(features.names, features.kinds)) if kinds is None else kinds
        used = int(fit.num_iteration)
        hierarchy = getattr(fit, "hierarchy", None) or getattr(getattr(fit, "effects", None), "hierarchy", None)
        if hierarchy is not None:
            level_kinds = [f"level:{n}" for n in hierarchy.names]
            for name, kind in zip(features.names, features.kinds):
                if kind.startswith("level:"):
                    labels[name] = hierarchy.level(kind.split(":", 1)[1]).groups
    return booster, kinds, labels, used, level_kinds, units, leaf_scale


def _split_text(node: dict, name: str, labels: tuple[str, ...] | None, unit: tuple[float, float] = (0.0, 1.0)) -> str:
    if node["decision_type"] == "==":
        cats = [int(c) for c in str(node["threshold"]).split("||")]
        shown = [labels[c] if labels is not None and c < len(labels) else str(c) for c in cats]
        more = f" +{len(shown) - MAX_CATEGORIES_SHOWN} more" if len(shown) > MAX_CATEGORIES_SHOWN else ""
        return f"{name} in {{{', '.join(shown[:MAX_CATEGORIES_SHOWN])}{more}}}"
    return f"{name} {node['decision_type']} {unit[0] + unit[1] * float(node['threshold']):.4g}"


class TreeDisplay:
    """One tree's nodes with kinds and a tidy layout (leaves left to right, parents centred).

    Examples
    --------
    >>> import hierfit
    >>> from hierfit.plots.trees import TreeDisplay
    >>> sim = hierfit.simulate(n_markets=4, n_submarkets=3, rows_per_submarket=30, seed=1)
    >>> fit = hierfit.fit(sim.formula, sim.data, engine="lightgbm", num_threads=1, num_boost_round=20)
    >>> d = TreeDisplay.from_model(fit, tree_index=0)
    >>> d.nodes[0].id, d.nodes[0].kind.startswith(("level:", "slope", "predictor")), d.figure_ is not None
    ('s0', True, True)
    """

    def __init__(self, nodes: list[TreeNode], kinds: list[str], tree_index: int, n_trees: int, details: dict[str, str]) -> None:
        self.nodes = nodes
        self.kinds = kinds
        self.tree_index = tree_index
        self.n_trees = n_trees
        self.details = details
        self.colours = kind_colours(kinds)

    @classmethod
    def from_model(cls, model: Any, tree_index: int = 0, feature_kinds: Mapping[str, str] | None = None, *,
                   ax: Any = None) -> TreeDisplay:
        """Read tree ``tree_index`` of a booster (or of a fit's booster) and draw it."""
        return cls.read(model, tree_index, feature_kinds).plot(ax=ax)

    @classmethod
    def read(cls, model: Any, tree_index: int = 0, feature_kinds: Mapping[str, str] | None = None) -> TreeDisplay:
        """Read tree ``tree_index`` of a booster (or of a fit's booster) from its dump, without drawing.

        ``feature_kinds`` maps feature names to kinds (``"level:<name>"``, ``"slope"``,
        ``"predictor"``) for a bare booster; for hierfit fits it is known. Without it a
        categorical split counts as a level named after its feature.
        """
        booster, kinds, labels, used, level_kinds, units, leaf_scale = _resolve(model, feature_kinds)
        dump = booster.dump_model()
        names = dump["feature_names"]
        n_trees = used if used is not None else len(dump["tree_info"])
        if n_trees == 0:
            raise SpecError(
                "This fit uses no trees: its validation rows showed no gain from them over the mixed model "
                "alone (statistics 'trees_gain' and 'trees_gain_se'), so the model is the mixed model. "
                "Plot the hierarchy (HierarchyTreeDisplay) instead, or refit on data with a nonlinear signal."
            )
        if not isinstance(tree_index, int) or not 0 <= tree_index < n_trees:
            raise SpecError(f"'tree_index' must be an integer from 0 to {n_trees - 1} (the fit uses {n_trees} trees); got {tree_index!r}.")
        nodes: list[TreeNode] = []
        details: dict[str, str] = {}
        found_kinds: list[str] = list(level_kinds)
        leaf_x = [0]

        def kind_of(node: dict) -> str:
            name = names[node["split_feature"]]
            if kinds is not None and name in kinds:
                return kinds[name]
            return f"level:{name}" if node["decision_type"] == "==" else "predictor"

        def walk(node: dict, depth: int, parent: str | None, branch: str) -> float:
            if "leaf_index" in node:
                nid = f"l{node['leaf_index']}"
                x = float(leaf_x[0])
                leaf_x[0] += 1
                value = leaf_scale * float(node["leaf_value"])
                text = f"leaf {node['leaf_index']}\n{value:+.3g}\nn={node.get('leaf_count', '?')}"
                nodes.append(TreeNode(nid, "leaf", text, x, depth, parent, branch))
                details[nid] = f"leaf {node['leaf_index']}: value {value:+.4g} (rows {node.get('leaf_count', '?')})"
                return x
            nid = f"s{node['split_index']}"
            kind = kind_of(node)
            name = names[node["split_feature"]]
            text = _split_text(node, name, labels.get(name), units.get(name, (0.0, 1.0)))
            index = len(nodes)
            nodes.append(TreeNode(nid, kind, text, 0.0, depth, parent, branch))  # x filled below
            left = walk(node["left_child"], depth + 1, nid, "yes")
            right = walk(node["right_child"], depth + 1, nid, "no")
            x = (left + right) / 2
            nodes[index] = TreeNode(nid, kind, text, x, depth, parent, branch)
            details[nid] = f"[{kind_label(kind)}] {text} (gain {node.get('split_gain', float('nan')):.4g}, rows {node.get('internal_count', '?')})"
            if kind not in found_kinds:
                found_kinds.append(kind)
            return x

        walk(dump["tree_info"][tree_index]["tree_structure"], 0, None, "")
        ordered = [k for k in found_kinds if k.startswith("level:")] + ["slope", "predictor", "leaf"]
        return cls(nodes, ordered, tree_index, n_trees, details)

    @classmethod
    def from_result(cls, result: Any, tree_index: int = 0, *, ax: Any = None) -> TreeDisplay:
        """Same as :meth:`from_model` for a fitted ``lightgbm`` / ``boosted-mixed`` result."""
        return cls.from_model(result, tree_index, ax=ax)

    @property
    def depth(self) -> int:
        """Depth of the deepest node (the root is depth 0)."""
        return max(n.depth for n in self.nodes)

    def plot(self, ax: Any = None, max_depth: int | None = None) -> TreeDisplay:
        """Draw the tree (its top ``max_depth`` levels when given); keep ``ax_`` and ``figure_``.

        A new figure is sized so that labels keep :data:`FONT_SIZE` at natural size: show it
        unscaled (the report scrolls it) rather than fitted to a page.
        """
        from matplotlib.patches import Patch

        if max_depth is not None and (not isinstance(max_depth, int) or max_depth < 0):
            raise SpecError(f"'max_depth' must be a non-negative integer or None; got {max_depth!r}.")
        shown, x, hidden = self._layout(max_depth)
        labels = {n.id: self._label(n, hidden.get(n.id, 0)) for n in shown}
        slots = max(x.values()) + 1
        depth = max(n.depth for n in shown)
        fig, ax = new_axes(ax, _figure_size(labels.values(), slots, depth))
        where = {n.id: n for n in shown}
        for n in shown:
            if n.parent is not None:
                p = where[n.parent]
                ax.plot([x[p.id], x[n.id]], [-p.depth, -n.depth], color="#888888", lw=0.8, zorder=1)
                ax.text((x[p.id] + x[n.id]) / 2, -(p.depth + n.depth) / 2, n.branch, fontsize=FONT_SIZE, color="#555555",
                        ha="center", va="center", zorder=2, bbox=dict(boxstyle="square,pad=0.1", fc="white", ec="none"))
        for n in shown:
            t = ax.text(x[n.id], -n.depth, labels[n.id], ha="center", va="center", fontsize=FONT_SIZE, zorder=3,
                        bbox=dict(boxstyle="round,pad=0.3", fc=self.colours[n.kind], ec="#333333", lw=0.5,
                                  ls="--" if n.id in hidden else "-"))
            t.set_gid(f"{n.kind}|{n.id}")
        ax.set_xlim(-0.5, slots - 0.5)
        ax.set_ylim(-depth - 0.5, 0.5)
        ax.axis("off")
        handles = [Patch(facecolor=self.colours[k], edgecolor="#333333", label=kind_label(k)) for k in self.kinds]
        # legend and title at the left, above the tree: a wide tree is scrolled from its left edge
        ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncols=len(handles), fontsize=FONT_SIZE,
                  frameon=False, borderaxespad=0.2)
        cut = f", top {max_depth + 1} of {self.depth + 1} levels" if max_depth is not None and max_depth < self.depth else ""
        ax.set_title(f"{self.title()}{cut}", fontsize=FONT_SIZE + 2, loc="left", pad=2.6 * FONT_SIZE + 4)
        self.figure_ = fig
        self.ax_ = ax
        return self

    def title(self) -> str:
        """``tree 1 of 109``: counted from 1 (``tree_index`` counts from 0)."""
        return f"tree {self.tree_index + 1} of {self.n_trees}"

    def _layout(self, max_depth: int | None) -> tuple[list[TreeNode], dict[str, float], dict[str, int]]:
        """Nodes to draw, their x (slots left to right, parents centred over their children),
        and the number of leaves below each cut node."""
        shown = [n for n in self.nodes if max_depth is None or n.depth <= max_depth]
        children: dict[str, list[str]] = {}
        for n in self.nodes:  # preorder, left child first
            if n.parent is not None:
                children.setdefault(n.parent, []).append(n.id)
        leaves_below: dict[str, int] = {}
        for n in reversed(self.nodes):
            kids = children.get(n.id, [])
            leaves_below[n.id] = sum(leaves_below[k] for k in kids) if kids else 1
        keep = {n.id for n in shown}
        x: dict[str, float] = {}
        next_slot = [0]

        def place(nid: str) -> float:
            kids = [k for k in children.get(nid, []) if k in keep]
            if not kids:
                x[nid] = float(next_slot[0])
                next_slot[0] += 1
            else:
                xs = [place(k) for k in kids]
                x[nid] = (xs[0] + xs[-1]) / 2
            return x[nid]

        place(self.nodes[0].id)
        hidden = {n.id: leaves_below[n.id] for n in shown if children.get(n.id) and n.depth == max_depth}
        return shown, x, hidden

    @staticmethod
    def _label(node: TreeNode, leaves_hidden: int) -> str:
        lines = [textwrap.fill(line, LABEL_WIDTH, break_long_words=False) for line in node.text.split("\n")]
        if leaves_hidden:
            lines.append(f"... {leaves_hidden} leaves below")
        return "\n".join(lines)

    def text(self) -> str:
        """An indented dump naming each split's kind."""
        lines = [f"{self.title()} (tree_index {self.tree_index}; the national root is constant, so never a split)"]
        for n in self.nodes:
            prefix = "  " * n.depth + (f"{n.branch}: " if n.branch else "")
            lines.append(prefix + self.details[n.id])
        return "\n".join(lines)


def _figure_size(labels: Any, slots: float, depth: int) -> tuple[float, float]:
    """Inches that fit ``slots`` labels side by side and ``depth + 1`` rows of them at
    :data:`FONT_SIZE` (DejaVu Sans averages about 0.6 em a character)."""
    split = [label.split("\n") for label in labels]
    chars = max(len(line) for lines in split for line in lines)
    rows = max(len(lines) for lines in split)
    slot = max(72.0, 0.62 * FONT_SIZE * chars + 16)  # points
    step = max(54.0, 1.25 * FONT_SIZE * rows + 26)
    return max(6.0, slots * slot / 72 + 0.4), (depth + 1) * step / 72 + 0.9


def plot_tree(model: Any, tree_index: int = 0, ax: Any = None, feature_kinds: Mapping[str, str] | None = None) -> Any:
    """Draw tree ``tree_index`` of a booster or a ``lightgbm``/``boosted-mixed`` fit, coloured by node kind.

    Examples
    --------
    >>> import hierfit
    >>> from hierfit.plots.trees import plot_tree
    >>> sim = hierfit.simulate(n_markets=4, n_submarkets=3, rows_per_submarket=30, seed=1)
    >>> fit = hierfit.fit(sim.formula, sim.data, engine="lightgbm", num_threads=1, num_boost_round=20)
    >>> fig = plot_tree(fit, tree_index=0)
    """
    return TreeDisplay.from_model(model, tree_index, feature_kinds, ax=ax).figure_


def tree_text(model: Any, tree_index: int = 0, feature_kinds: Mapping[str, str] | None = None) -> str:
    """Annotated text dump of tree ``tree_index``: each split's kind, rule, gain and rows.

    Examples
    --------
    >>> import hierfit
    >>> from hierfit.plots.trees import tree_text
    >>> sim = hierfit.simulate(n_markets=4, n_submarkets=3, rows_per_submarket=30, seed=1)
    >>> fit = hierfit.fit(sim.formula, sim.data, engine="lightgbm", num_threads=1, num_boost_round=20)
    >>> tree_text(fit).splitlines()[1].startswith("[")
    True
    """
    return TreeDisplay.read(model, tree_index, feature_kinds).text()
