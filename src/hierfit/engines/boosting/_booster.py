"""LightGBM plumbing shared by the ``lightgbm`` and ``boosted-mixed`` engines.

LightGBM is imported inside these functions only, so importing hierfit never imports it.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from hierfit.engines.state import StateReader, StateWriter
from hierfit.threads import threads_for
from hierfit.exceptions import PersistenceError

BOOSTER_FILE = "booster.txt"


def lgb_params(options: Any, objective: str) -> dict[str, Any]:
    """LightGBM parameters from an engine's options (``options.params`` overrides)."""
    params: dict[str, Any] = {
        "objective": objective,
        "learning_rate": options.learning_rate,
        "num_leaves": options.num_leaves,
        "min_data_in_leaf": options.min_data_in_leaf,
        "lambda_l2": options.lambda_l2,
        "seed": options.seed,
        "deterministic": True,
        "force_row_wise": True,
        # 0: from the work around the fit (every core alone, one per fold worker in compare)
        "num_threads": threads_for(options.num_threads),
        "verbosity": -1,
    }
    params.update(dict(options.params))
    return params


def progress_callbacks(verbose: int) -> list[Any]:
    """LightGBM's own evaluation log every ``verbose`` rounds (quiet at 0)."""
    import lightgbm as lgb

    return [lgb.log_evaluation(period=int(verbose))] if verbose and verbose > 0 else []


def train_early_stopping(
    params: dict[str, Any],
    X: np.ndarray,
    y: np.ndarray,
    train: np.ndarray,
    valid: np.ndarray,
    *,
    names: list[str],
    categorical: list[int],
    rounds: int,
    patience: int,
    verbose: int,
    weight: np.ndarray | None = None,
    init_score: np.ndarray | None = None,
) -> Any:
    """Train on ``train`` rows, stop when the ``valid`` rows' loss stops improving.

    ``weight`` (per-row case weights) and ``init_score`` (a known part of the raw score, an
    offset) go with their rows into both sets.
    """
    import lightgbm as lgb

    def part(rows: np.ndarray, v: np.ndarray | None) -> np.ndarray | None:
        return None if v is None else v[rows]

    dtrain = lgb.Dataset(X[train], label=y[train], weight=part(train, weight), init_score=part(train, init_score),
                         feature_name=names, categorical_feature=categorical, free_raw_data=True)
    dvalid = lgb.Dataset(X[valid], label=y[valid], weight=part(valid, weight), init_score=part(valid, init_score),
                         reference=dtrain, free_raw_data=True)
    callbacks = [lgb.early_stopping(patience, verbose=bool(verbose)), *progress_callbacks(verbose)]
    return lgb.train(params, dtrain, num_boost_round=rounds, valid_sets=[dvalid], valid_names=["validation"], callbacks=callbacks)


def single_threaded_blas() -> Any:
    """A context with BLAS on one thread, when threadpoolctl is installed.

    Alternating BLAS-heavy steps (the mixed model) with LightGBM's OpenMP trees makes OpenBLAS
    worker threads spin after each call and starve LightGBM: measured on 2 busy cores, a tree
    update went from 2 ms to 0.2-3 s. One BLAS thread removes that contention.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: without it, only speed suffers
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def save_booster(booster: Any, state: StateWriter) -> None:
    """LightGBM's own text format (readable by any LightGBM, no pickle)."""
    state.put_text(BOOSTER_FILE, booster.model_to_string())


def load_booster(state: StateReader) -> Any:
    """The booster from its model text.

    LightGBM aborts the whole process on some damaged model files, so it must only ever see
    text whose checksum was verified: the reader's bytes are exactly that.
    """
    import lightgbm as lgb

    try:
        return lgb.Booster(model_str=state.get_text(BOOSTER_FILE))
    except lgb.basic.LightGBMError as exc:
        raise PersistenceError(f"{state.files.where(BOOSTER_FILE)} is not a LightGBM model ({exc}). Refit and save again.") from None


def outcome_standardisation(y: np.ndarray, weight: np.ndarray | None = None) -> tuple[float, float]:
    """``(mean, spread)`` of a gaussian outcome (spread 1 for a constant), weighted by the
    rows' case weights when given (a row of weight ~0 must not set the scale of the others).

    LightGBM keeps labels and gradients in float32, so the trees are grown on
    ``(y - mean) / spread`` (squared error is equivariant under that map with LightGBM's
    default regularisation) and their scores mapped back.
    """
    w = np.ones_like(y, dtype=float) if weight is None else np.asarray(weight, dtype=float)
    centre = float(np.average(y, weights=w))
    spread = float(np.sqrt(np.average((y - centre) ** 2, weights=w)))
    return centre, spread if np.isfinite(spread) and spread > 0 else 1.0
