"""The ``ols`` engine's generalised linear model: iteratively reweighted least squares (R's
``glm.fit``) on the effects-coded columns, for every non-gaussian family.

* IRLS from the family's starting mean (R's ``mustart``), with step halving when the deviance
  is not finite or rises, until the relative change of the deviance is below ``1e-10`` and the
  linear predictor moves less than ``1e-10``;
* the negative binomial's size ``theta`` by maximum likelihood alternating with IRLS at fixed
  ``theta`` (``MASS::glm.nb``), from a Poisson start;
* standard errors from the inverse Fisher information ``(C' W C)^{-1}`` at the optimum (the
  dispersion is 1 for these families: Wald, normal quantiles), as R's ``summary.glm``.

Prior weights multiply each row's log-likelihood; an offset adds to the linear predictor.

Examples
--------
>>> import numpy as np
>>> from scipy import sparse
>>> from hierfit.model import get_family
>>> C = sparse.csr_matrix(np.column_stack([np.ones(6), [0, 0, 0, 1, 1, 1.0]]))
>>> y = np.array([1, 0, 1, 1, 1, 0.0])
>>> g = irls(C, y, np.ones(6), np.zeros(6), np.ones(6), get_family("bernoulli"), None)
>>> np.round(g.gamma, 6).tolist()  # logit(2/3) and logit(2/3) - logit(2/3)
[0.693147, 0.0]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import linalg, sparse

from hierfit.engines.dispersion import LOG_THETA_BOUNDS, theta_ml
from hierfit.model import Family

MAX_ITERATIONS = 100
TOLERANCE = 1e-10  # relative change of the deviance (R's glm.control uses 1e-8)
ETA_TOLERANCE = 1e-10  # largest change of the linear predictor
R_TOLERANCE = 1e-8  # R's glm.control epsilon, used once the fit has separated rows
BOUNDARY = 1e-8  # a fitted mean this close to the edge of its range is at the boundary (R: 10 eps)
#: eigenvalue cut of the weighted information, relative to its largest: the unweighted columns'
#: rank is settled before IRLS, so this only guards a division by zero -- a separated group's
#: tiny weights must stay in (its huge standard error is the honest one, as in R)
INFORMATION_RCOND = 1e-15
MAX_HALVINGS = 30
THETA_ROUNDS = 50


@dataclass(frozen=True)
class GlmSolution:
    """IRLS at its optimum: coefficients, the inverse information, the fitted linear predictor."""

    gamma: np.ndarray
    inverse_information: np.ndarray
    eta: np.ndarray
    deviance: float
    iterations: int
    converged: bool
    dispersion: float | None


def _solve(A: np.ndarray, b: np.ndarray, rcond: float) -> tuple[np.ndarray, np.ndarray]:
    """``A^+ b`` and ``A^+`` by the symmetric eigendecomposition (a stable pseudo-inverse) of
    ``A`` scaled to a unit diagonal: a group with tiny weights (fitted means near the boundary)
    leaves its rows and columns small, which the scaling undoes before the eigenvalues are cut."""
    scale = np.sqrt(np.maximum(np.diag(A), 1e-300))
    evals, evecs = linalg.eigh(A / np.outer(scale, scale))
    ok = evals > rcond * max(float(evals.max()) if evals.size else 0.0, 1e-300)
    inv = ((evecs[:, ok] / evals[ok]) @ evecs[:, ok].T) / np.outer(scale, scale)
    return inv @ b, inv


def at_boundary(family: Family, mu: np.ndarray) -> np.ndarray:
    """Rows whose fitted mean is numerically at the edge of the family's range (0 or 1 for a
    probability, 0 for a count): R's 'fitted probabilities numerically 0 or 1'."""
    lo, hi = family.mean_range
    return ((mu - lo) < BOUNDARY) | ((hi - mu) < BOUNDARY)


def _deviance(family: Family, y: np.ndarray, eta: np.ndarray, trials: np.ndarray, prior: np.ndarray,
              dispersion: float | None) -> float:
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        dev = float(np.sum(prior * family.unit_deviance(y, family.inverse_link(eta), trials, dispersion)))
    return dev if np.isfinite(dev) else np.inf


