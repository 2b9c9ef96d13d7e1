"""LightGBM tree plot and text dump: drawn from the booster's real structure, coloured by kind."""

from __future__ import annotations

import warnings

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

import hierfit  # noqa: E402
from hierfit.exceptions import SpecError  # noqa: E402

pytest.importorskip("lightgbm")

from hierfit.plots.trees import TreeDisplay, kind_colours, plot_tree, tree_text  # noqa: E402


@pytest.fixture(scope="module")
def tree_fits():
    # a nonlinear f(x), so that boosted-mixed keeps trees (on linear data it keeps none)
    sim = hierfit.simulate(n_markets=6, n_submarkets=4, rows_per_submarket=60, seed=11, nonlinear="all", national_name="United_state")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lgb_fit = hierfit.fit(sim.formula, sim.data, engine="lightgbm", num_threads=1, num_boost_round=40, num_leaves=8)
        bm_fit = hierfit.fit(sim.formula, sim.data, engine="boosted-mixed", num_threads=1, max_rounds=3, num_leaves=8)
    return lgb_fit, bm_fit


def _dump_kinds(fit, tree_index: int) -> dict[str, str]:
    """Kind of every node, read independently from the booster dump and the feature map."""
    ef = fit.engine_fit
    dump = ef.booster.dump_model()
    kind_of = dict(zip(ef.features.names, ef.features.kinds))
    names = dump["feature_names"]
    out: dict[str, str] = {}

    def walk(node: dict) -> None:
        if "leaf_index" in node:
            out[f"l{node['leaf_index']}"] = "leaf"
            return
        out[f"s{node['split_index']}"] = kind_of[names[node["split_feature"]]]
        walk(node["left_child"])
        walk(node["right_child"])

    walk(dump["tree_info"][tree_index]["tree_structure"])
    return out


def _drawn(fig) -> dict[str, tuple[str, tuple]]:
    ax = fig.axes[0]
    out = {}
    for t in ax.texts:
        gid = t.get_gid()
        if gid:
            kind, node = gid.split("|")
            out[node] = (kind, tuple(t.get_bbox_patch().get_facecolor()))
    return out


@pytest.mark.parametrize("tree_index", [0, 3])
def test_node_colours_match_the_dump(tree_fits, tree_index, tmp_path) -> None:
    from matplotlib.colors import to_rgba

    fit = tree_fits[0]
    fig = plot_tree(fit, tree_index=tree_index)
    path = tmp_path / "tree.png"
    fig.savefig(path)
    assert path.stat().st_size > 5_000 and path.read_bytes()[:4] == b"\x89PNG"
    expected = _dump_kinds(fit, tree_index)
    drawn = _drawn(fig)
    assert set(drawn) == set(expected)  # every node of the real tree is drawn, nothing else
    colours = kind_colours(["level:market", "level:submarket"])
    for node, (kind, face) in drawn.items():
        assert kind == expected[node]
        assert face == pytest.approx(to_rgba(colours[kind]))
    # the first trees split on the hierarchy: group structure dominates the signal
    assert any(k.startswith("level:") for k in expected.values())
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["market split", "submarket split", "slope-predictor split", "other-predictor split", "leaf"]


def test_text_dump_names_each_split(tree_fits) -> None:
    fit = tree_fits[0]
    text = tree_text(fit, 0)
    lines = text.splitlines()[1:]
    expected = _dump_kinds(fit, 0)
    assert len(lines) == len(expected)
    n_splits = sum(k != "leaf" for k in expected.values())
    assert sum(line.lstrip().split(": ", 1)[-1].startswith("[") for line in lines) == n_splits
    assert "[market split]" in text or "[submarket split]" in text
    assert "Market_0" in text  # categories are shown by their group labels, not integer codes


def test_boosted_mixed_trees_have_no_group_splits(tree_fits, tmp_path) -> None:
    bm = tree_fits[1]
    fig = plot_tree(bm, tree_index=0)
    kinds = {kind for kind, _ in _drawn(fig).values()}
    assert kinds <= {"slope", "predictor", "leaf"}
    assert "split]" in tree_text(bm, 0)


def test_bare_booster_and_bad_index(tree_fits) -> None:
    fit = tree_fits[0]
    booster = fit.native()
    d = TreeDisplay.from_model(booster, 0)
    cats = {n.kind for n in d.nodes if n.kind.startswith("level:")}
    assert cats <= {"level:market", "level:submarket"}  # categorical splits named after the feature
    with pytest.raises(SpecError, match="tree_index"):
        plot_tree(fit, tree_index=10_000)
    with pytest.raises(SpecError, match="LightGBM Booster"):
        tree_text(np.zeros(3))


def test_a_fit_without_trees_says_why() -> None:
    """Linear data: boosted-mixed keeps no trees, and asking for one explains that."""
    sim = hierfit.simulate(n_markets=6, n_submarkets=3, rows_per_submarket=10, seed=3, national_name="United_state")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bm = hierfit.fit(sim.formula, sim.data, engine="boosted-mixed", num_threads=1, max_rounds=5)
    assert bm.statistics["n_trees"] == 0
    with pytest.raises(SpecError, match="uses no trees"):
        plot_tree(bm)


def _label_boxes(fig):
    """Window extents (pixels at the figure's dpi) of every node label's box, by node id."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    return {t.get_gid().split("|")[1]: (t, t.get_bbox_patch().get_window_extent(renderer)) for t in fig.axes[0].texts if t.get_gid()}


def test_labels_are_legible_at_natural_size_and_never_overlap(tree_fits) -> None:
    """At 96 dpi (a browser's 100%), each label line is at least 9 px high and no two node
    boxes overlap, so the figure can be shown unscaled rather than squeezed to a page."""
    fig = plot_tree(tree_fits[0], tree_index=0)
    fig.set_dpi(96)
    boxes = _label_boxes(fig)
    renderer = fig.canvas.get_renderer()
    for text, _ in boxes.values():
        lines = text.get_text().count("\n") + 1
        assert text.get_window_extent(renderer).height / lines >= 9
    extents = [box for _, box in boxes.values()]
    for i, a in enumerate(extents):
        for b in extents[i + 1:]:
            assert not a.overlaps(b), "two node labels overlap"


def test_top_levels_only_and_one_numbering(tree_fits) -> None:
    d = TreeDisplay.read(tree_fits[0], tree_index=2)
    assert d.depth >= 3, "the test needs a tree deeper than the cut"
    d.plot(max_depth=2)
    boxes = _label_boxes(d.figure_)
    assert set(boxes) == {n.id for n in d.nodes if n.depth <= 2}
    cut = {nid: text.get_text() for nid, (text, _) in boxes.items() if "leaves below" in text.get_text()}
    assert cut, "a node cut at the last drawn level says what hangs below it"
    shown_leaves = sum(n.kind == "leaf" for n in d.nodes if n.depth <= 2)
    hidden = sum(int(label.rsplit("... ", 1)[1].split()[0]) for label in cut.values())
    assert shown_leaves + hidden == sum(n.kind == "leaf" for n in d.nodes)
    # humans count trees from 1, the argument from 0: both say so the same way everywhere
    assert d.ax_.get_title(loc="left").startswith(f"tree 3 of {d.n_trees}, top 3 of {d.depth + 1} levels")
    assert d.text().splitlines()[0].startswith(f"tree 3 of {d.n_trees} (tree_index 2;")
    with pytest.raises(SpecError, match="max_depth"):
        d.plot(max_depth=-1)
