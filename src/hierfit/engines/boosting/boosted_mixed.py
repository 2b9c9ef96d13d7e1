"""Engine ``boosted-mixed``: trees for the population function, a mixed model for the hierarchy.

The model is ``g(E[y]) = f(x) + national + market + submarket (+ varying slopes) + offset``
for every family the effects engine fits (gaussian, bernoulli, binomial, poisson, negative
binomial), fitted as in MERF and GPBoost by alternating two steps until the validation loss
stops improving:

1. *effects step* -- the ``mixed`` engine (option ``effects_engine``) fits the formula with the
   current trees as a known part of the linear predictor: its offset is the user's offset plus
   ``f(x) - c`` (``c`` centres ``f``). For a gaussian outcome that is the mixed model of
   ``y - (f(x) - c)``; otherwise the GLMM given ``f``;
2. *tree step* -- ``trees_per_round`` more LightGBM trees take Newton steps on the family's
   log-likelihood (squared error for a gaussian outcome) with the effects step's linear
   predictor as a known part of the raw score (:mod:`._family_loss`). The trees see only the
   population predictors, never a group column, so the hierarchy is left entirely to the
   mixed model.

After the best round (lowest validation loss) the effects step is rerun once with the final
trees, so the reported effects are exactly those of the mixed model given ``f``. Hence an exact
decomposition on the link scale: ``national``, the level columns and ``population`` come from
the mixed model's linear predictor, ``offset`` is the user's offset (when the model has one)
and ``nonlinear = f(x) - c``, with ``c`` the mean of ``f`` over the fitting rows, so the
national intercept keeps its meaning (the prediction at the average of ``f``).
Unseen groups fall back to their parent through the mixed model, as in every linear engine.
Intervals (group effects, confidence and prediction intervals) are the mixed model's,
conditional on ``f``: its joint draws of ``(beta, b)`` with ``f`` as a known offset, mapped
through the inverse link, with the mixed model's dispersion (gaussian ``sigma``, the negative
binomial's ``theta``) for prediction intervals.

During the alternation both steps see only the training rows, so the validation loss that
picks the number of rounds is honest; the final effects step uses every row.

**Trees must earn their place.** The lowest validation loss over many rounds is an optimistic
pick: on small data, trees fitted to noise win it by chance. So the best round's trees are kept
only if they lower the validation rows' loss -- squared error for a gaussian outcome, else the
negative log-likelihood (log loss for a binary outcome) -- compared with zero trees (the mixed
model alone, round 0), by more than two standard errors of the per-row difference (the rule
shared with ``neural``'s MLP, :mod:`hierfit.engines.heldout_gain`);
otherwise the fit is the mixed model (``statistics["n_trees"] == 0``). The gain and its
standard error are in ``statistics`` (``trees_gain``, ``trees_gain_se``: squared error in the
outcome's units, or nats of log-likelihood per row).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import sparse

from hierfit.checks import Diagnostic
from hierfit.design import Design, RowDesign, StreamedDesign
from hierfit.design.build import TermDesign
from hierfit.engines.base import BaseEngineFit, EngineFit, GaussianCoefficients
from hierfit.engines.boosting._booster import (
    lgb_params,
    load_booster,
    outcome_standardisation,
    save_booster,
)
from hierfit.engines.boosting._family_loss import FamilyLoss
from hierfit.engines.boosting._features import FeatureMap, validation_split
from hierfit.engines.heldout_gain import HeldoutGain
from hierfit.engines.options import option, parse_options
from hierfit.engines.state import LoadContext, StateReader, StateWriter, diagnostics_to_json
from hierfit.exceptions import DataError, EngineError, SpecError
from hierfit.model import ModelSpec

EFFECTS_DIR = "effects"


@dataclass(frozen=True)
class OPTIONS:
    """Options of the ``boosted-mixed`` engine.

    Attributes
    ----------
    effects_engine, effects_options
        The registered linear engine of the effects step (``"mixed"``; ``"ols"`` gives the
        unpooled variant) and its options.
    trees_per_round, max_rounds, patience, tol
        Trees added per alternation; at most ``max_rounds`` alternations; stop after ``patience``
        rounds whose validation loss improved by less than the fraction ``tol``.
    learning_rate, num_leaves, min_data_in_leaf, lambda_l2, params
        LightGBM's parameters for ``f`` (``params`` overrides).
    validation, validation_fraction
        Rows held out from the trees to choose the number of rounds (``"random"`` or ``"grouped"``).
    verbose
        Print one progress line per round (0 = quiet).
    num_threads
        LightGBM's threads; ``0`` (default): from the work around the fit -- every core for a
        single fit, ``cores // workers`` per fold worker inside ``compare`` (see
        :mod:`hierfit.threads`).
    dask_workers
        Streamed sources without an active ``dask.distributed`` client: worker processes of
        the ``LocalCluster`` started for the fit (see :mod:`._distributed`).
    """

    effects_engine: str = "mixed"
    effects_options: dict[str, Any] = field(default_factory=dict)
    trees_per_round: int = option(10, ge=1)
    max_rounds: int = option(200, ge=1)
    patience: int = option(3, ge=1)
    tol: float = option(1e-4, ge=0)
    learning_rate: float = option(0.05, gt=0)
    num_leaves: int = option(31, ge=2)
    min_data_in_leaf: int = option(50, ge=1)
    lambda_l2: float = option(0.0, ge=0)
    validation: Literal["grouped", "random"] = "random"
    validation_fraction: float = option(0.1, gt=0, lt=0.5)
    verbose: int = 0
    seed: int = 0
    num_threads: int = option(0, ge=0)
    params: dict[str, Any] = field(default_factory=dict)
    dask_workers: int = option(2, ge=1)


FAST_OPTIONS: dict[str, Any] = {"trees_per_round": 10, "learning_rate": 0.1, "max_rounds": 20, "patience": 2}


class BoostedMixedFit(BaseEngineFit):
    """Fitted ``boosted-mixed`` engine: the booster ``f`` and the effects step's fit."""

    engine = "boosted-mixed"

    def __init__(self, *, booster: Any, features: FeatureMap, num_iteration: int, centre: float, effects: EngineFit,
                 effects_engine: str, statistics: dict[str, float], diagnostics: list[Diagnostic], scale: float = 1.0) -> None:
        self.booster = booster
        self.scale = float(scale)  # the trees were grown on the outcome divided by this
        self.features = features
        self.num_iteration = num_iteration
        self.centre = float(centre)
        self.effects = effects
        self.effects_engine = effects_engine
        self.statistics = statistics
        self.diagnostics = diagnostics

    def nonlinear(self, design: RowDesign) -> np.ndarray:
        """``f(x) - c`` for the rows of ``design``."""
        return self.scale * tree_scores(self.booster, self.features.matrix(design), self.num_iteration) - self.centre

    # the effects step's tables are the model's tables
    def fixed_effects(self, level: float) -> pd.DataFrame:
        return self.effects.fixed_effects(level)

    def variance_components(self) -> pd.DataFrame:
        return self.effects.variance_components()

    def group_effects(self, level: float) -> pd.DataFrame:
        return self.effects.group_effects(level)

    def contributions(self, design: RowDesign) -> pd.DataFrame:
        parts = self.effects.contributions(design)
        parts["nonlinear"] = self.nonlinear(design)
        return parts

    def with_trees(self, design: RowDesign) -> RowDesign:
        """``design`` with ``f(x) - c`` added to its offset: the design the effects step sees."""
        if self.num_iteration == 0:
            return design  # no trees: the effects engine's own intervals, exactly
        f = self.nonlinear(design)
        return dataclasses.replace(design, offset=f if design.offset is None else design.offset + f)

    def interval(self, design: RowDesign, kind: str, level: float,
                 scale: str = "response") -> tuple[np.ndarray, np.ndarray] | None:
        """The effects step's intervals with ``f`` as a known offset (``f`` taken as known):
        its draws of the linear predictor shifted by ``f``, then mapped through the inverse link
        (and, for prediction intervals, outcomes drawn with the mixed model's dispersion)."""
        return self.effects.interval(self.with_trees(design), kind, level, scale)

    def linear_predictor_draws(self, design: RowDesign, max_draws: int) -> np.ndarray | None:
        """The effects step's draws with ``f`` as a known offset (as in :meth:`interval`)."""
        return self.effects.linear_predictor_draws(self.with_trees(design), max_draws)

    def linear_predictor_gaussian(self, design: RowDesign) -> tuple[sparse.csr_matrix, GaussianCoefficients] | None:
        return self.effects.linear_predictor_gaussian(design)  # f only shifts the predictor

    def native(self) -> dict[str, Any]:
        """``{"booster": LightGBM Booster of f, "effects": the effects engine's own object}``."""
        return {"booster": self.booster, "effects": self.effects.native()}

    def native_linear_predictor(self, design: RowDesign) -> np.ndarray:
        """The effects engine's own predictor plus the booster's centred raw score."""
        return self.effects.native_linear_predictor(design) + self.nonlinear(design)

    def summary_lines(self) -> list[str]:
        family = self.effects.family if hasattr(self.effects, "family") else None
        model = "mixed model" if family is None or family.normal_errors else f"{family.name} GLMM"
        return [
            (f"boosted-mixed: {self.num_iteration} trees for f(x) after {int(self.statistics.get('rounds', 0))} rounds; "
             f"group effects from engine '{self.effects_engine}' ({model}) given f (intervals conditional on f)."),
        ]

    def save(self, state: StateWriter) -> None:
        save_booster(self.booster, state)
        state.put("features", self.features.to_json())
        state.put("num_iteration", self.num_iteration)
        state.put("centre", self.centre)
        state.put("scale", self.scale)
        state.put("effects_engine", self.effects_engine)
        state.put("statistics", self.statistics)
        state.put("diagnostics", diagnostics_to_json(self.diagnostics))
        self.effects.save(state.child(EFFECTS_DIR))


