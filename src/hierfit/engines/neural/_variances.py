"""Each member's variance components and dispersion: as trained, or by the marginal likelihood.

Training finds the SDs as part of one penalised mode over all parameters. Even with the
Laplace term of :mod:`hierfit.engines.neural._model` (which integrates out each group's
deviations given the GLM weights at a smoothed group mean, ignoring the coupling between
levels) that is an approximation, and on real count data it was far off: on lme4's
Arabidopsis (poisson, ``(1 | popu/gen)``) the trained SDs came out at 0.79 and 0.42 of
glmer's and the intercept's standard error at 0.46 of glmer's, with no warning.

So after training, with each member's network output ``g`` held fixed as an offset, the
variance components are re-estimated by the marginal likelihood of the linear part -- exactly
the ``mixed`` engine's problem with a known offset:

* gaussian: exact REML (:func:`hierfit.engines.mixed.lmm.fit_lmm`), with the prior weights;
* other families: the Laplace approximation of the marginal likelihood
  (:func:`hierfit.engines.mixed.glmm.fit_glmm`, glmer's ``nAGQ = 1``; glmmTMB's for the
  negative binomial, whose size ``theta`` it estimates jointly), with trials, prior weights
  and the design's offset.

The linear part is then solved exactly given them (:func:`._posterior.polish`). Members whose
networks coincide (the MLP dropped by the gate: ``g = 0``) share one fit. Where the marginal
fit fails, the trained values are kept and a ``variance_components`` diagnostic says so.
"""

from __future__ import annotations

import numpy as np
import torch

from hierfit.checks import Diagnostic
from hierfit.design import Design
from hierfit.engines.neural._model import HierEnsemble
from hierfit.engines.neural._prep import Scaling
from hierfit.model import Family

#: what a failed or unconverged marginal fit is reported as
VARIANCE_DIAGNOSTIC = "variance_components"


def member_variances(model: HierEnsemble, scaling: Scaling, family: Family) -> tuple[list[np.ndarray], np.ndarray | None]:
    """The members' trained ``Sigma_t`` (members × k × k per term) and dispersion, in the network's
    standardised units (see :mod:`._coords` for the map to data units).

    The dispersion is the gaussian ``sigma`` or the negative-binomial ``theta`` (``None`` for
    families without one), as ``Family.dispersion`` names it.
    """
    with torch.no_grad():
        covs = []
        for t in range(len(scaling.z_maps)):
            L = model.cholesky(t).detach().cpu().double().numpy()
            covs.append(L @ L.transpose(0, 2, 1))
        disp = np.exp(model.log_sigma.detach().cpu().double().numpy()) if family.has_dispersion else None
    return covs, disp


def _restrict(design: Design, rows: np.ndarray | None):
    """The core's blocks and the design's arrays, on ``rows`` (a boolean mask) or all rows."""
    from hierfit.engines.mixed.engine import random_blocks
    from hierfit.engines.mixed.lmm import RandomBlock

    blocks = random_blocks(design)
    n = design.n
    arrays = {
        "X": design.X, "y": design.y,
        "offset": np.zeros(n) if design.offset is None else design.offset,
        "trials": None if design.trials is None else np.asarray(design.trials, dtype=float),
        "weights": None if design.weights is None else np.asarray(design.weights, dtype=float),
    }
    if rows is not None:
        blocks = [RandomBlock(b.group_index[rows], b.n_groups, b.Z[rows], b.correlated, b.parent) for b in blocks]
        arrays = {k: None if v is None else v[rows] for k, v in arrays.items()}
    return blocks, arrays


def _distinct(g: np.ndarray) -> tuple[list[int], np.ndarray]:
    """Members to fit and, per member, which fitted member it shares a solution with."""
    firsts: list[int] = []
    owner = np.empty(len(g), dtype=int)
    for m in range(len(g)):
        same = next((f for f in firsts if np.array_equal(g[f], g[m])), None)
        if same is None:
            firsts.append(m)
            same = m
        owner[m] = same
    return firsts, owner


