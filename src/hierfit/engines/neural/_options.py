"""Options of the ``neural`` engine and the data-scaled defaults (no torch import here)."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Literal

from hierfit.engines.options import option
from hierfit.exceptions import EngineError


@dataclass(frozen=True)
class OPTIONS:
    """Options of the ``neural`` engine; ``None`` means "scaled to the data" (see :func:`resolve`).

    Parameters
    ----------
    n_members
        Ensemble size (networks trained side by side); intervals need at least 2. ``None``:
        5 up to 200k rows, 3 above (keeps a 500k-row fit under two minutes on 2 CPU cores).
    hidden
        MLP hidden widths; ``()`` gives a linear hierarchical model (no nonlinear part).
        ``None``: two layers of 32 (< 2k rows) or 64.
    nonlinear
        ``"auto"`` (default): keep the MLP only if it predicts the validation rows better than
        the linear part alone, by more than two standard errors of the per-row log-density
        gain (see ``_gate``); otherwise the fit is the linear hierarchical model, as
        boosting keeps zero trees when they do not help. ``"always"``: keep it regardless.
    embedding_dim
        Embedding size per level. ``None``: ``clip(ceil(log2(n_groups)), 2, 8)``; 0 disables.
    embedding_sd
        Prior SD of the group embeddings. Small by default, so that group differences the
        linear part can express are cheaper there (prior SD learned per level) than through
        the MLP: the embeddings carry what the linear part cannot.
    weight_decay
        Prior precision of the MLP weights (biases are not penalised).
    batch_size
        ``None``: ``clip(2**round(log2(n / 40)), 64, 8192)``.
    max_epochs, patience
        Epoch limit and early-stopping patience (epochs without validation improvement).
        ``None``: about 20k optimiser steps (20-300 epochs); patience 12 below 50k rows, 6
        below 200k, else 4.
    learning_rate
        Adam step size (10x for the SD parameters); halved when the validation loss stalls
        for ``patience // 2`` epochs.
    validation
        ``"random"`` rows or ``"group"`` (whole groups of the finest level) held out for early
        stopping.
    validation_fraction
        Share of rows held out. ``None``: 0.2, falling to 0.05 for large data.
    refit
        After early stopping, retrain on all rows for the chosen number of epochs. ``None``:
        for ``validation="group"`` (the held-out groups would otherwise stay unfitted) and
        whenever 10% or more of the rows are held out (up to 200k rows by default).
    bootstrap
        ``False`` (default): members differ by initialisation (a deep ensemble), and each
        member's linear parameters get Gaussian posterior draws given its network (the mixed
        model's conditional posterior, see ``_posterior``), so group-effect intervals include
        the between-group uncertainty a mixed model reports. ``True``: members are trained on
        balanced Bayesian-bootstrap row weights and are themselves the draws (row-level
        sampling only: upper-level totals and varying population slopes come out too narrow).
    variance
        ``"laplace"`` (marginal-likelihood SDs, default) or ``"joint"`` (plain joint MAP).
    reml_variances
        After training, re-estimate each member's variance components (and residual SD or
        negative-binomial size) by the marginal likelihood with the network's output as an
        offset -- exact REML for gaussian (well under a second at 500k rows), the Laplace
        approximation (glmer's) for the other families -- the ``mixed`` engine's core, then
        solve the linear part with them; the gate compares its two versions the same way.
        The training-time SDs are an approximation: gaussian, with 10 markets the market SD
        came out ~35% low; on real counts (Arabidopsis, Mmmec) 18-58% low. ``False`` keeps
        them and says so in a ``variance_components`` diagnostic.
    device
        ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
    threads
        CPU threads for torch during the fit. ``None``: 1 on CPU (the network is small: more
        threads gain little on an idle machine and cost much on a shared one); raise it on a
        dedicated many-core machine for large data.
    progress
        Show a progress bar; ``None``: when stderr is a terminal.
    seed
        Seeds initialisation, splits, bootstrap weights and shuffling.
    """

    n_members: int | None = option(None, ge=1)
    hidden: tuple[int, ...] | None = None
    nonlinear: Literal["auto", "always"] = "auto"
    embedding_dim: int | None = option(None, ge=0)
    embedding_sd: float = option(0.01, gt=0)
    weight_decay: float = option(1.0, ge=0)
    batch_size: int | None = option(None, ge=1)
    max_epochs: int | None = option(None, ge=1)
    patience: int | None = option(None, ge=1)
    learning_rate: float = option(3e-3, gt=0)
    validation: Literal["group", "random"] = "random"
    validation_fraction: float | None = option(None, gt=0, lt=0.9)
    refit: bool | None = None
    bootstrap: bool = False
    variance: Literal["joint", "laplace"] = "laplace"
    reml_variances: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = option(None, ge=1)
    progress: bool | None = None
    seed: int = 0


#: quick fits on 1-5k rows (conformance tests, demo)
FAST_OPTIONS: dict = {"n_members": 2, "max_epochs": 25, "patience": 4, "hidden": (16, 16), "refit": False, "progress": False}


@dataclass(frozen=True)
class Settings:
    """Concrete training settings after the data-scaled defaults are filled in."""

    n_members: int
    hidden: tuple[int, ...]
    embedding_dims: tuple[int, ...]
    batch_size: int
    max_epochs: int
    patience: int
    learning_rate: float
    validation_fraction: float
    refit: bool
    progress: bool


def resolve(options: OPTIONS, n: int, level_sizes: list[int]) -> Settings:
    """Validate ``options`` and fill the ``None`` defaults from the data size.

    Examples
    --------
    >>> s = resolve(OPTIONS(), 5000, [10, 50])
    >>> s.batch_size, s.hidden, s.embedding_dims
    (128, (64, 64), (4, 6))
    """
    _validate(options)
    n_members = options.n_members if options.n_members is not None else (5 if n <= 200_000 else 3)
    if options.hidden is not None:
        hidden = tuple(int(h) for h in options.hidden)
    else:
        width = 32 if n < 2_000 else 64
        hidden = (width, width)
    if options.embedding_dim is not None:
        dims = tuple(int(options.embedding_dim) for _ in level_sizes)
    else:
        dims = tuple(min(8, max(2, math.ceil(math.log2(max(g, 2))))) for g in level_sizes)
    if not hidden:
        dims = tuple(0 for _ in level_sizes)  # no MLP: embeddings would be unused
    val_frac = options.validation_fraction
    if val_frac is None:
        val_frac = min(0.2, max(0.05, 20_000 / max(n, 1)))
    batch = options.batch_size or int(min(8192, max(64, 2 ** round(math.log2(max(n / 40, 1))))))
    steps = max(1, math.ceil(n * (1 - val_frac) / batch))
    max_epochs = options.max_epochs or int(min(300, max(20, round(20_000 / steps))))
    patience = options.patience or (12 if n < 50_000 else 6 if n < 200_000 else 4)
    # Retraining on all rows costs a second run; it pays where the held-out share is large
    # (small data: group effects lose 20% of their rows otherwise) or whole groups are held out.
    refit = options.refit if options.refit is not None else (options.validation == "group" or val_frac >= 0.1)
    progress = options.progress if options.progress is not None else bool(getattr(sys.stderr, "isatty", lambda: False)())
    return Settings(n_members, hidden, dims, batch, max_epochs, patience, options.learning_rate, val_frac, refit, progress)


def _validate(o: OPTIONS) -> None:
    """What the option table (:func:`hierfit.engines.options.parse_options`) cannot say."""
    if o.hidden is not None and any(h < 1 for h in o.hidden):
        raise EngineError(f"Engine 'neural': option 'hidden' must be a tuple of positive layer widths, e.g. (64, 64), or (); got {o.hidden!r}.")