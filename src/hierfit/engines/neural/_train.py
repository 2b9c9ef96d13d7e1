"""Training: Adam on mini-batches of the full-data MAP objective, early stopping, optional refit."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from hierfit.checks import Diagnostic
from hierfit.design import Design
from hierfit.engines.neural._gate import nonlinear_gain
from hierfit.engines.neural._model import HierEnsemble, negative_loglik
from hierfit.engines.neural._options import OPTIONS, Settings, resolve
from hierfit.engines.neural._prep import (
    bootstrap_weights,
    glm_start,
    information,
    make_scaling,
    prior_weights,
    scaled_arrays,
    validation_split,
)
from hierfit.exceptions import DataError, EngineError
from hierfit.formula import INTERCEPT
from hierfit.model import Family, ModelSpec

VARIANCE_LR_MULT = 10.0
MIN_DELTA = 1e-4  # validation improvement (mean NLL per row, scaled units) that counts


@dataclass
class History:
    """What one training run did, per member."""

    best_loss: np.ndarray
    best_epoch: np.ndarray
    stopped: np.ndarray
    epochs_run: int = 0
    lr_per_epoch: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise EngineError("device='cuda' was asked for, but torch sees no CUDA device. Use device='cpu' or 'auto'.")
    return torch.device(name)


@contextlib.contextmanager
def torch_settings(threads: int | None) -> Iterator[None]:
    """Thread count and deterministic kernels for the fit only; restores the caller's settings."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    # the intra-op pool is resized only when the count changes: resizing it is not free, and
    # on the way out of a Ctrl-C it would rebuild the pool the interrupted step was using
    changed = threads is not None and threads > 0 and threads != old_threads
    if threads is not None and changed:
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        if changed:
            torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)


