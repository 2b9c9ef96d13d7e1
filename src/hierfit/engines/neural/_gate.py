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
from hierfit.engines.neural._coords import LinearCoords
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
    # in standardised coordinates (see _coords); a log-density gain is the same in any units
    coords = LinearCoords.from_design(design, scaling, layout)
    R_train, R_val = coords.R[train], coords.R[val_mask]
    y_t = coords.design_t.y
    zero = np.zeros((1, design.n))
    start = coords.theta_t(layout.flatten(*member_linear(model, scaling, design)))  # Newton's start for GLMs

    def heldout_logpdf(offset_t: np.ndarray, theta: np.ndarray, covs_t: list[np.ndarray], sigma_t: float | None) -> np.ndarray:
        """All in standardised units: the offset, covariances and sigma too."""
        theta = polish(R_train, layout, y_t[train], offset_t[train], theta, covs_t, sigma_t, family)
        mu = family.inverse_link(np.asarray(R_val @ theta).ravel() + offset_t[val_mask])
        return family.logpdf(y_t[val_mask], mu, None, sigma_t)

    def member_sigma(sigma: np.ndarray | None, m: int) -> float | None:
        return None if sigma is None else float(sigma[m])

    sigma: np.ndarray | None
    g = coords.g_t(g)
    if family.normal_errors and reml and design.terms:
        covs, sigma = reml_variances(coords.design_t, g, train)
        covs0, sigma0 = reml_variances(coords.design_t, zero, train)
        # without an offset the members' linear models coincide: one baseline serves them all
        baselines = [heldout_logpdf(zero[0], start[0], [c[0] for c in covs0], float(sigma0[0]))] * M
    else:
        covs, sigma = member_variances(model, scaling, family)
        baselines = [heldout_logpdf(zero[0], start[m], [c[m] for c in covs], member_sigma(sigma, m)) for m in range(M)]
    gains = [heldout_logpdf(g[m], start[m], [c[m] for c in covs], member_sigma(sigma, m)) - baselines[m] for m in range(M)]
    return HeldoutGain.from_rows(np.mean(gains, axis=0))
