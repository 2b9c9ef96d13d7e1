"""Evaluation: cross-validation by row and by held-out group, scores, engine comparison.

* :func:`compare` fits engines on one spec and data and cross-validates them
  (K-fold by row, or leave-groups-out at a level), returning a :class:`Comparison`; on a
  streaming source (Parquet files, an Arrow table, a Dask DataFrame) it holds out groups found
  by a pass, streams each fold's fit and scores held-out rows as sums
  (:mod:`hierfit.evaluate.streamed`);
* :class:`CVScheme` / :func:`parse_cv` say how rows are split into folds; :class:`RowKFold` and
  :class:`LeaveGroupsOut` (or ``CVScheme.splitter()``) give scikit-learn the same folds;
* :func:`predictive` gives a fit's predictive distribution at new rows (densities, CDF,
  replicates), :func:`score` scores held-out rows, :func:`recovery` compares effects with a
  simulation's truth;
* :func:`paired_differences` (``Comparison.paired``) compares engines fold by fold, with the
  standard error of the mean difference, and calls one better only beyond noise.
"""

from hierfit.evaluate.compare import available_engines, compare
from hierfit.evaluate.comparison import Comparison, is_comparison_dir
from hierfit.evaluate.metrics import METRICS, recovery, score
from hierfit.evaluate.paired import paired_differences
from hierfit.evaluate.predictive import Predictive, predictive
from hierfit.evaluate.splits import CVScheme, LeaveGroupsOut, RowKFold, parse_cv

__all__ = [
    "METRICS",
    "CVScheme",
    "Comparison",
    "LeaveGroupsOut",
    "Predictive",
    "RowKFold",
    "available_engines",
    "compare",
    "is_comparison_dir",
    "paired_differences",
    "parse_cv",
    "predictive",
    "recovery",
    "score",
]
