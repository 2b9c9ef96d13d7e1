"""Engine ``boosted-mixed`` on a streamed source: ``lightgbm.dask`` alternating with the streamed mixed fit.

The alternation of :mod:`.boosted_mixed`, with neither step holding the rows:

* *effects step* -- the streamed gaussian mixed model (:func:`hierfit.engines.mixed._stream.
  fit_streamed_lmm`, through the ``mixed`` engine) of the training rows, with the trees as a
  known part of the mean: the source is read through :class:`ShiftedPiece`, which adds to
  every batch a column :data:`OFFSET` = the user's offset column + ``f(x) - c`` (``f`` the
  booster's prediction for the row, computed where the batch is read), and the model's spec
  names that column as its offset. Its streamed design is built again each round (the
  offset's moments and the training rows' groups are new);
* *validation loss* -- one fold over the validation rows: the squared error of this round's
  fit and of round 0's (the mixed model alone), whose per-row difference decides whether the
  trees are kept (:class:`~hierfit.engines.heldout_gain.HeldoutGain`, from its sums);
* *tree step* -- ``trees_per_round`` more trees with ``lightgbm.dask``, continuing the booster
  (``init_model``), on the residual target ``(y - eta) / s + f_s`` of the training rows (``eta``
  the effects step's full predictor, ``f_s`` the trees' score on the outcome's scale ``s``):
  the squared-error Newton step of the in-memory custom objective, with the mixed part as a
  known part of the score.

After the best round the effects step is run once more on every row with the kept trees, so
the reported effects are exactly the streamed mixed model's given ``f``; ``c`` is the mean of
``f`` over all rows (one fold), so the intercept keeps its meaning. A model with an intercept
does not need ``c`` during the alternation (it only moves the intercept), so those folds are
skipped there.

Gaussian outcomes only: the distributed mixed step is the gaussian REML/ML fit. Differences
from the in-memory fit: LightGBM's distributed histograms, the hash-chosen validation rows
(:mod:`._distributed`), and that the alternation runs in the outcome's own units (the mixed
fit is equivariant; only LightGBM's labels are standardised).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from hierfit.checks import CHECKS, Diagnostic
from hierfit.design import DesignEncoding
from hierfit.design.sources import Batch, CompensatedSum, FramePiece, Source
from hierfit.design.streamed import StreamedDesign, build_streamed_design, stream_labels
from hierfit.engines.base import EngineFit
from hierfit.engines.boosting._booster import lgb_params
from hierfit.engines.boosting._distributed import (
    LABEL,
    WEIGHT,
    RowSplit,
    compensated,
    dask_train,
    encode_batch,
    feature_frame,
    require_random_validation,
    target_standardisation,
    training_client,
)
from hierfit.engines.boosting._features import FeatureMap
from hierfit.engines.heldout_gain import HeldoutGain
from hierfit.exceptions import EngineError, SpecError
from hierfit.formula import INTERCEPT
from hierfit.model import ModelSpec

__all__ = ["OFFSET", "EvalPass", "ShiftedPiece", "TreePass", "Trees", "fit_streamed"]

#: the column the effects step reads as its offset: the user's offset plus the centred trees
OFFSET = "__hierfit_trees_offset__"

#: the design passes of the effects step run every round: their checks were made (and
#: reported) once, by the design pass of the fit
_QUIET = {name: "ignore" for name in CHECKS}


@dataclass(frozen=True, eq=False)
class Trees:
    """The first ``n_trees`` trees of ``booster`` as ``f(x) - c`` in the outcome's units."""

    encoding: DesignEncoding
    features: FeatureMap
    booster: Any
    n_trees: int
    scale: float
    centre: float = 0.0

    def score(self, d: Any) -> np.ndarray:
        """The trees' raw score (the standardised outcome's scale) at the rows of ``d``."""
        if self.booster is None or self.n_trees == 0:
            return np.zeros(d.n)
        return np.asarray(self.booster.predict(self.features.matrix(d), raw_score=True, num_iteration=self.n_trees))

    def with_offset(self, frame: pd.DataFrame, d: Any, user_offset: str | None) -> tuple[pd.DataFrame, np.ndarray]:
        """``frame`` with the :data:`OFFSET` column, and the trees' raw score."""
        raw = self.score(d)
        out = frame.copy()
        base = frame[user_offset].to_numpy(dtype=np.float64) if user_offset is not None else 0.0
        out[OFFSET] = base + self.scale * raw - self.centre
        return out, raw