def irls(C: sparse.csr_matrix, y: np.ndarray, trials: np.ndarray, offset: np.ndarray, prior: np.ndarray, family: Family,
         dispersion: float | None, rcond: float = INFORMATION_RCOND, eta: np.ndarray | None = None) -> GlmSolution:
    """Maximum likelihood of ``eta = C gamma + offset`` at a fixed dispersion."""
    if eta is None:
        eta = family.link.link(family.start(y, trials))
    gamma: np.ndarray | None = None
    dev_old = _deviance(family, y, eta, trials, prior, dispersion)
    converged = False
    iteration = 0
    for iteration in range(1, MAX_ITERATIONS + 1):
        mu = family.inverse_link(eta)
        d = family.link.mu_eta(eta)
        w = prior * trials * d * d / family.variance(mu, dispersion)
        z = eta - offset + (y / trials - mu) / d
        A = (C.T @ C.multiply(w[:, None])).toarray()
        new, _ = _solve(A, C.T @ (w * z), rcond)
        eta_new = np.asarray(C @ new).ravel() + offset
        dev = _deviance(family, y, eta_new, trials, prior, dispersion)
        halvings = 0
        # step halving (glm.fit): a step that overshoots into a worse or infinite deviance
        while gamma is not None and (dev > dev_old * (1 + 1e-12) + 1e-300) and halvings < MAX_HALVINGS:
            new = (new + gamma) / 2
            eta_new = np.asarray(C @ new).ravel() + offset
            dev = _deviance(family, y, eta_new, trials, prior, dispersion)
            halvings += 1
        change = abs(dev - dev_old) / (abs(dev) + 0.1)
        # Fisher scoring converges only linearly for a non-canonical link (probit, cloglog): a
        # small change of the deviance alone would stop it early, so the predictor must settle
        # too
        # -- on the rows whose mean is off the boundary. Separated rows drift without end and
        # leave the system so ill-conditioned that the others jitter: there R's own criterion
        # (the deviance alone, 1e-8) ends it, and the separation check says what happened.
        edge = at_boundary(family, family.inverse_link(eta_new))
        moved = float(np.max(np.abs(eta_new - eta)[~edge])) if (~edge).any() else 0.0
        gamma, eta, dev_old = new, eta_new, dev
        if change < TOLERANCE and moved < ETA_TOLERANCE or edge.any() and change < R_TOLERANCE:
            converged = True
            break
    assert gamma is not None
    mu = family.inverse_link(eta)
    d = family.link.mu_eta(eta)
    w = prior * trials * d * d / family.variance(mu, dispersion)
    _, inv = _solve((C.T @ C.multiply(w[:, None])).toarray(), np.zeros(C.shape[1]), rcond)
    return GlmSolution(gamma, inv, eta, dev_old, iteration, converged, dispersion)


def fit_glm(C: sparse.csr_matrix, y: np.ndarray, trials: np.ndarray, offset: np.ndarray, prior: np.ndarray, family: Family,
            rcond: float = INFORMATION_RCOND) -> GlmSolution:
    """IRLS, with the negative binomial's ``theta`` estimated alongside (glm.nb's alternation)."""
    if not family.has_dispersion:
        return irls(C, y, trials, offset, prior, family, None, rcond)
    # a Poisson-like start (a huge theta), then theta and the coefficients in turn
    sol = irls(C, y, trials, offset, prior, family, float(np.exp(LOG_THETA_BOUNDS[1])), rcond)
    theta = theta_ml(family, y, family.inverse_link(sol.eta), prior)
    for _ in range(THETA_ROUNDS):
        sol = irls(C, y, trials, offset, prior, family, theta, rcond, eta=sol.eta)
        new = theta_ml(family, y, family.inverse_link(sol.eta), prior)
        done = abs(np.log(new) - np.log(theta)) < 1e-9
        theta = new
        if done:
            break
    sol = irls(C, y, trials, offset, prior, family, theta, rcond, eta=sol.eta)
    return sol