def load(state: StateReader, context: LoadContext) -> BoostedMixedFit:
    """Rebuild a saved ``boosted-mixed`` fit; the effects step through its own engine's ``load``."""
    from hierfit.engines.registry import ENGINES

    name = state.get_str("effects_engine")
    entry = ENGINES.get(name)
    loader = getattr(entry.load(), "load", None) if entry is not None else None
    if loader is None:
        raise state.fail(f"the effects engine {name!r} is not a registered engine that can load saved fits")
    try:
        features = FeatureMap.from_json(state.get("features"))
    except (KeyError, TypeError, ValueError) as exc:
        raise state.fail(str(exc)) from None
    fit = BoostedMixedFit(
        booster=load_booster(state), features=features, num_iteration=state.get_int("num_iteration"), centre=state.get_float("centre"),
        effects=loader(state.child(EFFECTS_DIR), context), effects_engine=name, statistics=state.get_float_dict("statistics"),
        diagnostics=state.get_diagnostics("diagnostics"), scale=state.get_float("scale"),
    )
    if fit.booster.num_feature() != len(features.names):
        raise state.fail(f"the booster reads {fit.booster.num_feature()} features, the feature map has {len(features.names)}")
    return fit


def row_subset(design: Design, rows: np.ndarray | None) -> Design:
    """The design of some rows (boolean mask), on the same tree of groups."""
    if rows is None:
        return design

    def part(v: np.ndarray | None) -> np.ndarray | None:
        return None if v is None else v[rows]

    return dataclasses.replace(
        design,
        y=design.y[rows],
        X=design.X[rows],
        group_index={k: v[rows] for k, v in design.group_index.items()},
        terms=tuple(TermDesign(td.term, td.Z[rows]) for td in design.terms),
        trials=part(design.trials), offset=part(design.offset), weights=part(design.weights),
    )


