"""The tree step's objective and the held-out loss of ``boosted-mixed``, for every family.

The trees of ``boosted-mixed`` are fitted GPBoost-style: the effects step's linear predictor
(the mixed model's ``X beta + Z b`` plus any offset) is a known part of each row's raw score,
and the trees take Newton steps on the family's log-likelihood on top of it. LightGBM's
built-in objectives cannot do that here -- the known part moves after every effects step,
and a ``Dataset``'s ``init_score`` is fixed when the booster is built -- so the gradients come
from a custom objective written with the family row's own ``score`` and ``fisher_weights``:

* gaussian: squared error (the alternation runs on the standardised outcome, where the
  residual variance is a constant that would only rescale the learning rate);
* bernoulli / binomial (logit): the binomial log-likelihood with the trials, i.e. LightGBM's
  ``binary`` / ``cross_entropy`` on the share weighted by the trials;
* poisson (log): LightGBM's ``poisson`` objective;
* negative binomial (log): the NB2 log-likelihood at the effects step's current size
  ``theta``. ``lightgbm`` alone fits an NB mean by Poisson deviance because it has no size
  to use; here the mixed model estimates one every round, and its score
  ``(y - mu) theta / (theta + mu)`` is the likelihood the mixed model maximises, so both
  steps climb the same objective.

The Hessian is the Fisher information (the observed one for the canonical logit and log links
of bernoulli, binomial and poisson; always positive, where the NB's observed one need not be).

The held-out loss is the family's negative log-likelihood per row (log loss for a binary
outcome, with the NB size of the round): unlike a deviance it compares fits whose dispersions
differ. Prior weights multiply each row's loss and gradient, relative to their mean so that
LightGBM's regularisation (``min_sum_hessian_in_leaf``, ``lambda_l2``) keeps its meaning.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hierfit.design import Design
from hierfit.model import Family

#: Hessians are kept above this (a probability clipped at 1e-16 has Fisher weight ~0)
MIN_HESSIAN = 1e-12


@dataclass(frozen=True, eq=False)
class FamilyLoss:
    """Per-row loss, gradient and Hessian of one outcome family on the link scale.

    Attributes
    ----------
    family
        The family row (its canonical link: the engine refuses others).
    y, trials
        The outcome (standardised for a gaussian one) and binomial trials (``None``: one).
    weight
        Prior weights relative to their mean over the rows that count (all ones without).
    counted
        Rows that carry likelihood (positive weight, and trials for a binomial).
    """

    family: Family
    y: np.ndarray
    trials: np.ndarray | None
    weight: np.ndarray
    counted: np.ndarray

    @classmethod
    def from_design(cls, design: Design) -> FamilyLoss:
        """The loss of ``design``'s outcome, prior weights and trials."""
        n = design.n
        prior = np.ones(n) if design.weights is None else np.asarray(design.weights, dtype=float)
        counted = prior > 0
        if design.trials is not None:
            counted &= np.asarray(design.trials) > 0
        mean = float(prior[counted].mean()) if counted.any() else 1.0
        trials = None if design.trials is None else np.asarray(design.trials, dtype=float)
        return cls(design.spec.family, np.asarray(design.y, dtype=float), trials, prior / mean, counted)

    def _trials(self, rows: np.ndarray) -> np.ndarray | None:
        return None if self.trials is None else self.trials[rows]

    def row_loss(self, eta: np.ndarray, rows: np.ndarray, dispersion: float | None) -> np.ndarray:
        """Weighted loss of ``rows`` at linear predictor ``eta`` (one value per row of ``rows``):
        squared error for a gaussian outcome, else the negative log-likelihood."""
        w = self.weight[rows]
        if self.family.normal_errors:
            return w * (self.y[rows] - eta) ** 2
        mu = self.family.inverse_link(eta)
        return -w * self.family.logpdf(self.y[rows], mu, self._trials(rows), dispersion)

    def gradients(self, eta: np.ndarray, rows: np.ndarray, dispersion: float | None) -> tuple[np.ndarray, np.ndarray]:
        """Gradient and Hessian of :meth:`row_loss` in ``eta`` (LightGBM's ``fobj`` contract)."""
        w = self.weight[rows]
        if self.family.normal_errors:
            return w * (eta - self.y[rows]), w.copy()
        trials = self._trials(rows)
        grad = -w * self.family.score(self.y[rows], eta, trials, dispersion)
        hess = w * self.family.fisher_weights(eta, trials, dispersion)
        return grad, np.maximum(hess, MIN_HESSIAN)
