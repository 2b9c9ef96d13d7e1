"""Maximum-likelihood generalized linear mixed models (glmer's Laplace and AGQ, glmmTMB's NB2).

:func:`fit_glmm` fits ``g(E[y | b] / trials) = X beta + offset + Z b``, ``b ~ N(0, Sigma(theta))``
for a family row of :mod:`hierfit.model.family`, maximising

* the Laplace approximation of the marginal likelihood (glmer ``nAGQ = 1``) for any
  random-effects structure the blocks allow (nested at any depth, correlated slopes,
  crossed factors through the dense root block), or
* adaptive Gauss-Hermite quadrature (``n_agq > 1``) for a single scalar term, reported on
  the absolute log-likelihood scale (lme4 omits the saturated part there, issue #161).

As glmer's second stage, the objective is ``-2 logLik`` as a function of ``(theta, beta)``
with the conditional modes profiled out by PIRLS (:mod:`._glmm_pirls`).  From a penalised
quasi-likelihood start (:mod:`._glmm_start`) it is minimised by Newton steps on a
difference Hessian of the exact Laplace gradient (implicit differentiation through the
modes, :mod:`._glmm_laplace`) -- the Hessian ``vcov`` needs anyway -- with L-BFGS-B as
the fallback far from the optimum (:mod:`._glmm_optim`).  A negative-binomial size is estimated jointly on the log scale,
with the observed-information Laplace of glmmTMB's ``nbinom2`` by default or glmer.nb's
expected-information variant (``information="expected"``).

Each PIRLS step is one pass over the rows (compiled with numba when available) plus
O(number of groups) block elimination along the nested chain (:mod:`._factor`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from hierfit.model.family import Family

from ._blocks import RandomBlock
from ._factor import Factorization, System
from ._glmm_diagnostics import GlmmDiagnostics
from ._glmm_setup import prepare
from ._standardize import Standardization
from .lmm import draw_effects

__all__ = ["GlmmSolution", "OptSummary", "RandomBlock", "fit_glmm"]


@dataclass(frozen=True)
class OptSummary:
    """Record of the outer optimisation (after MixedModels.jl's ``optsum``).

    Attributes
    ----------
    initial_theta, initial_beta : numpy.ndarray
        Start (caller's coordinates): theta from two rounds of penalised quasi-likelihood
        (the weighted working LMM at the joint PIRLS modes, :mod:`._glmm_start`) and the
        joint PIRLS fixed effects there (glmer's nAGQ = 0 inner loop).
    initial_nb_theta : float or None
    initial_objective : float
        ``-2 logLik`` at the start.
    final_theta, final_beta : numpy.ndarray
    final_nb_theta : float or None
    final_objective : float
    n_evaluations : int
        Objective evaluations (each one PIRLS solve), gradients included.
    n_gradients : int
        Gradient evaluations.
    n_iterations : int
        L-BFGS-B iterations.
    newton_steps : int
        Newton steps taken after L-BFGS-B.
    optimizer : str
    return_status : str
        The optimiser's message.
    status : int
        L-BFGS-B's status code (0: converged).
    converged : bool
    seconds : float
    n_agq : int
    information : str
    """

    initial_theta: np.ndarray
    initial_beta: np.ndarray
    initial_nb_theta: float | None
    initial_objective: float
    final_theta: np.ndarray
    final_beta: np.ndarray
    final_nb_theta: float | None
    final_objective: float
    n_evaluations: int
    n_gradients: int
    n_iterations: int
    newton_steps: int
    optimizer: str
    return_status: str
    status: int
    converged: bool
    seconds: float
    n_agq: int
    information: str


@dataclass(frozen=True)
class GlmmSolution:
    """A fitted GLMM (lme4 conventions; terms in caller order).

    Attributes
    ----------
    beta, vcov_beta, se_beta : numpy.ndarray
        Fixed effects; their covariance, twice the inverse Hessian of ``-2 logLik`` in
        ``(theta, beta[, log nb_theta])`` restricted to beta (glmer's ``vcov`` with its
        default ``use.hessian``, glmmTMB's ``vcov``), falling back to the PIRLS system's
        ``(R_X' R_X)^{-1}`` when that Hessian is not positive definite; root diagonal.
    theta, theta_lower : numpy.ndarray
        Relative Cholesky parameters (per term, lower triangle column-wise) and bounds.
    theta_entries : tuple of (int, int, int)
        (term, row, column) of each theta element.
    covariances, sds, correlations : list of numpy.ndarray
        Per term: ``k x k`` covariance of the effects (absolute scale: ``T T'``), SDs and
        correlation matrix.
    ranef, ranef_condsd : list of numpy.ndarray
        Per term: ``(n_groups, k)`` conditional modes and conditional SDs.
    ranef_condcov : list of numpy.ndarray
        Per term: ``(n_groups, k, k)`` blocks of ``Lambda H^{-1} Lambda'`` at the modes
        (``ranef(condVar = TRUE)``: given beta and theta; ``H`` with the fit's information).
    nb_theta : float or None
        Negative-binomial size (``Var = mu + mu^2 / nb_theta``) where the family has one.
    loglik, objective : float
        Log-likelihood (Laplace or AGQ, absolute scale) and ``-2 loglik``.
    deviance : float
        lme4's GLMM ``deviance()``: sum of weighted unit deviances at the modes.
    aic, bic : float
    n_obs, n_params : int
        Rows that carry likelihood; parameters (``p + len(theta)`` plus 1 for an estimated
        NB size).
    n_agq : int
    information : str
        ``"expected"`` or ``"observed"``: the weights of ``H`` in the Laplace log-determinant.
    converged : bool
    message : str
    n_evaluations : int
    singular : bool
    singular_terms : list of (int, int)
        (term, column) pairs whose standardised diagonal theta is below ``1e-4``.
    linear_predictor : numpy.ndarray
        ``X beta + offset + Z b`` per row at the modes.
    diagnostics : GlmmDiagnostics
    opt_summary : OptSummary
    timings : dict of str -> float
        Wall seconds: ``setup``, ``start``, ``optimize``, ``finalize``.
    """

    beta: np.ndarray
    vcov_beta: np.ndarray
    se_beta: np.ndarray
    theta: np.ndarray
    theta_lower: np.ndarray
    theta_entries: tuple[tuple[int, int, int], ...]
    covariances: list[np.ndarray]
    sds: list[np.ndarray]
    correlations: list[np.ndarray]
    ranef: list[np.ndarray]
    ranef_condsd: list[np.ndarray]
    ranef_condcov: list[np.ndarray]
    nb_theta: float | None
    loglik: float
    objective: float
    deviance: float
    aic: float
    bic: float
    n_obs: int
    n_params: int
    n_agq: int
    information: str
    converged: bool
    message: str
    n_evaluations: int
    singular: bool
    singular_terms: list[tuple[int, int]]
    linear_predictor: np.ndarray
    diagnostics: GlmmDiagnostics
    opt_summary: OptSummary
    timings: dict[str, float]
    family: Family = field(repr=False)
    _system: System = field(repr=False, compare=False)
    _fz: Factorization = field(repr=False, compare=False)
    _u: list[np.ndarray] = field(repr=False, compare=False)
    _terms: list[tuple[int, int, int, int, int]] = field(repr=False, compare=False)
    _factor_T: list[np.ndarray] = field(repr=False, compare=False)
    _std: Standardization = field(repr=False, compare=False)
    _beta_t: np.ndarray = field(repr=False, compare=False)

    def fitted(self) -> np.ndarray:
        """Mean per trial at the conditional modes (probability, or expected count)."""
        return np.asarray(self.family.link.inverse(self.linear_predictor), dtype=float)

    def sample_effects(self, n_draws: int, rng: np.random.Generator
                       ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Draw ``(beta, b)`` jointly from the Gaussian approximation at the optimum.

        The precision is the curvature of the penalised deviance in ``(beta, u)`` at the
        modes, i.e. the PIRLS system ``[[X'WX, X'WZ Lambda], [Lambda'Z'WX, Lambda'Z'WZ Lambda
        + I]]`` with the fit's weights (the flat-prior posterior given theta, as
        ``arm::sim`` does for glmer fits), so sums such as ``beta_0 + b_market +
        b_submarket`` carry all correlations.

        Parameters
        ----------
        n_draws : int
            Number of draws ``d``.
        rng : numpy.random.Generator
            Source of randomness.

        Returns
        -------
        beta_draws : numpy.ndarray
            ``(d, p)``.
        b_draws : list of numpy.ndarray
            Per term ``(d, n_groups, k)``.
        """
        return draw_effects(self._system, self._fz, self._std, self._beta_t, self._u, 1.0,
                            self._terms, self._factor_T, n_draws, rng)


def fit_glmm(X: np.ndarray, y: np.ndarray, blocks: Sequence[RandomBlock], family: Family, *,
             trials: np.ndarray | None = None, weights: np.ndarray | None = None,
             offset: np.ndarray | None = None, n_agq: int = 1, information: str | None = None,
             nb_theta: float | None = None, maxiter: int = 1000, compute_vcov: bool = True,
             use_numba: bool = True) -> GlmmSolution:
    """Fit a generalized linear mixed model by maximum likelihood (glmer / glmmTMB).

    Parameters
    ----------
    X : numpy.ndarray
        ``(n, p)`` fixed-effects model matrix (full column rank).
    y : numpy.ndarray
        ``(n,)`` outcome: 0/1 (bernoulli), successes (binomial, with ``trials``), counts.
    blocks : sequence of RandomBlock
        Random-effects terms (their order defines theta's; lme4 orders terms by decreasing
        number of groups).
    family : Family
        A row of :mod:`hierfit.model.family` (not gaussian: use :func:`.lmm.fit_lmm`).
    trials : numpy.ndarray, optional
        Binomial trials per row (glmer's ``cbind(y, trials - y)``); 1 by default.
    weights : numpy.ndarray, optional
        Prior weights: each row's log-likelihood is multiplied by its weight.
    offset : numpy.ndarray, optional
        Added to the linear predictor.  Rows with a non-finite offset (or zero trials) are
        left out of the likelihood and reported in ``diagnostics``.
    n_agq : int, default 1
        1: Laplace.  More: adaptive Gauss-Hermite quadrature with that many nodes, only for
        exactly one scalar random-effects term (as glmer).
    information : {"expected", "observed"}, optional
        Weights of ``H`` in the Laplace log-determinant: Fisher (glmer, glmer.nb) or the
        observed Hessian (TMB/glmmTMB).  They coincide for canonical links.  Default:
        ``"observed"`` when a negative-binomial size is estimated (glmmTMB's nbinom2, whose
        references this matches for every NB data set), else ``"expected"`` (glmer).
    nb_theta : float, optional
        Fix the negative-binomial size instead of estimating it.
    maxiter : int, default 1000
        Iteration cap of L-BFGS-B.
    compute_vcov : bool, default True
        Compute the Hessian at the optimum (for ``vcov_beta`` and the final Newton steps);
        False uses the PIRLS system's ``(R_X' R_X)^{-1}`` instead.
    use_numba : bool, default True
        Compiled row passes when numba is importable (numpy otherwise; same numbers).

    Returns
    -------
    GlmmSolution

    Raises
    ------
    ValueError
        For invalid inputs (shapes, outcomes outside the family's support, a rank-deficient
        ``X``, ``n_agq > 1`` with other than one scalar term, a gaussian family).

    Examples
    --------
    >>> import numpy as np
    >>> from hierfit.model.family import get_family
    >>> rng = np.random.default_rng(0)
    >>> g = np.repeat(np.arange(30), 20)
    >>> x = rng.normal(size=g.size)
    >>> eta = -0.5 + 0.8 * x + rng.normal(0, 0.7, 30)[g]
    >>> y = (rng.uniform(size=g.size) < 1 / (1 + np.exp(-eta))).astype(float)
    >>> X = np.column_stack([np.ones(g.size), x])
    >>> sol = fit_glmm(X, y, [RandomBlock(g, 30, np.ones(g.size))], get_family("bernoulli"))
    >>> sol.converged, sol.beta.round(2).tolist(), sol.sds[0].round(2).tolist()
    (True, [-0.59, 0.7], [0.78])
    """
    t0 = time.perf_counter()
    fit = prepare(X, y, list(blocks), family, trials=trials, weights=weights, offset=offset,
                  n_agq=n_agq, information=information, nb_theta=nb_theta,
                  use_numba=use_numba)
    timings = {"setup": time.perf_counter() - t0}
    from ._glmm_results import run_fit

    return run_fit(fit, maxiter=maxiter, compute_vcov=compute_vcov, timings=timings)
