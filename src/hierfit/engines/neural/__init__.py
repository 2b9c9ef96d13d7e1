"""Engine ``neural``: a PyTorch hierarchical network whose group effects pool along the tree.

The link-scale predictor of one network is ::

    eta = X beta  +  sum_t Z_t b_t[group_t]  +  g(x, e_1[group_1], ..., e_L[group_L])
          linear part (exactly the mixed model's)   nonlinear part (an MLP)

* ``b_t[g]`` is group ``g``'s *deviation* from its parent for the coefficients of term ``t``
  (a group's total is the national coefficient plus the deviations of all its ancestors and its
  own), so every group's parameters are its parent's plus a deviation. Deviations carry the
  hierarchical prior ``b_t[g] ~ N(0, Sigma_t)``, ``Sigma_t = L_t L_tᵀ`` learned per term
  (diagonal for ``||`` terms and single coefficients, a full Cholesky factor otherwise).
* ``e_l[g]`` is a learned embedding of group ``g`` at level ``l`` (prior ``N(0, embedding_sd²)``),
  fed to the MLP together with the standardised population predictors.

**Families, offsets, weights.** ``nll`` is the family's negative log-likelihood: gaussian
(learned ``sigma``), bernoulli, binomial with trials (``cbind(y, n - y)``), poisson and the
negative binomial NB2 (``Var = mu + mu²/theta``, ``theta`` learned; reported like the ``mixed``
engine's, as the ``dispersion`` row and ``statistics["nb_theta"]``). The design's offset is
added to the linear predictor in training and prediction (new rows bring their own) and is
its own column of the decomposition; the MLP never sees it. Prior weights are lme4's: each
row's log-likelihood counts ``w_i`` times (gaussian: ``Var = sigma²/w_i``), in training, in
the validation loss and in the gate.

**Objective: a MAP over the full data.** Each optimiser step minimises an unbiased mini-batch
estimate of ``(sum_i nll_i + penalty) / n_train`` where ``nll`` is the family's negative
log-likelihood (times the prior weights) and ``penalty`` holds the exact prior terms:
``sum_g ½ b_gᵀ Sigma⁻¹ b_g`` plus, by default (``variance="laplace"``), the Laplace correction
``½ log det(I + Lᵀ H_g L)`` with ``H_g`` the data information of group ``g``'s deviations. The
plain joint MAP (``variance="joint"``, the textbook ``n_groups · log det L`` term) has its
global optimum at ``Sigma = 0`` with every deviation zero; the Laplace term replaces
``n_groups · log det L`` by the marginal-likelihood term, as lme4's profiled deviance does, so
the SDs are estimated rather than collapsing for small or noisy groups. ``H_g`` ignores the
coupling between levels and, for the GLM families, uses the group's smoothed mean for the GLM
weight: an approximation that only affects the SD estimates, not the form of the model.

**Reported SDs are the marginal likelihood's.** That approximation was far off on real counts
(Arabidopsis, poisson: SDs at 0.79 and 0.42 of glmer's, the intercept's SE at 0.46), so after
training each member's variance components (and NB size) are re-estimated with its network
held fixed as an offset -- exact REML for gaussian, glmer's Laplace ML otherwise, the ``mixed``
engine's own core (:mod:`hierfit.engines.neural._variances`) -- and the linear part is solved
given them. On Arabidopsis and Mmmec the fixed effects then sit within 0.05 glmer SEs and the
SDs at glmer's. ``reml_variances=False`` keeps the trained ones, with a diagnostic.

**Identifiability.** After training, each network's MLP output is projected onto the linear
model's columns by the model's own penalised least squares (the mixed model of the MLP output,
with the learned SDs and sigma); the projection is added to ``beta`` and ``b`` and subtracted
from the nonlinear part. Predictions are unchanged, and the nonlinear part is what the linear
hierarchical model cannot express -- so ``beta``, the group effects and the decomposition keep
their mixed-model meaning.

**The MLP must earn its place.** After the early-stopping run, the validation rows compare
the network with its linear part alone (both solved exactly given the same variance
components); the MLP is kept only when its held-out log-density gain exceeds two standard
errors (``nonlinear="auto"``, see :mod:`hierfit.engines.neural._gate`). Otherwise the fit
continues as the linear hierarchical model -- on linear data, exactly the mixed model's
estimates -- instead of adding the small variance of a network fitted to noise.
``statistics`` report ``nonlinear_gain``, ``nonlinear_gain_se`` and ``nonlinear_kept``.

**Unseen groups** use their parent's values: their deviation is 0 (the base-class fallback)
and their level's embedding is the prior mean 0, i.e. the MLP sees the parent's embeddings and
a "typical child" at the unseen level.

**Uncertainty** comes from an ensemble of ``n_members`` networks trained side by side (one
stacked module, each member from its own initialisation: a deep ensemble) combined with the
Gaussian (Laplace) posterior of each member's linear parameters given its network -- the
conditional posterior of the mixed model, which carries the between-group part of the
uncertainty that a row-level resampling misses (see :mod:`hierfit.engines.neural._posterior`).
Those draws are the ``draws`` behind the intervals of fixed and group effects; prediction
intervals add each draw's member's nonlinear part (and outcome noise). ``bootstrap=True``
trains the members on balanced Bayesian-bootstrap weights and uses them as the draws instead.

Examples
--------
>>> import hierfit
>>> sim = hierfit.simulate(n_markets=4, n_submarkets=3, rows_per_submarket=40, seed=2)
>>> fit = hierfit.fit(sim.formula, sim.data, engine="neural", n_members=2, max_epochs=5, seed=0)
>>> list(fit.decompose(sim.data).columns)[-2:]
['population', 'nonlinear']
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hierfit.engines.neural._options import FAST_OPTIONS, OPTIONS

if TYPE_CHECKING:
    from hierfit.design import Design
    from hierfit.engines.neural._result import NeuralFit
    from hierfit.engines.state import LoadContext, StateReader
    from hierfit.model import ModelSpec

__all__ = ["FAST_OPTIONS", "OPTIONS", "fit", "load"]


def fit(design: Design, spec: ModelSpec, options: OPTIONS) -> NeuralFit:
    """Train the ensemble on ``design`` and return its :class:`NeuralFit`.

    Examples
    --------
    >>> import hierfit
    >>> from hierfit.engines import neural
    >>> sim = hierfit.simulate(n_markets=3, n_submarkets=2, rows_per_submarket=30, seed=1)
    >>> d = hierfit.build_design(hierfit.make_spec(sim.formula), sim.data)
    >>> f = neural.fit(d, d.spec, neural.OPTIONS(n_members=2, max_epochs=3))
    >>> f.member_theta.shape[0], f.draws.shape[0]  # 2 networks, 100 posterior draws each
    (2, 200)
    """
    # torch is imported here, not when hierfit (or the registry) is imported
    from hierfit.engines.neural._train import train

    return train(design, spec, options)


def load(state: StateReader, context: LoadContext) -> NeuralFit:
    """Rebuild a saved ``neural`` fit (torch is imported here, as in :func:`fit`)."""
    from hierfit.engines.neural._result import NeuralFit

    return NeuralFit.load_state(state, context)