class Batches:
    """The design's arrays as tensors on the device, sliced by row index."""

    def __init__(self, arrays: dict, device: torch.device) -> None:
        def t(a: np.ndarray, dtype=torch.float32) -> torch.Tensor:
            # a writable C array: torch warns on read-only design arrays (trials, weights) even when it copies
            return torch.as_tensor(np.require(a, requirements=["C", "W"]), dtype=dtype, device=device)

        self.X = t(arrays["X"])
        self.Z = [t(z) for z in arrays["Z"]]
        self.F = t(arrays["F"])
        self.term_index = [t(i, torch.long) for i in arrays["term_index"]]
        self.level_index = [t(i, torch.long) for i in arrays["level_index"]]
        self.y = t(arrays["y"])  # training batches: the design is a fitting design
        self.offset = t(arrays["offset"])
        self.trials = t(arrays["trials"])
        self.prior = t(arrays["prior"])

    def eta(self, model: HierEnsemble, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(linear part + offset, nonlinear part)`` of the rows: the offset is a known part of
        the linear predictor, so it sits with the linear part (the MLP never sees it)."""
        lin, nl = model(
            self.X[rows], [z[rows] for z in self.Z], [i[rows] for i in self.term_index], self.F[rows], [i[rows] for i in self.level_index]
        )
        return lin + self.offset[rows], nl

    def nll(self, model: HierEnsemble, rows: torch.Tensor, family: str) -> torch.Tensor:
        """Per-row negative log-likelihood times the prior weights (members × rows)."""
        lin, nl = self.eta(model, rows)
        return negative_loglik(lin + nl, self.y[rows], self.trials[rows], self.prior[rows], model.log_sigma, family)


def model_config(design: Design, settings: Settings, n_features: int, family: Family) -> dict:
    terms: list[dict[str, Any]] = [
        {"n_groups": design.hierarchy.level(td.level).n_groups, "k": len(td.coefficients), "correlated": bool(td.term.correlated and len(td.coefficients) > 1)}
        for td in design.terms
    ]
    for t, td in enumerate(design.terms):
        terms[t]["children"] = _child_terms(design, t)
    levels = [{"n_groups": lv.n_groups, "dim": d} for lv, d in zip(design.hierarchy.levels, settings.embedding_dims)]
    hidden = list(settings.hidden)
    if n_features + sum(settings.embedding_dims) == 0:
        hidden = []  # nothing for an MLP to read: it would only be a second intercept
    return {"n_members": settings.n_members, "n_x": len(design.x_names), "terms": terms, "levels": levels,
            "n_features": n_features, "hidden": hidden, "family": family.name}


def _child_terms(design: Design, t: int) -> list:
    """``[[child_term, [[j_parent, j_child], ...]], ...]``: terms one level down sharing coefficients."""
    td = design.terms[t]
    out: dict[int, list] = {}
    for child_level in design.hierarchy.children(td.level):
        for jp, coef in enumerate(td.coefficients):
            for c, other in enumerate(design.terms):
                if other.level == child_level and coef in other.coefficients:
                    out.setdefault(c, []).append([jp, other.coefficients.index(coef)])
                    break
    return [[c, pairs] for c, pairs in out.items()]


def new_model(config: dict, design: Design, family: Family, seed: int, device: torch.device,
              start: tuple[float, float] | None = None) -> HierEnsemble:
    """A fresh ensemble: parents wired from the hierarchy, a GLM's intercept and size at their
    starting values (:func:`hierfit.engines.neural._prep.glm_start`)."""
    torch.manual_seed(seed)
    model = HierEnsemble(config)
    with torch.no_grad():
        for t, td in enumerate(design.terms):
            parent_index = design.hierarchy.level(td.level).parent_index
            if parent_index is not None:
                getattr(model, f"up_{t}").copy_(torch.as_tensor(parent_index, dtype=torch.long))
    intercept, theta = start if start is not None else glm_start(design, family)
    with torch.no_grad():
        if not family.normal_errors and INTERCEPT in design.x_names:
            # start the intercept at the link of the mean outcome, as a GLM would (a gaussian
            # outcome is centred by the scaling instead)
            model.beta[:, design.x_names.index(INTERCEPT)] = intercept
        if family.dispersion == "theta":  # from theta = 1 a long way to a count's usual size
            model.log_sigma.fill_(float(np.log(theta)))
    return model.to(device)


def run(
    model: HierEnsemble,
    data: Batches,
    *,
    weights: torch.Tensor,
    info: list[torch.Tensor],
    train_idx: np.ndarray,
    val_idx: np.ndarray | None,
    settings: Settings,
    options: OPTIONS,
    stop_at: np.ndarray | None = None,
    lr_schedule: list[float] | None = None,
    label: str = "training",
) -> History:
    """Train in place. With ``val_idx``: early stopping, restoring each member's best epoch.

    Without it (the refit), member ``m`` is snapshotted after epoch ``stop_at[m]`` and the
    learning rates replay ``lr_schedule``.
    """
    t0 = time.perf_counter()
    M = model.n_members
    family = str(model.config["family"])
    device = data.X.device
    gen = torch.Generator().manual_seed(int(options.seed) + 1)
    # The SDs (Cholesky factors, sigma) are a handful of log-scale numbers that the data pin
    # down early; a 10x step lets them settle within a short run instead of staying near
    # their starting value (which would set the shrinkage for the whole fit).
    scale_params = {id(p) for p in [*model.chol, model.log_sigma]}
    opt = torch.optim.Adam(
        [
            {"params": [p for p in model.parameters() if id(p) not in scale_params], "mult": 1.0},
            {"params": [p for p in model.parameters() if id(p) in scale_params], "mult": VARIANCE_LR_MULT},
        ],
        lr=settings.learning_rate,
        foreach=True,
    )
    n_tr = len(train_idx)
    train_t = torch.as_tensor(train_idx, dtype=torch.long)
    n_batches = max(1, int(np.ceil(n_tr / settings.batch_size)))
    active = [(s[..., 0, 0] > 0).sum(-1).to(torch.float32) if s.shape[-1] else torch.zeros(M, device=device) for s in info]
    hist = History(best_loss=np.full(M, np.inf), best_epoch=np.full(M, -1), stopped=np.zeros(M, dtype=bool))
    best = {k: v.detach().clone() for k, v in model.state_dict().items()}
    bad = np.zeros(M, dtype=int)
    lr, lr_bad, best_mean = settings.learning_rate, 0, np.inf
    n_epochs = settings.max_epochs if stop_at is None else int(stop_at.max()) + 1
    val_t = torch.as_tensor(val_idx, dtype=torch.long, device=device) if val_idx is not None else None
    with _progress(settings.progress, label, n_epochs) as tick:
        for epoch in range(n_epochs):
            if lr_schedule is not None:
                lr = lr_schedule[min(epoch, len(lr_schedule) - 1)]
            for group in opt.param_groups:
                group["lr"] = lr * group["mult"]
            hist.lr_per_epoch.append(lr)
            model.train()
            perm = train_t[torch.randperm(n_tr, generator=gen)].to(device)
            total = 0.0
            for rows in torch.tensor_split(perm, n_batches):
                nll = data.nll(model, rows, family)
                fit_term = (nll * weights[:, rows]).sum(1) * (n_tr / len(rows))
                pen = model.penalty(info, active, variance=options.variance, embedding_sd=options.embedding_sd, weight_decay=options.weight_decay)
                loss = ((fit_term + pen) / n_tr).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) / M
            hist.train_loss.append(total / n_batches)
            hist.epochs_run = epoch + 1
            if val_t is not None:
                val = evaluate(model, data, val_t, family)
                hist.val_loss.append(float(val.mean()))
                improved = val < hist.best_loss - MIN_DELTA
                bad = np.where(improved, 0, bad + 1)
                hist.best_loss = np.where(improved, val, hist.best_loss)
                hist.best_epoch = np.where(improved, epoch, hist.best_epoch)
                _snapshot(model, best, torch.as_tensor(improved, device=device))
                if val.mean() < best_mean - MIN_DELTA:
                    best_mean, lr_bad = float(val.mean()), 0
                else:
                    lr_bad += 1
                    if lr_bad >= max(2, settings.patience // 2):
                        lr, lr_bad = lr / 2, 0
                hist.stopped = bad >= settings.patience
                tick(epoch, hist.train_loss[-1], hist.val_loss[-1])
                if hist.stopped.all():
                    break
            else:
                done = torch.as_tensor(stop_at == epoch, device=device)
                _snapshot(model, best, done)
                tick(epoch, hist.train_loss[-1], None)
    model.load_state_dict(best)
    if stop_at is not None:
        hist.best_epoch, hist.stopped = stop_at.copy(), np.ones(M, dtype=bool)
    hist.seconds = time.perf_counter() - t0
    return hist


@torch.no_grad()
def evaluate(model: HierEnsemble, data: Batches, rows: torch.Tensor, family: str, chunk: int = 65536) -> np.ndarray:
    """Validation NLL per member: the prior-weighted mean over the rows, with their offsets
    and trials (the family's own log loss, so early stopping means the same for every family)."""
    model.eval()
    total = torch.zeros(model.n_members, device=rows.device)
    for part in torch.split(rows, chunk):
        total += data.nll(model, part, family).sum(1)
    weight = float(data.prior[rows].sum())
    return (total / max(weight, 1e-300)).cpu().numpy().astype(float)


def _snapshot(model: HierEnsemble, best: dict, members: torch.Tensor) -> None:
    if not bool(members.any()):
        return
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if value.dim() and value.shape[0] == model.n_members and name in best and not name.startswith("tril_mask"):
                best[name][members] = value[members]


@contextlib.contextmanager
def _progress(enabled: bool, label: str, total: int) -> Iterator:
    """A rich progress bar with the train/validation loss, or a no-op."""
    if not enabled:
        yield lambda *a: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=False) as bar:
        task = bar.add_task(f"neural {label}", total=total)

        def tick(epoch: int, train_loss: float, val_loss: float | None) -> None:
            val = f" val {val_loss:.4f}" if val_loss is not None else ""
            bar.update(task, completed=epoch + 1, description=f"neural {label}: train {train_loss:.4f}{val}")

        yield tick


def train(design: Design, spec: ModelSpec, options: OPTIONS):
    """Fit the ensemble (see :mod:`hierfit.engines.neural`)."""
    from hierfit.engines.neural._finish import finish

    family = spec.family
    settings = resolve(options, design.n, [lv.n_groups for lv in design.hierarchy.levels])
    device = pick_device(options.device)
    rng = np.random.default_rng(options.seed)
    scaling = make_scaling(design, family)
    arrays = scaled_arrays(design, scaling)
    val_mask = validation_split(design, options.validation, settings.validation_fraction, rng)
    _check_weighted_split(design, val_mask)
    start = glm_start(design, family)
    weights = bootstrap_weights(settings.n_members, ~val_mask, options.bootstrap, rng)
    config = model_config(design, settings, len(scaling.feature_names), family)
    # One thread by default on CPU: the network is small, so intra-op threads gain little on an
    # idle machine and lose up to 9x on a shared one (measured: 81 vs 9 s per 500k-row epoch).
    threads = options.threads or (1 if device.type == "cpu" else None)
    with torch_settings(threads):
        data = Batches(arrays, device)

        def tensors(w: np.ndarray) -> tuple[torch.Tensor, list[torch.Tensor]]:
            S = information(design, arrays, w, family, start[1])
            return torch.as_tensor(w, dtype=torch.float32, device=device), [torch.as_tensor(s, dtype=torch.float32, device=device) for s in S]

        w_t, info = tensors(weights)
        model = new_model(config, design, family, options.seed, device, start)
        first = run(model, data, weights=w_t, info=info, train_idx=np.flatnonzero(~val_mask), val_idx=np.flatnonzero(val_mask),
                    settings=settings, options=options, label="early stopping")
        histories = [first]
        gain = None
        if options.nonlinear == "auto" and config["hidden"]:
            gain = nonlinear_gain(design, model, scaling, family, options.reml_variances, val_mask)
            if not gain.keep:  # continue as the linear hierarchical model, with its trained linear part
                settings = replace(settings, hidden=(), embedding_dims=tuple(0 for _ in settings.embedding_dims))
                config = model_config(design, settings, len(scaling.feature_names), family)
                model = _linear_part(model, new_model(config, design, family, options.seed, device, start))
        if settings.refit:
            w_all, info_all = tensors(bootstrap_weights(settings.n_members, np.ones(design.n, dtype=bool), options.bootstrap, rng))
            model = new_model(config, design, family, options.seed, device, start)
            histories.append(run(model, data, weights=w_all, info=info_all, train_idx=np.arange(design.n), val_idx=None,
                                 settings=settings, options=options, stop_at=np.maximum(first.best_epoch, 0),
                                 lr_schedule=first.lr_per_epoch, label="refit on all rows"))
        diagnostics = _diagnostics(first, settings)
        return finish(design, spec, model, data, scaling, settings, options, histories, diagnostics, gain)


def _check_weighted_split(design: Design, val_mask: np.ndarray) -> None:
    """Both sides of the validation split need rows that count (prior weight above 0)."""
    prior = prior_weights(design)
    for name, rows in (("training", ~val_mask), ("validation", val_mask)):
        if not (prior[rows] > 0).any():
            raise DataError(
                f"Engine 'neural': every {name} row has prior weight 0 ({int(rows.sum())} rows; "
                f"{int((prior > 0).sum())} of {design.n} rows have a positive weight), so early stopping has nothing to "
                "measure. Drop the rows of weight 0 before fitting, or set a larger validation_fraction."
            )


def _linear_part(trained: HierEnsemble, linear: HierEnsemble) -> HierEnsemble:
    """``linear`` (a network without MLP) loaded with ``trained``'s linear parameters."""
    keep = linear.state_dict().keys()
    linear.load_state_dict({k: v for k, v in trained.state_dict().items() if k in keep})
    return linear


def _diagnostics(hist: History, settings: Settings) -> list[Diagnostic]:
    out = []
    if not hist.stopped.all():
        n = int((~hist.stopped).sum())
        out.append(
            Diagnostic(
                "early_stopping",
                f"{n} of {len(hist.stopped)} ensemble members were still improving on the validation split when "
                f"training reached max_epochs={settings.max_epochs}. Raise max_epochs (or learning_rate) and refit.",
            )
        )
    return out
