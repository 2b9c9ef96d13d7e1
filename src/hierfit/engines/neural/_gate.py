"""Keep the MLP only where it predicts held-out rows better than the linear part alone.

A network always fits *something* with its nonlinear part: on data whose structure the linear
hierarchical model already captures, that something is noise, and predictions for held-out rows
and new groups get slightly worse than the mixed model's. So, after the early-stopping run,
the validation rows decide (as early stopping at zero trees does for boosting):

* for each member, its linear part is solved exactly on the training rows twice (the mixed
  model's conditional modes, see :func:`~hierfit.engines.neural._posterior.polish`): once
  with the network's output as an offset and once without, with variance components found the
  same way for both (the marginal likelihood given each offset, :mod:`._variances`: REML for
  gaussian, Laplace for the other families; with ``reml_variances=False`` the learned SDs);
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
from hierfit.engines.neural._finish import member_linear
from hierfit.engines.neural._posterior import polish
from hierfit.engines.neural._prep import Scaling, prior_weights
from hierfit.engines.neural._result import network_output
from hierfit.engines.neural._variances import laplace_variances, member_variances, reml_variances
from hierfit.model import Family


def nonlinear_gain(design: Design, model, scaling: Scaling, family: Family, reml: bool, val_mask: np.ndarray) -> HeldoutGain:
    """Held-out gain of ``model``'s MLP over its linear part alone (see the module docstring).

    Every family is judged by its own log-density, with the rows' trials and offsets, each
    validation row's gain counted ``w_i`` times (prior weights, normalised to mean 1).
    """
    train = ~val_mask
    g = network_output(copy.deepcopy(model).cpu().double().eval(), scaling, design)
    M = len(g)
    layout = ParameterLayout.from_design(design)
    # in standardised coordinates (see _coords); a log-density gain is the same in any units
    coords = LinearCoords.from_design(design, scaling, layout)
    R_train, R_val = coords.R[train], coords.R[val_mask]
    y_t = coords.design_t.y
    known = np.zeros(design.n) if coords.design_t.offset is None else coords.design_t.offset
    trials = np.ones(design.n) if design.trials is None else np.asarray(design.trials, dtype=float)
    prior = prior_weights(design)
    row_weight = prior[val_mask] / prior[val_mask].mean()
    zero = np.zeros((1, design.n))
    start = coords.theta_t(layout.flatten(*member_linear(model, scaling, design)))  # Newton's start for GLMs

    def heldout_logpdf(g_t: np.ndarray, theta: np.ndarray, covs_t: list[np.ndarray], disp_t: float | None) -> np.ndarray:
        """All in standardised units: the network output, covariances and dispersion too."""
        offset_t = g_t + known
        theta = polish(R_train, layout, y_t[train], offset_t[train], theta, covs_t, disp_t, family, trials[train], prior[train])
        mu = family.inverse_link(np.asarray(R_val @ theta).ravel() + offset_t[val_mask])
        # gaussian prior weights are lme4's: Var(y_i) = sigma² / w_i
        scale = disp_t / np.sqrt(np.maximum(prior[val_mask], 1e-300)) if family.normal_errors and disp_t is not None else disp_t
        return family.logpdf(y_t[val_mask], mu, trials[val_mask], scale)

    def member_disp(disp: np.ndarray | None, m: int) -> float | None:
        return None if disp is None else float(disp[m])

    disp: np.ndarray | None
    disp0: np.ndarray | None
    g = coords.g_t(g)
    trained = member_variances(model, scaling, family)
    if reml and design.terms:
        if family.normal_errors:
            covs, disp = reml_variances(coords.design_t, g, train)
            covs0, disp0 = reml_variances(coords.design_t, zero, train)
        else:
            covs, disp, _ = laplace_variances(coords.design_t, g, family, trained, train)
            first = ([c[:1] for c in trained[0]], None if trained[1] is None else trained[1][:1])
            covs0, disp0, _ = laplace_variances(coords.design_t, zero, family, first, train)
        # without the network the members' linear models coincide: one baseline serves them all
        baselines = [heldout_logpdf(zero[0], start[0], [c[0] for c in covs0], member_disp(disp0, 0))] * M
    else:
        covs, disp = trained
        baselines = [heldout_logpdf(zero[0], start[m], [c[m] for c in covs], member_disp(disp, m)) for m in range(M)]
    gains = [heldout_logpdf(g[m], start[m], [c[m] for c in covs], member_disp(disp, m)) - baselines[m] for m in range(M)]
    return HeldoutGain.from_rows(np.mean(gains, axis=0) * row_weight)