def shift_offset(design: Design, shift: np.ndarray) -> Design:
    """``design`` with ``shift`` added to its offset (the trees as a known part of the predictor).

    Without trees (``shift`` all zero) the design is returned as it is, so a fit that keeps no
    trees is the effects engine's own fit of the data, to the last digit."""
    if not shift.any():
        return design
    return dataclasses.replace(design, offset=shift if design.offset is None else design.offset + shift)


def tree_scores(booster: Any, X: np.ndarray, num_iteration: int, start: int = 0) -> np.ndarray:
    """Raw score of trees ``start .. num_iteration-1`` (LightGBM reads 0 trees as 'all')."""
    if num_iteration - start <= 0:
        return np.zeros(X.shape[0])
    return booster.predict(X, raw_score=True, start_iteration=start, num_iteration=num_iteration - start)


def effects_step(spec: ModelSpec, engine: str, options: OPTIONS) -> tuple[Any, Any]:
    """The effects engine's module and parsed options, checked to be a linear gaussian engine."""
    from hierfit.engines.registry import ENGINES, check_capabilities

    allowed = sorted(n for n, e in ENGINES.items() if not e.capabilities.nonlinear and spec.family.name in e.capabilities.families)
    if engine not in allowed:
        hint = " (it is not registered in this installation)" if engine not in ENGINES else ""
        raise EngineError(
            f"Engine 'boosted-mixed': 'effects_engine' must be a registered linear engine: {', '.join(allowed)}. "
            f"Got {engine!r}{hint}."
        )
    entry = ENGINES[engine]
    check_capabilities(entry, spec)
    module = entry.load()
    return module, parse_options(module.OPTIONS, dict(options.effects_options), engine)


