"""Engine ``lightgbm`` on a streamed source: ``lightgbm.dask`` on features built per piece.

The same model as in memory (:mod:`.lightgbm_engine`), fitted without the rows in one place:

1. the feature map (population columns centred and scaled, one categorical code column per
   level, per-group slope columns) comes from the streamed design -- its encoding and column
   moments -- so every partition is encoded as new rows are at prediction time;
2. the gaussian target ``(y - offset - centre) / scale`` is standardised with the design's
   moments (weighted: one fold), as in memory;
3. a Dask DataFrame of features, one partition per piece of the source (each built on the
   worker that computes it), trains ``num_boost_round`` trees with ``lightgbm.dask`` on the
   training rows (data-parallel: each worker builds histograms of its partitions, LightGBM
   sums them over the network);
4. early stopping is LightGBM's rule (``early_stopping_rounds`` trees without a strict
   improvement of the validation loss) applied to the whole validation curve, computed by one
   fold over the source from the rows' leaves (:func:`._distributed.leaf_table`); the fit keeps
   that many trees. The same fold gives ``rmse_train`` / ``rmse_valid``;
5. the group effects are derived by partial dependence as in memory, on reference rows
   sampled by one fold (up to ``pd_rows_per_group`` rows of each deepest-level group).

What differs from the in-memory fit of the same rows, and by how much: LightGBM's distributed
dataset finds its histogram bins from each worker's rows, so the trees differ slightly from
the serial ones; and the validation rows are chosen per row by hash (see :mod:`._distributed`).
``tests/test_sources_boosting.py`` measures the effect on predictions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import pandas as pd

from hierfit.checks import Diagnostic
from hierfit.design import Design
from hierfit.design.sources import Batch, CompensatedSum
from hierfit.design.streamed import StreamedDesign, stream_labels
from hierfit.engines.boosting._booster import lgb_params
from hierfit.engines.boosting._distributed import (
    LABEL,
    VALID,
    WEIGHT,
    ReferencePass,
    RowSplit,
    compensated,
    dask_train,
    early_stopping_point,
    encode_batch,
    feature_frame,
    leaf_table,
    require_random_validation,
    staged_scores,
    staged_sums,
    target_standardisation,
    training_client,
)
from hierfit.engines.boosting._features import OBJECTIVES, FeatureMap, require_chain
from hierfit.engines.boosting._partial import PathAverager
from hierfit.exceptions import EngineError
from hierfit.model import ModelSpec

__all__ = ["FeaturePass", "StagedLossPass", "fit_streamed"]

#: rows per block of the staged-score matrix (rows x trees floats)
_BLOCK_ROWS = 4096


@dataclass(frozen=True, eq=False)
class FeaturePass:
    """Per batch: the LightGBM features, standardised label, relative case weight and the
    validation flag of each row (one partition of the training frame)."""

    encoding: Any
    features: FeatureMap
    centre: float
    scale: float
    split: RowSplit
    mean_weight: float | None
    labels: tuple[str, ...] = ()

    def meta(self) -> pd.DataFrame:
        cols: dict[str, Any] = {n: pd.Series(dtype=np.float64) for n in self.features.names}
        cols.update({LABEL: pd.Series(dtype=np.float64), WEIGHT: pd.Series(dtype=np.float64), VALID: pd.Series(dtype=bool)})
        return pd.DataFrame(cols)

    def __call__(self, batch: Batch) -> pd.DataFrame:
        d, w = encode_batch(self.encoding, batch.frame)
        out = pd.DataFrame(self.features.matrix(d), columns=list(self.features.names))
        t = d.y if d.offset is None else d.y - d.offset
        out[LABEL] = (t - self.centre) / self.scale
        out[WEIGHT] = 1.0 if w is None or self.mean_weight is None else w / self.mean_weight
        out[VALID] = self.split.valid(d)
        return out


@dataclass(frozen=True, eq=False)
class StagedLossPass:
    """Per batch: per number of trees, the weighted squared error of the training and of the
    validation rows (in the outcome's units), and their weights and counts."""

    encoding: Any
    features: FeatureMap
    booster: Any
    table: np.ndarray
    centre: float
    scale: float
    split: RowSplit
    labels: tuple[str, ...] = ()

    def __call__(self, batch: Batch) -> CompensatedSum:
        d, w = encode_batch(self.encoding, batch.frame)
        w = np.ones(d.n) if w is None else w
        valid = self.split.valid(d)
        X = self.features.matrix(d)
        target = d.y if d.offset is None else d.y - d.offset
        T = self.table.shape[0]
        sums = [np.zeros(T), np.zeros(T)]
        for start in range(0, d.n, _BLOCK_ROWS):
            rows = slice(start, min(d.n, start + _BLOCK_ROWS))
            scores = self.centre + self.scale * staged_scores(self.booster, self.table, X[rows])
            for k, mask in enumerate((~valid[rows], valid[rows])):
                s, _ = staged_sums(scores, target[rows], w[rows], mask)
                sums[k] += s
        counts = np.array([w[~valid].sum(), w[valid].sum(), np.count_nonzero(~valid), np.count_nonzero(valid)], dtype=float)
        return compensated([*sums, counts])


def fit_streamed(design: StreamedDesign, spec: ModelSpec, options: Any) -> Any:
    """Fit engine ``lightgbm`` on a streamed design (see the module docstring)."""
    from hierfit.engines.boosting.lightgbm_engine import LightGBMFit, derive_effects, spread_table

    if not spec.family.normal_errors:
        raise EngineError(f"Engine 'lightgbm' streams gaussian models only; got family {spec.family.name!r}. Fit a "
                          "pandas DataFrame for the other families.")
    require_chain(design.hierarchy, "lightgbm")
    require_random_validation("lightgbm", options.validation)
    features = FeatureMap.from_streamed(design, groups=True, slope_features=options.slope_features)
    params = lgb_params(options, OBJECTIVES[spec.family.name])
    params.update({"min_data_per_group": options.min_data_per_group, "cat_smooth": options.cat_smooth})
    params.update(dict(options.params))
    centre, scale, mean_weight = target_standardisation(design)
    split = RowSplit(options.validation_fraction, options.seed)
    labels = stream_labels(spec, design.source.schema)
    source, columns = design.source, design.read_columns
    with training_client(options.dask_workers) as client:
        task = FeaturePass(design.encoding, features, centre, scale, split, mean_weight, labels)
        frame = feature_frame(source, task, columns, task.meta())
        train = frame[~frame[VALID]]
        booster = dask_train(client, train, features.names, params, options.num_boost_round,
                             weighted=mean_weight is not None, categorical=features.categorical)
        table = leaf_table(booster)
        sums = source.fold(StagedLossPass(design.encoding, features, booster, table, centre, scale, split, labels),
                           CompensatedSum.merge, columns, what="early-stopping pass").values()
    sse_train, sse_valid, (w_train, w_valid, n_train, n_valid) = sums
    trees = table.shape[0]
    best = early_stopping_point(sse_valid / w_valid, options.early_stopping_rounds) if w_valid > 0 else trees
    diagnostics = []
    if best >= options.num_boost_round:
        diagnostics.append(Diagnostic("early_stopping", f"LightGBM used all {options.num_boost_round} rounds without the validation loss "
                                      "levelling off; raise num_boost_round or learning_rate."))
    # partial dependence on a sample of rows: the in-memory derivation, on those rows
    sample = ReferencePass(design.encoding, options.pd_rows_per_group, options.seed).rows(source, columns)
    ref, _ = encode_batch(design.encoding, sample)
    averager = PathAverager.sampled(design.hierarchy, features, options.pd_max_paths, options.seed)
    predict = lambda M: centre + scale * booster.predict(M, raw_score=True, num_iteration=best)
    rows = np.arange(ref.n)
    root, parts = averager.parts(ref, predict, rows)
    national, beta, b = derive_effects(ref, rows, root, parts)
    statistics = {"n_obs": float(design.n), "n_trees": float(best), "n_train": float(n_train), "n_valid": float(n_valid),
                  "rmse_train": float(np.sqrt(sse_train[best - 1] / w_train)) if w_train > 0 else float("nan"),
                  "rmse_valid": float(np.sqrt(sse_valid[best - 1] / w_valid)) if w_valid > 0 else float("nan")}
    structure = cast(Design, design)  # the fit reads only the design's structure (names, terms, tree)
    table_ = spread_table(structure, b, statistics["rmse_valid"])
    return LightGBMFit(booster=booster, features=features, averager=averager, design=structure, num_iteration=best,
                       national=national, beta=beta, b=b, variance_table=table_, statistics=statistics,
                       diagnostics=diagnostics, label=(centre, scale))
