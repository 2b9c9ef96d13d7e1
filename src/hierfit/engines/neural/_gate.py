"""Keep the MLP only where it predicts held-out rows better than the linear part alone.

A network always fits *something* with its nonlinear part: on data whose structure the linear
hierarchical model already captures, that something is noise, and predictions for held-out rows
and new groups get slightly worse than the mixed model's. So, after the early-stopping run,
the validation rows decide (as early stopping at zero trees does for boosting):

* for each member, its linear part is solved exactly on the training rows twice (the mixed
  model's conditional modes, see :func:`~hierfit.engines.neural._posterior.polish`): once
  with the network's output as an offset and once without, with variance components found the
  same way for both (gaussian: REML given each offset; else the member's learned SDs);
* each version predicts the validation rows; the per-row log-density gain of the network,
  averaged over members, is compared to its standard error across rows.

The MLP is kept when the gain exceeds two standard errors (the rule shared with
``boosted-mixed``'s trees, :mod:`hierfit.engines.heldout_gain`); on the nonlinear simulation
the gain is over ten standard errors.
"""

from __future__ import annotations

import copy

import numpy as np

from hierfit.design import Design
from hierfit.engines.heldout_gain import HeldoutGain
from hierfit.engines.layout import ParameterLayout
from hierfit.engines.neural._finish import (
    member_linear,
    member_variances,
    reml_variances,
)
from hierfit.engines.neural._posterior import polish
from hierfit.engines.neural._prep import Scaling
from hierfit.engines.neural._result import network_output
from hierfit.model import Family


def nonlinear_gain(design: Design, model, scaling: Scaling, family: Family, reml: bool, val_mask: np.ndarray) -> HeldoutGain:
    """Held-out gain of ``model``'s MLP over its linear part alone (see the module docstring)."""
    train = ~val_mask
    g = network_output(copy.deepcopy(model).cpu().double().eval(), scaling, design)
    M = len(g)
    layout = ParameterLayout.from_design(design)
    R = layout.row_matrix(design)
    R_train, R_val = R[train], R[val_mask]
    zero = np.zeros((1, design.n))
    start = layout.flatten(*member_linear(model, scaling, design))  # Newton's start for bernoulli/poisson

    def heldout_logpdf(offset: np.ndarray, theta: np.ndarray, covs_m: list[np.ndarray], sigma_m: float | None) -> np.ndarray:
        theta = polish(R_train, layout, design.y[train], offset[train], theta, covs_m, sigma_m, family)
        mu = family.inverse_link(np.asarray(R_val @ theta).ravel() + offset[val_mask])
        return family.logpdf(design.y[val_mask], mu, None, sigma_m)

    def member_sigma(sigma: np.ndarray | None, m: int) -> float | None:
        return None if sigma is None else float(sigma[m])

    sigma: np.ndarray | None
    if family.normal_errors and reml and design.terms:
        covs, sigma = reml_variances(design, g, train)
        covs0, sigma0 = reml_variances(design, zero, train)
        # without an offset the members' linear models coincide: one baseline serves them all
        baselines = [heldout_logpdf(zero[0], start[0], [c[0] for c in covs0], float(sigma0[0]))] * M
    else:
        covs, sigma = member_variances(model, scaling, family)
        baselines = [heldout_logpdf(zero[0], start[m], [c[m] for c in covs], member_sigma(sigma, m)) for m in range(M)]
    gains = [heldout_logpdf(g[m], start[m], [c[m] for c in covs], member_sigma(sigma, m)) - baselines[m] for m in range(M)]
    return HeldoutGain.from_rows(np.mean(gains, axis=0))