@dataclass(frozen=True, eq=False)
class ShiftedPiece:
    """A piece of the source read with the :data:`OFFSET` column added, its training rows only
    (``train_only``) or all of them. ``inner`` is the source's piece (a pandas frame once a
    Dask partition is computed on its worker: Dask computes the fields of a dataclass)."""

    inner: Any
    trees: Trees
    columns: tuple[str, ...]
    split: RowSplit
    user_offset: str | None
    train_only: bool
    label: str

    def batches(self, columns: Sequence[str], batch_size: int, index: int, labels: Collection[str] = ()) -> Iterator[Batch]:
        inner = FramePiece(self.inner, self.label) if isinstance(self.inner, pd.DataFrame) else self.inner
        for batch in inner.batches(self.columns, batch_size, index, labels):
            d, _ = encode_batch(self.trees.encoding, batch.frame)
            frame, _ = self.trees.with_offset(batch.frame, d, self.user_offset)
            if self.train_only:
                frame = frame[~self.split.valid(d)]
            if len(frame):
                yield Batch(frame[list(columns)], batch.where, batch.piece)


def shifted_source(source: Source, trees: Trees, columns: Sequence[str], split: RowSplit, user_offset: str | None,
                   train_only: bool) -> Source:
    """``source`` read through :class:`ShiftedPiece` (the fold runs where the source's runs)."""
    # a Dask partition is a Delayed (any attribute of it is a lazy task): name it by position
    pieces = tuple(ShiftedPiece(p, trees, tuple(columns), split, user_offset, train_only,
                                f"partition {i}" if source.kind == "dask" else str(p.label)) for i, p in enumerate(source.pieces))
    schema = source.schema.copy()
    schema[OFFSET] = pd.Series(dtype=np.float64)
    rows = "training rows" if train_only else "rows"
    return Source("boosted", f"the {rows} of {source.description}, with the trees as an offset", pieces, schema,
                  source.batch_size, source.runner)


@dataclass(frozen=True, eq=False)
class Step:
    """One effects step: the fit and the encoding of its (shifted) design."""

    encoding: DesignEncoding
    fit: EngineFit
    trees: Trees

    def eta(self, frame: pd.DataFrame, d: Any, user_offset: str | None) -> tuple[np.ndarray, np.ndarray]:
        """Every row's full linear predictor ``X beta + Z b + offset + f - c``, and the trees' raw score."""
        shifted, raw = self.trees.with_offset(frame, d, user_offset)
        parts = self.fit.contributions(self.encoding.apply(shifted))
        return parts.to_numpy().sum(axis=1), raw


@dataclass(frozen=True, eq=False)
class CentrePass:
    """Per batch: ``sum f``, ``sum f^2`` and the row count of the trees' prediction (outcome units)."""

    trees: Trees
    labels: tuple[str, ...] = ()

    def __call__(self, batch: Batch) -> CompensatedSum:
        d, _ = encode_batch(self.trees.encoding, batch.frame)
        f = self.trees.scale * self.trees.score(d)
        return compensated([np.array([f.sum(), (f * f).sum(), float(d.n)])])


@dataclass(frozen=True, eq=False)
class EvalPass:
    """Per batch, over the validation rows with likelihood: ``sum l``, ``sum (l0 - l)``,
    ``sum (l0 - l)^2`` and their count, ``l`` the squared error of this round's fit and ``l0``
    that of round 0 (relative case weights)."""

    step: Step
    base: Step
    split: RowSplit
    user_offset: str | None
    mean_weight: float | None
    labels: tuple[str, ...] = ()

    def __call__(self, batch: Batch) -> CompensatedSum:
        d, w = encode_batch(self.step.trees.encoding, batch.frame)
        w = np.ones(d.n) if w is None or self.mean_weight is None else w / self.mean_weight
        rows = self.split.valid(d) & (w > 0)
        if not rows.any():
            return compensated([np.zeros(4)])
        frame, sub = batch.frame[rows], self.step.trees.encoding.apply_observed(batch.frame[rows])
        eta, _ = self.step.eta(frame, sub, self.user_offset)
        eta0, _ = self.base.eta(frame, sub, self.user_offset)
        loss, loss0 = w[rows] * (sub.y - eta) ** 2, w[rows] * (sub.y - eta0) ** 2
        gain = loss0 - loss
        return compensated([np.array([loss.sum(), gain.sum(), (gain * gain).sum(), float(rows.sum())])])


