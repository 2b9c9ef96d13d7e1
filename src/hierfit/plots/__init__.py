"""Plots as Display objects: compute in ``from_result()`` / ``from_comparison()``, draw in
``plot(ax=None)``, which returns the matplotlib figure (also kept as ``display.figure_``).

* :class:`HierarchyTreeDisplay` -- national -> markets -> submarkets with each node's effect;
* :class:`CaterpillarDisplay` -- a level's group effects, one engine or several side by side;
* :class:`ShrinkageDisplay` -- no-pooling vs partial-pooling estimates per group;
* :class:`PredictiveCheckDisplay` -- replicated vs observed data, PIT calibration;
* :class:`ComparisonDisplay` -- cross-validation metrics per engine;
* :class:`DecompositionDisplay` -- stacked national / market / submarket / slope parts of rows;
* :class:`TreeDisplay`, :func:`plot_tree`, :func:`tree_text` -- one LightGBM tree of a booster.
"""

from hierfit.plots.comparison import ComparisonDisplay
from hierfit.plots.decomposition import DecompositionDisplay
from hierfit.plots.effects import CaterpillarDisplay, ShrinkageDisplay
from hierfit.plots.hierarchy import HierarchyTreeDisplay
from hierfit.plots.predictive import PredictiveCheckDisplay
from hierfit.plots.trees import TreeDisplay, plot_tree, tree_text

__all__ = [
    "CaterpillarDisplay",
    "ComparisonDisplay",
    "DecompositionDisplay",
    "HierarchyTreeDisplay",
    "PredictiveCheckDisplay",
    "ShrinkageDisplay",
    "TreeDisplay",
    "plot_tree",
    "tree_text",
]