def fit(design: Design | StreamedDesign, spec: ModelSpec, options: OPTIONS) -> BoostedMixedFit:
    """Alternate the effects step and the tree step until the validation loss stops improving.

    A :class:`~hierfit.design.streamed.StreamedDesign` (gaussian outcomes) alternates
    ``lightgbm.dask`` with the streamed mixed fit (:mod:`._stream_boosted`).
    Training runs on the active ``dask.distributed`` client (``fit(..., workers=N)`` starts one for
    Parquet files and Dask DataFrames), or else on a ``LocalCluster`` of ``dask_workers`` processes
    started for the fit and closed after it (an Arrow table; Parquet files read in this process).

    Examples
    --------
    >>> import hierfit
    >>> sim = hierfit.simulate(n_markets=5, n_submarkets=3, rows_per_submarket=40, nonlinear="sin", seed=2)
    >>> fit = hierfit.fit(sim.formula, sim.data, engine="boosted-mixed", num_threads=1, max_rounds=5)
    >>> parts = fit.decompose(sim.data)
    >>> list(parts.columns)
    ['national', 'market[Intercept]', 'market[x1]', 'submarket[Intercept]', 'population', 'nonlinear']
    >>> bool(abs(parts["nonlinear"].mean()) < 1e-8)  # centred: the intercept keeps its meaning
    True
    """
    if isinstance(design, StreamedDesign):
        from hierfit.engines.boosting._stream_boosted import fit_streamed

        streamed: BoostedMixedFit = fit_streamed(design, spec, options)
        return streamed
    import lightgbm as lgb

    module, eff_options = effects_step(spec, options.effects_engine, options)
    features = FeatureMap.from_design(design, groups=False)
    if not features.names:
        raise SpecError(
            "Engine 'boosted-mixed' learns f(x) from the population-level predictors, and the formula has none "
            f"({spec.text!r}); add predictors (y ~ x1 + x2 + (1 | market)) or use engine 'mixed'."
        )
    gaussian = spec.family.normal_errors
    # A gaussian alternation runs on the standardised outcome (LightGBM keeps gradients in
    # float32, and the early-stopping decisions compare validation losses: at y + 1e12 both lost
    # the digits that decide); the tree step is equivariant, so its trees are scaled back below.
    # The offset is scaled with it: (y - o - centre) / scale = y_t - o / scale.
    y_centre, y_scale = 0.0, 1.0
    design_t = design
    if gaussian:
        y_centre, y_scale = outcome_standardisation(design.y if design.offset is None else design.y - design.offset, design.weights)
        design_t = dataclasses.replace(design, y=(design.y - y_centre) / y_scale,
                                       offset=None if design.offset is None else design.offset / y_scale)
    loss = FamilyLoss.from_design(design_t)
    X = features.matrix(design)
    train, valid = validation_split(design, options.validation_fraction, options.validation, options.seed)
    params = lgb_params(options, "none")  # gradients come from fobj: the known part moves each round
    # the trees grow on the training rows that carry likelihood: a row of weight 0 (or no
    # trials) would still count towards min_data_in_leaf, where lme4 semantics say it is absent
    grow = train & loss.counted
    if not grow.any():
        raise DataError(
            f"Engine 'boosted-mixed' grows its trees on the training rows that carry likelihood, and none of the "
            f"{int(train.sum())} training rows does (each has prior weight 0 or no trials). Give rows positive weights."
        )
    # no pre-filter: on few rows LightGBM would drop every feature (none can split under
    # min_data_in_leaf) and refuse to build; unsplittable features just give no splits
    train_set = lgb.Dataset(X[grow], label=np.zeros(int(grow.sum())), feature_name=list(features.names),
                            params={"feature_pre_filter": False})
    booster = lgb.Booster(params=params, train_set=train_set)

    def effects_fit(f: np.ndarray, rows: np.ndarray | None = None, base: Design = design_t) -> EffectsStep:
        c = float(f.mean())
        shifted = shift_offset(base, f - c)
        fitted = module.fit(row_subset(shifted, rows), spec, eff_options)
        return EffectsStep(fitted, fitted.contributions(shifted).to_numpy().sum(axis=1), c, dispersion_of(fitted, spec))

    with thread_limits(int(params["num_threads"])):
        booster, best_trees, rounds, stale, gain = _alternate(booster, X, train, grow, valid, loss, effects_fit, options)
    diagnostics: list[Diagnostic] = []
    if stale < options.patience:
        diagnostics.append(Diagnostic("early_stopping", f"boosted-mixed used all {options.max_rounds} rounds and the validation loss "
                                      "was still improving; raise max_rounds or trees_per_round."))
    # the effects step once more, on every row and in the outcome's own units, given the kept trees
    f = y_scale * tree_scores(booster, X, best_trees)
    step = effects_fit(f, base=design)
    effects, eta, c = step.fit, step.eta, step.centre
    statistics = {k: float(v) for k, v in effects.statistics.items()}
    statistics.update({"n_obs": float(design.n), "rounds": float(rounds), "n_trees": float(best_trees),
                       "nonlinear_sd": float(np.std(f))})
    if gaussian:
        resid = design.y - eta
        w = np.ones(design.n) if design.weights is None else design.weights
        statistics.update({
            # weighted: with prior weights the residual variance of a row is sigma^2 / w
            "rmse_train": float(np.sqrt(np.sum(w[train] * resid[train] ** 2) / np.sum(w[train]))),
            "rmse_valid": float(np.sqrt(np.sum(w[valid] * resid[valid] ** 2) / np.sum(w[valid]))),
            # the gain is per-row squared error: back in the outcome's units
            "trees_gain": gain.gain * y_scale**2, "trees_gain_se": gain.std_error * y_scale**2,
        })
    else:
        for name, rows in (("train", train), ("valid", valid)):
            counted = rows & loss.counted
            per_row = loss.row_loss(eta[counted], counted, step.dispersion)
            statistics[f"nll_{name}"] = float(per_row.sum() / max(loss.weight[counted].sum(), 1e-300))
        statistics.update({"trees_gain": gain.gain, "trees_gain_se": gain.std_error})
    return BoostedMixedFit(
        booster=booster, features=features, num_iteration=best_trees, centre=c, effects=effects, scale=y_scale,
        effects_engine=options.effects_engine, statistics=statistics, diagnostics=diagnostics + list(effects.diagnostics),
    )