def reml_variances(design: Design, g: np.ndarray, rows: np.ndarray | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """Per member, REML variance components and residual SD with its network (and the design's
    offset) as an offset and the prior weights as lme4's.

    ``rows`` (a boolean mask) restricts the fit to those rows; groups without rows there
    simply get no data (their deviations stay at the prior). Called with the standardised
    design of :mod:`._coords` and its ``g_t``, the results are in standardised units.
    """
    from hierfit.engines.mixed.lmm import fit_lmm

    blocks, a = _restrict(design, rows)
    g = g if rows is None else g[:, rows]
    firsts, owner = _distinct(g)
    sols = {m: fit_lmm(a["X"], a["y"] - a["offset"] - g[m], blocks, reml=True, weights=a["weights"]) for m in firsts}
    covs = [np.stack([sols[owner[m]].covariances[t] for m in range(len(g))]) for t in range(len(design.terms))]
    return covs, np.array([sols[owner[m]].sigma for m in range(len(g))])


def laplace_variances(design: Design, g: np.ndarray, family: Family, fallback: tuple[list[np.ndarray], np.ndarray | None],
                      rows: np.ndarray | None = None) -> tuple[list[np.ndarray], np.ndarray | None, list[Diagnostic]]:
    """Per member, Laplace-ML variance components (and NB size) with its network as an offset.

    ``fallback`` holds the trained values (:func:`member_variances`), kept for a member whose
    marginal fit raises or does not converge -- with a diagnostic, since those SDs are the
    training-time approximation, typically too small. Units as for :func:`reml_variances`
    (for a non-gaussian family the standardised outcome is the outcome itself).
    """
    from hierfit.engines.mixed.glmm import fit_glmm

    blocks, a = _restrict(design, rows)
    g = g if rows is None else g[:, rows]
    firsts, owner = _distinct(g)
    covs = [c.copy() for c in fallback[0]]
    disp = None if fallback[1] is None else fallback[1].copy()
    failed: list[str] = []
    for m in firsts:
        try:
            sol = fit_glmm(a["X"], a["y"], blocks, family, trials=a["trials"], weights=a["weights"],
                           offset=a["offset"] + g[m])
        except (ValueError, np.linalg.LinAlgError, FloatingPointError) as exc:
            failed.append(f"member {m}: {exc}")
            continue
        if not sol.converged:
            failed.append(f"member {m}: {sol.message}")
            continue
        for mm in np.flatnonzero(owner == m):
            for t in range(len(covs)):
                covs[t][mm] = sol.covariances[t]
            if disp is not None and sol.nb_theta is not None:
                disp[mm] = sol.nb_theta
    diagnostics = []
    if failed:
        diagnostics.append(Diagnostic(
            VARIANCE_DIAGNOSTIC,
            f"The Laplace (marginal-likelihood) fit of the variance components failed for {len(failed)} of {len(firsts)} "
            f"ensemble members ({'; '.join(failed[:2])}); their SDs are the training-time approximation, which on real "
            "count data came out 18-58% too small (with too narrow intervals). Use engine='mixed' for the group SDs, "
            "or check the data for separation and groups without information.",
        ))
    return covs, disp, diagnostics


def approximate_variances_diagnostic(family: Family) -> Diagnostic:
    """Said when the marginal-likelihood re-estimation is switched off (``reml_variances=False``)."""
    what = "sigma and the group SDs" if family.normal_errors else "the group SDs"
    return Diagnostic(
        VARIANCE_DIAGNOSTIC,
        f"reml_variances=False: {what} are the training-time approximation of the marginal likelihood, not its "
        "maximum; on real count data it came out 18-58% too small (and the intervals too narrow). Keep "
        "reml_variances=True, or use engine='mixed' for the group SDs.",
    )
