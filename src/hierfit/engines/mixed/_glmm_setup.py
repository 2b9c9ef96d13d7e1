"""Input checks and the fixed structures of one GLMM fit (plan, layouts, standardisation)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from hierfit.model.family import Family

from ._blocks import RandomBlock, make_plan
from ._factor import System
from ._glmm_agq import check_agq
from ._glmm_codegen import GeneratedModule
from ._glmm_fused import FUSED_KINDS
from ._glmm_fused import fused as fused_kernels
from ._glmm_kernels import HAVE_NUMBA, RowLayout, make_row_layout
from ._glmm_pirls import Problem
from ._glmm_rows import RowModel, row_chunks
from ._standardize import Standardization, standardize
from ._suffstats import make_layout
from ._theta import ThetaSpec
from .lmm import _check_fixed_rank, _factor_map

__all__ = ["FitSetup", "clean_rows", "fused_for", "prepare", "resolve_dispersion"]


@dataclass
class FitSetup:
    """A checked problem ready to optimise.

    Attributes
    ----------
    prob : Problem
    std : Standardization
        Maps of ``X`` and of every term (the outcome is not transformed).
    blocks : list of RandomBlock
    family : Family
    y, trials, weights : numpy.ndarray
        Cleaned arrays (excluded rows carry weight 0).
    n_agq : int
    information : str
    estimate_disp : bool
        Whether a negative-binomial size is estimated.
    nb_fixed : float or None
        A fixed NB size.
    nonfinite_offset, zero_trials : numpy.ndarray
        Indices of the rows left out of the likelihood for that reason.
    """

    prob: Problem
    std: Standardization
    blocks: list[RandomBlock]
    family: Family
    y: np.ndarray
    trials: np.ndarray
    weights: np.ndarray
    n_agq: int
    information: str
    estimate_disp: bool
    nb_fixed: float | None
    nonfinite_offset: np.ndarray
    zero_trials: np.ndarray

    #: rows that carry likelihood, when the rows live in shards (``weights`` is then empty)
    shard_n_obs: int | None = None

    @property
    def n_obs(self) -> int:
        """Rows that carry likelihood."""
        if self.shard_n_obs is not None:
            return self.shard_n_obs
        return int(np.count_nonzero(self.weights > 0))


def _vector(v: np.ndarray | None, n: int, name: str, default: float, *, shared: bool = False) -> np.ndarray:
    """The row vector ``v`` as a float copy, or ``default`` on every row when it is ``None``.

    ``shared=True`` gives the default as a read-only stride-0 view of one value: memory is
    per row (the fit's scale limit), and a default that is never written needs no rows.
    """
    if v is None:
        return np.broadcast_to(np.float64(default), (n,)) if shared else np.full(n, default)
    a = np.asarray(v, dtype=np.float64).ravel()
    if a.shape != (n,):
        raise ValueError(f"{name} must have one value per row ({n}), got shape {np.shape(v)}")
    return a.copy()


def resolve_dispersion(family: Family, nb_theta: float | None, information: str | None) -> tuple[bool, str]:
    """Whether a negative-binomial size is estimated, and the information of ``H``."""
    if nb_theta is not None:
        if not family.has_dispersion:
            raise ValueError(f"family {family} has no dispersion to fix (nb_theta)")
        if not (np.isfinite(nb_theta) and nb_theta > 0):
            raise ValueError(f"nb_theta must be positive and finite, got {nb_theta}")
    estimate_disp = family.has_dispersion and nb_theta is None
    if information is None:
        information = "observed" if estimate_disp else "expected"
    if information not in ("expected", "observed"):
        raise ValueError(f"information must be 'expected' or 'observed', got {information!r}")
    return estimate_disp, information


def fused_for(rows: RowModel, rl: RowLayout, use_numba: bool) -> GeneratedModule | None:
    """The fused row passes of the family (:mod:`._glmm_fused`), when it has them."""
    kind = (rows.family.name, rows.family.link.name)
    if use_numba and HAVE_NUMBA and rows.canonical_pair and kind in FUSED_KINDS:
        return fused_kernels(rl.structure, kind)
    return None


def clean_rows(family: Family, y: np.ndarray, trials: np.ndarray | None, weights: np.ndarray | None,
               offset: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Check the outcome, trials, weights and offset of some rows; leave out (weight 0) rows with
    zero trials or a non-finite offset.

    Returns ``(y, trials, weights, offset, nonfinite_offset_rows, zero_trial_rows)``; a shard of
    rows is cleaned exactly as the whole (every rule is per row).
    """
    n = y.size
    # Defaults that are never written are stride-0 views: rows are left out (and their
    # weight and offset written) only through zero trials or a non-finite offset, so unit
    # trials are never written, and unit weights and a zero offset are not without them.
    t = _vector(trials, n, "trials", 1.0, shared=True)
    w = _vector(weights, n, "weights", 1.0, shared=trials is None and offset is None)
    o = _vector(offset, n, "offset", 0.0, shared=offset is None)
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("prior weights must be finite and non-negative")
    if not np.all(np.isfinite(t)) or np.any(t < 0) or np.any(t != np.round(t)):
        raise ValueError("trials must be non-negative whole numbers")
    bad_off = np.flatnonzero(~np.isfinite(o))
    zero_t = np.flatnonzero(t == 0)
    excluded = np.zeros(n, dtype=bool)
    excluded[bad_off] = True
    excluded[zero_t] = True
    # Left-out rows keep harmless values so the row passes stay finite.
    if excluded.any():
        y = y.copy()
        if offset is not None:  # otherwise the offset is zero already (and shared)
            o[excluded] = 0.0
        w[excluded] = 0.0
        y[excluded & ~np.isfinite(y)] = 0.0
    keep = ~excluded
    try:
        family.check_outcome(y[keep], "y", t[keep])
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    if excluded.any():
        y[excluded] = 0.0
    return y, t, w, o, bad_off, zero_t


def prepare(X: np.ndarray, y: np.ndarray, blocks: list[RandomBlock], family: Family, *,
            trials: np.ndarray | None, weights: np.ndarray | None, offset: np.ndarray | None,
            n_agq: int, information: str | None, nb_theta: float | None,
            use_numba: bool) -> FitSetup:
    """Check the inputs and build the fit's structures (one pass for the rank check)."""
    if not isinstance(family, Family):
        # The core raises ValueError only; the engine maps it to the user-facing tree.
        raise ValueError(f"family must be a Family row of hierfit.model.family, got {family!r}")  # noqa: TRY004
    if family.normal_errors:
        raise ValueError(f"family {family} has normal errors: fit it as a linear mixed model "
                         "(fit_lmm), whose likelihood is exact")
    X = np.ascontiguousarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).ravel()  # copied below only if rows are left out
    if X.ndim != 2 or X.shape[0] != y.size:
        raise ValueError(f"X must be (n, p) and y (n,); got X {X.shape} and y {y.shape}")
    n, p = X.shape
    if n == 0:
        raise ValueError("no rows to fit")
    if not np.all(np.isfinite(X)):
        raise ValueError("X must be finite (drop rows with missing values first)")
    if trials is not None and not family.has_trials:
        raise ValueError(f"family {family} has no trials (use the binomial family for "
                         "successes out of trials)")
    y, t, w, o, bad_off, zero_t = clean_rows(family, y, trials, weights, offset)
    if not np.any(w > 0):
        raise ValueError("no row carries likelihood (all weights, trials or offsets excluded)")
    estimate_disp, information = resolve_dispersion(family, nb_theta, information)
    plan, _ = make_plan(blocks, n)
    std = standardize(X, y, [[b.column(a) for a in range(b.k)] for b in blocks],
                      [b.correlated for b in blocks])
    # The outcome is modelled on its own scale: only X and Z are standardised.
    std = replace(std, y_center=0.0, y_scale=1.0, ones_coef=None)
    _check_fixed_rank(_xtx(X, std.x.center, std.x.scale), p)
    factor_maps = [_factor_map(std, fac.blocks) for fac in plan.factors]
    lay0, layf = make_layout(plan, 0), make_layout(plan, p)
    rl = make_row_layout(plan, lay0, factor_maps)
    rows = RowModel(family, y, t, w, information, fast=use_numba)
    spec = ThetaSpec.from_blocks(blocks)
    fused = fused_for(rows, rl, use_numba)
    prob = Problem(X, o, std.x, rows, rl, plan, spec, System(plan, lay0, []),
                   System(plan, layf, []), use_numba, fused)
    check_agq(prob, int(n_agq))
    return FitSetup(prob, std, blocks, family, y, t, w, int(n_agq), information,
                    estimate_disp, None if nb_theta is None else float(nb_theta),
                    bad_off, zero_t)


def _xtx(X: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``[X_t 0]' [X_t 0]`` of the standardised columns (chunked; the shape the check wants)."""
    n, p = X.shape
    out = np.zeros((p + 1, p + 1))
    for sl in row_chunks(n):  # small chunks: the temporary is a fraction of one X at any n
        xt = X[sl] - center
        xt /= scale
        out[:p, :p] += xt.T @ xt
    return out