def thread_limits(num_threads: int) -> Any:
    """BLAS on one thread and OpenMP on LightGBM's ``num_threads`` for the alternation.

    One BLAS thread: see :func:`._booster.single_threaded_blas`. OpenMP too: alternating the
    mixed model with LightGBM's tree updates left OpenMP threads of a wider team spinning
    against the trees' own -- measured on 2 busy cores, a 3,000-row bernoulli fit (60 trees,
    10 GLMM fits) took 10-20 s wall with BLAS alone limited, 2.5-3.3 s with OpenMP capped at
    ``num_threads`` as well (the same trees: the threads only change who waits).
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits={"blas": 1, "openmp": max(1, num_threads)})


@dataclass(frozen=True, eq=False)
class EffectsStep:
    """One effects step: the fit given the trees, every row's full linear predictor
    (``X beta + Z b + offset + f - c``), the centre ``c`` of ``f`` and the fit's dispersion."""

    fit: EngineFit
    eta: np.ndarray
    centre: float
    dispersion: float | None


def dispersion_of(fitted: EngineFit, spec: ModelSpec) -> float | None:
    """The dispersion the family's likelihood needs (the negative binomial's size), else ``None``:
    a gaussian loss is squared error, which needs none."""
    family = spec.family
    if family.normal_errors or not family.has_dispersion:
        return None
    value = getattr(fitted, "sigma", None)
    if value is None or not np.isfinite(value) or value <= 0:
        raise EngineError(
            f"Engine 'boosted-mixed': the effects step gave no usable {family.dispersion!r} for the {family.name} likelihood "
            f"(got {value!r}); use effects_engine='mixed', which estimates it."
        )
    return float(value)