@dataclass(frozen=True, eq=False)
class TreePass:
    """Per batch: the features, residual target ``(y - eta) / s + f_s`` and relative case weight
    of the training rows with likelihood (one partition of the tree step's frame)."""

    step: Step
    split: RowSplit
    user_offset: str | None
    mean_weight: float | None
    labels: tuple[str, ...] = ()

    def meta(self) -> pd.DataFrame:
        cols = {n: pd.Series(dtype=np.float64) for n in self.step.trees.features.names}
        cols.update({LABEL: pd.Series(dtype=np.float64), WEIGHT: pd.Series(dtype=np.float64)})
        return pd.DataFrame(cols)

    def __call__(self, batch: Batch) -> pd.DataFrame:
        trees = self.step.trees
        d, w = encode_batch(trees.encoding, batch.frame)
        w = np.ones(d.n) if w is None or self.mean_weight is None else w / self.mean_weight
        rows = ~self.split.valid(d) & (w > 0)
        if not rows.any():
            return self.meta()
        frame, sub = batch.frame[rows], trees.encoding.apply_observed(batch.frame[rows])
        eta, raw = self.step.eta(frame, sub, self.user_offset)
        out = pd.DataFrame(trees.features.matrix(sub), columns=list(trees.features.names))
        out[LABEL] = (sub.y - eta) / trees.scale + raw
        out[WEIGHT] = w[rows]
        return out


@dataclass(frozen=True, eq=False)
class FinalPass:
    """Per batch: ``sum w (y - eta)^2`` and ``sum w`` of the training and the validation rows."""

    fit: EngineFit
    trees: Trees
    split: RowSplit
    labels: tuple[str, ...] = ()

    def __call__(self, batch: Batch) -> CompensatedSum:
        d, w = encode_batch(self.trees.encoding, batch.frame)
        w = np.ones(d.n) if w is None else w
        eta = self.fit.contributions(d).to_numpy().sum(axis=1) + self.trees.scale * self.trees.score(d) - self.trees.centre
        r2 = w * (d.y - eta) ** 2
        valid = self.split.valid(d)
        return compensated([np.array([r2[~valid].sum(), w[~valid].sum(), r2[valid].sum(), w[valid].sum()])])


def _effects_module(spec: ModelSpec, name: str, options: Any) -> tuple[Any, Any]:
    """The effects step's engine: a linear engine that streams the family (``mixed``)."""
    from hierfit.engines.boosting.boosted_mixed import effects_step
    from hierfit.engines.registry import ENGINES

    streams = sorted(n for n, e in ENGINES.items() if not e.capabilities.nonlinear and spec.family.name in e.capabilities.streaming_families)
    if name not in streams:
        raise EngineError(
            f"Engine 'boosted-mixed' on a streamed source needs an effects engine that streams {spec.family.name} models: "
            f"{', '.join(streams)}. Got effects_engine={name!r}; pass effects_engine='mixed' or fit a pandas DataFrame."
        )
    return effects_step(spec, name, options)


def fit_streamed(design: StreamedDesign, spec: ModelSpec, options: Any) -> Any:
    """Fit engine ``boosted-mixed`` on a streamed design (see the module docstring)."""
    from hierfit.engines.boosting.boosted_mixed import BoostedMixedFit

    if not spec.family.normal_errors:
        raise EngineError(
            f"Engine 'boosted-mixed' streams gaussian models only (its distributed effects step is the gaussian mixed "
            f"model); got family {spec.family.name!r}. Fit a pandas DataFrame for the other families."
        )
    require_random_validation("boosted-mixed", options.validation)
    module, eff_options = _effects_module(spec, options.effects_engine, options)
    features = FeatureMap.from_streamed(design, groups=False)
    if not features.names:
        raise SpecError(
            "Engine 'boosted-mixed' learns f(x) from the population-level predictors, and the formula has none "
            f"({spec.text!r}); add predictors (y ~ x1 + x2 + (1 | market)) or use engine 'mixed'."
        )
    _, scale, mean_weight = target_standardisation(design)
    split = RowSplit(options.validation_fraction, options.seed)
    labels = stream_labels(spec, design.source.schema)
    source, columns = design.source, design.read_columns
    effects_spec = dataclasses.replace(spec, offset=OFFSET)
    needs_centre = INTERCEPT not in design.x_names  # with an intercept, c only moves it
    params = lgb_params(options, "regression")
    # the trees start from the mixed model's predictor (init_model), never from the mean
    params.update({"boost_from_average": False, "feature_pre_filter": False, "min_data_in_leaf": options.min_data_in_leaf})
    params.update(dict(options.params))

    def centre_of(trees: Trees) -> tuple[float, float]:
        if trees.n_trees == 0:
            return 0.0, 0.0
        s, ss, n = source.fold(CentrePass(trees, labels), CompensatedSum.merge, columns, what="trees' mean").values()[0]
        mean = s / n
        return float(mean), float(np.sqrt(max(ss / n - mean * mean, 0.0)))

    def effects_fit(trees: Trees, train_only: bool) -> Step:
        shifted = shifted_source(source, trees, columns, split, spec.offset, train_only)
        d = build_streamed_design(effects_spec, shifted, checks=_QUIET)
        return Step(d.encoding, module.fit(d, effects_spec, eff_options), trees)

    booster, n_trees = None, 0
    best_loss, best_trees, stale, rounds = np.inf, 0, 0, 0
    best_gain = HeldoutGain(0.0, 0.0, 0)
    base: Step | None = None
    with training_client(options.dask_workers) as client:
        for rounds in range(options.max_rounds + 1):
            trees = Trees(design.encoding, features, booster, n_trees, scale)
            if needs_centre:
                trees = dataclasses.replace(trees, centre=centre_of(trees)[0])
            step = effects_fit(trees, train_only=True)
            base = base or step  # round 0: the mixed model alone, the baseline of the trees' gain
            loss, gain, gain2, n = source.fold(EvalPass(step, base, split, spec.offset, mean_weight, labels),
                                               CompensatedSum.merge, columns, what="validation pass").values()[0]
            value = loss / n if n else 0.0
            if options.verbose:
                print(f"[boosted-mixed] round {rounds}: {n_trees} trees, validation loss {value:.6g}", flush=True)
            if rounds == 0 or value < best_loss - options.tol * abs(best_loss):
                best_loss, best_trees, stale = value, n_trees, 0
                mean = gain / n if n else 0.0
                var = (gain2 - n * mean * mean) / (n - 1) if n > 1 else np.inf
                best_gain = HeldoutGain(float(mean), float(np.sqrt(max(var, 0.0) / n)) if n > 1 else float("inf"), int(n))
            else:
                stale += 1
                if stale >= options.patience:
                    break
            if rounds == options.max_rounds:
                break
            task = TreePass(step, split, spec.offset, mean_weight, labels)
            frame = feature_frame(source, task, columns, task.meta())
            booster = dask_train(client, frame, features.names, params, options.trees_per_round,
                                 weighted=mean_weight is not None, init_model=booster)
            n_trees = int(booster.current_iteration())
        if best_trees and not best_gain.keep:
            best_trees = 0  # the best round's edge over the mixed model alone is within noise
        final = Trees(design.encoding, features, booster, best_trees, scale)
        centre, f_sd = centre_of(final)
        final = dataclasses.replace(final, centre=centre)
        if best_trees == 0:
            effects = module.fit(design, spec, eff_options)  # no trees: the streamed mixed model itself, exactly
        else:
            effects = effects_fit(final, train_only=False).fit
        sse_train, w_train, sse_valid, w_valid = source.fold(FinalPass(effects, final, split, labels), CompensatedSum.merge,
                                                             columns, what="residual pass").values()[0]
    diagnostics: list[Diagnostic] = []
    if stale < options.patience:
        diagnostics.append(Diagnostic("early_stopping", f"boosted-mixed used all {options.max_rounds} rounds and the validation loss "
                                      "was still improving; raise max_rounds or trees_per_round."))
    statistics = {k: float(v) for k, v in effects.statistics.items()}
    statistics.update({"n_obs": float(design.n), "rounds": float(rounds), "n_trees": float(best_trees), "nonlinear_sd": f_sd,
                       "rmse_train": float(np.sqrt(sse_train / w_train)) if w_train > 0 else float("nan"),
                       "rmse_valid": float(np.sqrt(sse_valid / w_valid)) if w_valid > 0 else float("nan"),
                       "trees_gain": best_gain.gain, "trees_gain_se": best_gain.std_error})
    if booster is None:  # max_rounds >= 1 grows trees at least once; kept for a fit of zero rounds
        raise EngineError("Engine 'boosted-mixed' grew no trees; set max_rounds to at least 1.")
    return BoostedMixedFit(booster=booster, features=features, num_iteration=best_trees, centre=centre, effects=effects,
                           scale=scale, effects_engine=options.effects_engine, statistics=statistics,
                           diagnostics=diagnostics + list(effects.diagnostics))