def _alternate(booster: Any, X: np.ndarray, train: np.ndarray, grow: np.ndarray, valid: np.ndarray, loss: FamilyLoss,
               effects_fit: Any, options: OPTIONS) -> tuple[Any, int, int, int, HeldoutGain]:
    """The alternation; returns the booster, the number of trees kept, rounds run, stale rounds,
    and the kept trees' validation gain (mean per-row loss drop vs zero trees, its SE).

    The effects step fits the ``train`` rows, the trees the ``grow`` rows among them."""
    f = np.zeros(X.shape[0])
    train_rows = np.flatnonzero(grow)
    scored = valid & loss.counted  # rows without likelihood (weight 0, no trials) cannot tell fits apart
    known = np.zeros(len(train_rows))  # the effects step's part of the training rows' raw score
    dispersion: float | None = None

    def objective(preds: np.ndarray, _data: Any) -> tuple[np.ndarray, np.ndarray]:
        return loss.gradients(preds + known, train_rows, dispersion)

    best_loss, best_trees, stale, rounds = np.inf, 0, 0, 0
    for rounds in range(options.max_rounds + 1):
        step = effects_fit(f, train)
        row_loss = loss.row_loss(step.eta[scored], scored, step.dispersion)
        value = float(np.mean(row_loss)) if len(row_loss) else 0.0
        if rounds == 0:
            loss_no_trees = row_loss
        if options.verbose:
            print(f"[boosted-mixed] round {rounds}: {booster.current_iteration()} trees, validation loss {value:.6g}", flush=True)
        if rounds == 0 or value < best_loss - options.tol * abs(best_loss):
            best_loss, best_trees, stale, best_row_loss = value, booster.current_iteration(), 0, row_loss
        else:
            stale += 1
            if stale >= options.patience:
                break
        if rounds == options.max_rounds:
            break
        known[:] = step.eta[grow] - f[grow]  # X beta + Z b + offset - c: LightGBM's score is f
        dispersion = step.dispersion
        start = booster.current_iteration()
        for _ in range(options.trees_per_round):
            booster.update(fobj=objective)
        f = f + tree_scores(booster, X, booster.current_iteration(), start)
    gain = HeldoutGain.from_rows(loss_no_trees - best_row_loss)
    if best_trees and not gain.keep:
        best_trees = 0  # the best round's edge over the mixed model alone is within noise
    return booster, best_trees, rounds, stale, gain
