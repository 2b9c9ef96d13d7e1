"""Outcome families and links as data tables: one row holds everything an engine needs.

A :class:`Family` row carries the outcome check, its link (and inverse link and derivative),
the variance function, the unit deviance, the log-density, a sampler, a starting mean and
whether it has a dispersion parameter -- the way bambi keeps families and R's ``family()``
objects carry ``linkinv``, ``mu.eta``, ``variance`` and ``dev.resids``.  Engines call these
functions and translate the row's ``name`` to their own objects through small dicts
(``{"poisson": pm.Poisson, ...}``); nothing outside this module compares family names.

Conventions shared by every function here:

* ``y`` is the outcome as the user gives it: a real number (gaussian), 0/1 (bernoulli),
  successes out of ``trials`` (binomial) or a count (poisson, negative binomial);
* ``mu`` is the mean *per trial*: a probability for bernoulli/binomial, the expected
  count otherwise, so ``E[y] = trials * mu``; ``trials`` is 1 where the family has none;
* ``dispersion`` is the residual SD ``sigma`` (gaussian) or the negative-binomial size
  ``theta`` (``Var = mu + mu^2 / theta``, glmer.nb's ``theta``, glmmTMB's ``sigma`` for
  ``nbinom2``); ``None`` for families without one.  Arrays broadcast against ``mu``.

Examples
--------
>>> import numpy as np
>>> fam = get_family("binomial")
>>> fam.link.name, float(fam.link.inverse(np.array([0.0]))[0])
('logit', 0.5)
>>> float(fam.logpdf(np.array([3.0]), np.array([0.5]), np.array([4.0]))[0].round(4))  # log(4/16)
-1.3863
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from scipy import special, stats

from hierfit.exceptions import DataError, SpecError

__all__ = ["FAMILIES", "LINKS", "Family", "Link", "get_family", "get_link"]

Array = np.ndarray
#: a dispersion: one number, one per draw or row (broadcast against ``mu``), or none
Dispersion = np.ndarray | float | None
#: Probabilities are kept this far from 0 and 1 (R's binomial links clamp the same way).
_EPS = float(np.finfo(float).eps)
#: Largest linear predictor the log link exponentiates (beyond it the mean overflows).
_MAX_LOG_ETA = 700.0


# ----------------------------------------------------------------------------- links
@dataclass(frozen=True)
class Link:
    """A link ``eta = g(mu)`` with its inverse and ``d mu / d eta`` (R's ``mu.eta``).

    ``mu_eta_deriv`` and ``mu_eta_deriv2`` are the second and third derivatives of the
    inverse link (``d^2 mu / d eta^2``, ``d^3 mu / d eta^3``, unclipped): the observed
    information of a non-canonical link and its derivative (GLMM Laplace gradients) need them.
    """

    name: str
    link: Callable[[Array], Array]
    inverse: Callable[[Array], Array]
    mu_eta: Callable[[Array], Array]
    mu_eta_deriv: Callable[[Array], Array]
    mu_eta_deriv2: Callable[[Array], Array]

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (get_link, (self.name,))


def _clip_p(p: Array) -> Array:
    return np.clip(p, _EPS, 1.0 - _EPS)


def _clip_fresh(p: Array) -> Array:
    """:func:`_clip_p` of a fresh ufunc result, in place when it is an array (no second
    row-sized array: the inverse link runs on every row of a fit)."""
    return np.clip(p, _EPS, 1.0 - _EPS, out=p) if isinstance(p, np.ndarray) else _clip_p(p)


def _logit_mu_eta(eta: Array) -> Array:
    # expit(eta) * expit(-eta) keeps full precision in both tails, unlike mu * (1 - mu)
    return np.maximum(special.expit(eta) * special.expit(-eta), _EPS)


def _probit_mu_eta(eta: Array) -> Array:
    return np.maximum(stats.norm.pdf(eta), _EPS)


def _cloglog_inverse(eta: Array) -> Array:
    return _clip_p(-np.expm1(-np.exp(np.minimum(eta, _MAX_LOG_ETA))))


def _cloglog_mu_eta(eta: Array) -> Array:
    e = np.minimum(eta, _MAX_LOG_ETA)
    return np.maximum(np.exp(e - np.exp(e)), _EPS)


def _exp(eta: Array) -> Array:
    return np.maximum(np.exp(np.minimum(eta, _MAX_LOG_ETA)), _EPS)


def _zeros_like(eta: Array) -> Array:
    return np.zeros_like(np.asarray(eta, dtype=float))


def _logit_m1(eta: Array) -> Array:
    return special.expit(eta) * special.expit(-eta)


def _logit_mu_eta_deriv(eta: Array) -> Array:
    # d/deta p(1-p) = p(1-p)(1-2p), and 1 - 2p = -tanh(eta/2) without cancellation
    return -_logit_m1(eta) * np.tanh(0.5 * np.asarray(eta, dtype=float))


def _logit_mu_eta_deriv2(eta: Array) -> Array:
    m1 = _logit_m1(eta)
    return m1 * (1.0 - 6.0 * m1)


def _probit_mu_eta_deriv(eta: Array) -> Array:
    eta = np.asarray(eta, dtype=float)
    return -eta * stats.norm.pdf(eta)


def _probit_mu_eta_deriv2(eta: Array) -> Array:
    eta = np.asarray(eta, dtype=float)
    return (eta * eta - 1.0) * stats.norm.pdf(eta)


def _cloglog_mu_eta_deriv(eta: Array) -> Array:
    e = np.exp(np.minimum(eta, _MAX_LOG_ETA))
    return np.exp(np.minimum(eta, _MAX_LOG_ETA) - e) * (1.0 - e)


def _cloglog_mu_eta_deriv2(eta: Array) -> Array:
    e = np.exp(np.minimum(eta, _MAX_LOG_ETA))
    return np.exp(np.minimum(eta, _MAX_LOG_ETA) - e) * ((1.0 - e) ** 2 - e)


LINKS: dict[str, Link] = {
    "identity": Link("identity", lambda mu: np.asarray(mu, dtype=float), lambda eta: np.asarray(eta, dtype=float),
                     lambda eta: np.ones_like(np.asarray(eta, dtype=float)), _zeros_like, _zeros_like),
    "logit": Link("logit", lambda mu: special.logit(_clip_p(mu)), lambda eta: _clip_fresh(special.expit(eta)), _logit_mu_eta,
                  _logit_mu_eta_deriv, _logit_mu_eta_deriv2),
    "probit": Link("probit", lambda mu: special.ndtri(_clip_p(mu)), lambda eta: _clip_fresh(special.ndtr(eta)), _probit_mu_eta,
                   _probit_mu_eta_deriv, _probit_mu_eta_deriv2),
    "cloglog": Link("cloglog", lambda mu: np.log(-np.log1p(-_clip_p(mu))), _cloglog_inverse, _cloglog_mu_eta,
                    _cloglog_mu_eta_deriv, _cloglog_mu_eta_deriv2),
    "log": Link("log", lambda mu: np.log(np.maximum(mu, _EPS)), _exp, _exp, _exp, _exp),
}


def get_link(name: str) -> Link:
    """Look up a link by name, with an error listing the allowed names."""
    try:
        return LINKS[name]
    except (KeyError, TypeError):
        raise SpecError(f"The 'link' must be one of: {', '.join(sorted(LINKS))}. Got {name!r}.") from None


# ----------------------------------------------------------------------------- families
def _ones_like(mu: Array) -> Array:
    return np.ones_like(np.asarray(mu, dtype=float))


def _gauss_logpdf(y: Array, mu: Array, trials: Array, disp: Dispersion) -> Array:
    return stats.norm.logpdf(y, mu, 1.0 if disp is None else disp)


def _gauss_sample(rng: np.random.Generator, mu: Array, trials: Array, disp: Dispersion) -> Array:
    sd = 1.0 if disp is None else disp
    return mu + rng.standard_normal(np.shape(mu)) * sd


def _binom_logpdf(y: Array, mu: Array, trials: Array, disp: Dispersion) -> Array:
    p = _clip_p(mu)
    log_choose = special.gammaln(trials + 1) - special.gammaln(y + 1) - special.gammaln(trials - y + 1)
    return log_choose + special.xlogy(y, p) + special.xlog1py(trials - y, -p)


def _binom_deviance(y: Array, mu: Array, trials: Array, disp: Dispersion) -> Array:
    p = _clip_p(mu)
    fit = trials * p
    return 2.0 * (special.xlogy(y, y / np.where(fit > 0, fit, 1.0))
                  + special.xlogy(trials - y, (trials - y) / np.where(trials - fit > 0, trials - fit, 1.0)))


def _binom_sample(rng: np.random.Generator, mu: Array, trials: Array, disp: Dispersion) -> Array:
    if np.all(trials == 1):
        # one uniform per draw: the same stream whether or not the rows carry trials
        return (rng.random(np.shape(mu)) < mu).astype(float)
    n = np.broadcast_to(np.asarray(trials, dtype=np.int64), np.shape(mu))
    return rng.binomial(n, _clip_p(mu)).astype(float)


def _binom_start(y: Array, trials: Array) -> Array:
    return (y + 0.5) / (trials + 1.0)  # R's binomial()$initialize


def _binom_cdf(y: Array, mu: Array, trials: Array, disp: Dispersion) -> Array:
    return stats.binom.cdf(y, trials, np.clip(mu, 0.0, 1.0))


def _pois_cdf(y: Array, mu: Array, trials: Array, disp: Dispersion) -> Array:
    return stats.poisson.cdf(y, mu)


def _nb_cdf(y: Array, mu: Array, trials: Array, disp: Dispersion) -> Array:
    th = _nb_theta(disp)
    return stats.nbinom.cdf(y, th, th / (th + mu))


def _gauss_cdf(y: Array, mu: Array, trials: Array, disp: Dispersion) -> Array:
    return stats.norm.cdf(y, mu, 1.0 if disp is None else disp)


def _pois_logpdf(y: Array, mu: Array, trials: Array, disp: Dispersion) -> Array:
    return special.xlogy(y, mu) - mu - special.gammaln(y + 1)


def _pois_deviance(y: Array, mu: Array, trials: Array, disp: Dispersion) -> Array:
    return 2.0 * (special.xlogy(y, y / mu) - (y - mu))


def _nb_theta(disp: Dispersion) -> Array:
    if disp is None:
        raise SpecError("The negative-binomial family needs its size 'theta' (the dispersion); none was given.")
    return np.asarray(disp, dtype=float)


#: Sizes from which the negative binomial's log-density uses its cancellation-free form.
_NB_LARGE_THETA = 100.0


def _stirling_rest(x: Array) -> Array:
    """``lgamma(x) - ((x - 1/2) log x - x + log(2 pi) / 2)`` for ``x >= 100`` (to rounding)."""
    r = 1.0 / np.square(x)
    return (1.0 / 12.0 - r * (1.0 / 360.0 - r * (1.0 / 1260.0 - r / 1680.0))) / x


def _nb_logpdf(y: Array, mu: Array, trials: Array, disp: Dispersion) -> Array:
    th = _nb_theta(disp)
    if np.all(th < _NB_LARGE_THETA):
        return (special.gammaln(y + th) - special.gammaln(th) - special.gammaln(y + 1)
                + th * (np.log(th) - np.log(th + mu)) + special.xlogy(y, mu) - special.xlogy(y, th + mu))
    # For a large size the textbook form subtracts numbers of size theta log(theta): at
    # theta = 1e6 its noise (~1e-9 a row) hid the last PIRLS steps and stalled the fit.  By
    # Stirling, lgamma(th + y) - lgamma(th) = (th - 1/2) log1p(y / th) + y log(th + y) - y +
    # rest(th + y) - rest(th), and y log(th + y) - y log(th + mu) = y log1p((y - mu) / (th + mu)).
    th = np.maximum(th, _NB_LARGE_THETA)  # (only where every size is large: see the test above)
    return ((th - 0.5) * np.log1p(y / th) - y + _stirling_rest(th + y) - _stirling_rest(th)
            - special.gammaln(y + 1) - th * np.log1p(mu / th) + special.xlogy(y, mu)
            + y * np.log1p((y - mu) / (th + mu)))


def _nb_deviance(y: Array, mu: Array, trials: Array, disp: Dispersion) -> Array:
    th = _nb_theta(disp)
    # log1p: (y + th) log((y + th) / (mu + th)) without cancellation for a large size
    return 2.0 * (special.xlogy(y, y / mu) - (y + th) * np.log1p((y - mu) / (mu + th)))


#: means above this are sampled at it: numpy refuses a Poisson mean near 2**63, and a draw of a
#: linear predictor from a wide sampling distribution (a group of all-zero counts fitted without
#: pooling has a standard error of ~1e3 on the log scale) can reach one
_MAX_COUNT_MEAN = 1e15


def _nb_sample(rng: np.random.Generator, mu: Array, trials: Array, disp: Dispersion) -> Array:
    th = np.broadcast_to(_nb_theta(disp), np.shape(mu))
    return rng.negative_binomial(th, th / (th + np.minimum(mu, _MAX_COUNT_MEAN))).astype(float)


def _bad_real(y: Array, trials: Array) -> Array:
    return ~np.isfinite(y)


def _bad_binary(y: Array, trials: Array) -> Array:
    return ~np.isin(y, (0.0, 1.0))


def _bad_successes(y: Array, trials: Array) -> Array:
    return ~np.isfinite(y) | (y < 0) | (y != np.round(y)) | (y > trials)


def _bad_count(y: Array, trials: Array) -> Array:
    return ~np.isfinite(y) | (y < 0) | (y != np.round(y))


@dataclass(frozen=True)
class Family:
    """An outcome distribution with its link, as data (see the module docstring).

    Attributes
    ----------
    name : str
        The family's name, the key of :data:`FAMILIES`.
    link : Link
        The link in use (the canonical one unless chosen with :meth:`with_link`).
    links : tuple of str
        Links this family allows.
    outcome : str
        The outcome's support in words, for error messages.
    dispersion : str or None
        Name of the dispersion parameter (``"sigma"``, ``"theta"``) or ``None``.
    has_trials : bool
        Whether the outcome counts successes out of a number of trials (binomial).
    discrete : bool
        Whether the outcome takes integer values (predictive checks show counts).
    normal_errors : bool
        Gaussian errors: group effects integrate out in closed form (a linear mixed model).
    overdispersed_alternative : str or None
        The family to suggest when the data are more variable than this family allows (a
        Pearson dispersion test rejects); ``None`` where no such check applies (binary
        outcomes, families with an estimated dispersion).
    """

    name: str
    link: Link
    links: tuple[str, ...]
    outcome: str
    dispersion: str | None
    has_trials: bool
    discrete: bool
    normal_errors: bool
    _bad: Callable[[Array, Array], Array]
    _variance: Callable[[Array, Dispersion], Array]
    _deviance: Callable[[Array, Array, Array, Dispersion], Array]
    _logpdf: Callable[[Array, Array, Array, Dispersion], Array]
    _sample: Callable[[np.random.Generator, Array, Array, Dispersion], Array]
    _start: Callable[[Array, Array], Array]
    _variance_deriv: Callable[[Array, Dispersion], Array]
    _variance_deriv2: Callable[[Array, Dispersion], Array]
    _phi: Callable[[Dispersion], Array | float] = lambda d: 1.0
    _cdf: Callable[[Array, Array, Array, Dispersion], Array] | None = None
    mean_range: tuple[float, float] = (-np.inf, np.inf)
    overdispersed_alternative: str | None = None

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        # a row is identified by its names: pickled (and compared) by reference to the table
        return (get_family, (self.name, self.link.name))

    def __str__(self) -> str:
        return self.name if self.canonical else f"{self.name}({self.link.name})"

    @property
    def has_dispersion(self) -> bool:
        """Whether the family has a dispersion parameter (sigma, theta)."""
        return self.dispersion is not None

    @property
    def canonical(self) -> bool:
        """Whether the link in use is this family's default (canonical) one."""
        return self.link.name == self.links[0]

    def inverse_link(self, eta: Array) -> Array:
        """The mean per trial from the linear predictor."""
        return self.link.inverse(eta)

    def with_link(self, name: str | None) -> Family:
        """This family with another of its allowed links (``None``: the default)."""
        if name is None or name == self.link.name:
            return self
        if name not in self.links:
            raise SpecError(
                f"Family {self.name!r} allows the links: {', '.join(sorted(self.links))}. Got link={name!r}."
            )
        return replace(self, link=get_link(name))

    # -- numbers ----------------------------------------------------------------------
    def variance(self, mu: Array, dispersion: Dispersion = None) -> Array:
        """Variance function ``V(mu)`` per trial (R's ``family$variance``; gaussian: 1)."""
        return self._variance(np.asarray(mu, dtype=float), dispersion)

    def variance_deriv(self, mu: Array, dispersion: Dispersion = None) -> Array:
        """``dV/dmu`` of the variance function (observed information of non-canonical links)."""
        return self._variance_deriv(np.asarray(mu, dtype=float), dispersion)

    def variance_deriv2(self, mu: Array, dispersion: Dispersion = None) -> Array:
        """``d^2V/dmu^2`` of the variance function (derivative of the observed information)."""
        return self._variance_deriv2(np.asarray(mu, dtype=float), dispersion)

    def unit_deviance(self, y: Array, mu: Array, trials: Array | None = None, dispersion: Dispersion = None) -> Array:
        """Per-row deviance ``2 (loglik_saturated - loglik)`` (gaussian: ``(y - mu)^2``)."""
        y = np.asarray(y, dtype=float)
        return self._deviance(y, np.asarray(mu, dtype=float), _trials(trials, y), dispersion)

    def logpdf(self, y: Array, mu: Array, trials: Array | None = None, dispersion: Dispersion = None) -> Array:
        """Per-row log-density (the binomial coefficient included, as R's ``dbinom``)."""
        y = np.asarray(y, dtype=float)
        return self._logpdf(y, np.asarray(mu, dtype=float), _trials(trials, y), dispersion)

    def cdf(self, y: Array, mu: Array, trials: Array | None = None, dispersion: Dispersion = None) -> Array:
        """Per-row ``P(Y <= y)`` at mean ``mu`` (shapes broadcast; 0 below the support)."""
        assert self._cdf is not None, "every family row has its CDF"
        y = np.asarray(y, dtype=float)
        mu = np.asarray(mu, dtype=float)
        return self._cdf(y, mu, np.broadcast_to(_trials(trials, mu), np.broadcast_shapes(np.shape(mu), np.shape(y))), dispersion)

    def clip_mean(self, mu: Array, margin: float = 1e-3) -> Array:
        """``mu`` kept ``margin`` inside the range of the mean (probabilities off 0 and 1)."""
        lo, hi = self.mean_range
        return np.clip(mu, lo + margin if np.isfinite(lo) else -np.inf, hi - margin if np.isfinite(hi) else np.inf)

    def scale_factor(self, dispersion: Dispersion) -> Array | float:
        """``phi`` with ``Var(y) = phi * trials * V(mu)``: ``sigma^2`` for gaussian, else 1."""
        return self._phi(dispersion)

    def fisher_weights(self, eta: Array, trials: Array | None = None, dispersion: Dispersion = None) -> Array:
        """Per-row Fisher information on the link scale: ``trials mu_eta^2 / (phi V(mu))``."""
        eta = np.asarray(eta, dtype=float)
        mu = self.link.inverse(eta)
        d = self.link.mu_eta(eta)
        return _trials(trials, eta) * d * d / (self.variance(mu, dispersion) * self._phi(dispersion))

    def score(self, y: Array, eta: Array, trials: Array | None = None, dispersion: Dispersion = None) -> Array:
        """Per-row derivative of the log-likelihood with respect to the linear predictor."""
        eta = np.asarray(eta, dtype=float)
        mu = self.link.inverse(eta)
        n = _trials(trials, eta)
        return (np.asarray(y, dtype=float) - n * mu) * self.link.mu_eta(eta) / (self.variance(mu, dispersion) * self._phi(dispersion))

    def sample(self, rng: np.random.Generator, mu: Array, trials: Array | None = None,
               dispersion: Dispersion = None) -> Array:
        """Draw outcomes with mean ``trials * mu`` (shapes broadcast)."""
        mu = np.asarray(mu, dtype=float)
        return self._sample(rng, mu, _trials(trials, mu), dispersion)

    def start(self, y: Array, trials: Array | None = None) -> Array:
        """A starting mean per trial for iterative fits (R's ``mustart``)."""
        y = np.asarray(y, dtype=float)
        return self._start(y, _trials(trials, y))

    def check_outcome(self, y: Array, column: str, trials: Array | None = None) -> None:
        """Raise :class:`DataError` when ``y`` is outside this family's support."""
        y = np.asarray(y, dtype=float)
        bad = self._bad(y, _trials(trials, y))
        if bad.any():
            examples = ", ".join(repr(float(v)) for v in np.unique(y[bad])[:5])
            raise DataError(
                f"Family '{self.name}' needs {self.outcome}; column '{column}' has {int(bad.sum())} "
                f"other values (e.g. {examples}). Recode the outcome or choose another family."
            )


def _trials(trials: Array | None, like: Array) -> Array:
    return np.ones_like(like, dtype=float) if trials is None else np.asarray(trials, dtype=float)


_BINARY_LINKS = ("logit", "probit", "cloglog")

FAMILIES: dict[str, Family] = {
    "gaussian": Family(
        "gaussian", LINKS["identity"], ("identity",), "finite real numbers", "sigma", False, False, True,
        _bad_real, lambda mu, d: _ones_like(mu), lambda y, mu, n, d: (y - mu) ** 2,
        _gauss_logpdf, _gauss_sample, lambda y, n: y.copy(),
        lambda mu, d: 0.0 * mu, lambda mu, d: 0.0 * mu,
        lambda d: 1.0 if d is None else np.asarray(d, dtype=float) ** 2, _gauss_cdf,
    ),
    "bernoulli": Family(
        "bernoulli", LINKS["logit"], _BINARY_LINKS, "0/1 outcomes", None, False, True, False,
        _bad_binary, lambda mu, d: mu * (1.0 - mu), _binom_deviance, _binom_logpdf, _binom_sample, _binom_start,
        lambda mu, d: 1.0 - 2.0 * mu, lambda mu, d: np.full_like(mu, -2.0), _cdf=_binom_cdf,
        mean_range=(0.0, 1.0),
    ),
    "binomial": Family(
        "binomial", LINKS["logit"], _BINARY_LINKS, "whole numbers of successes between 0 and the trials",
        None, True, True, False,
        _bad_successes, lambda mu, d: mu * (1.0 - mu), _binom_deviance, _binom_logpdf, _binom_sample, _binom_start,
        lambda mu, d: 1.0 - 2.0 * mu, lambda mu, d: np.full_like(mu, -2.0), _cdf=_binom_cdf,
        mean_range=(0.0, 1.0),
    ),
    "poisson": Family(
        "poisson", LINKS["log"], ("log",), "non-negative integer counts", None, False, True, False,
        _bad_count, lambda mu, d: mu, _pois_deviance, _pois_logpdf,
        lambda rng, mu, n, d: rng.poisson(np.minimum(mu, _MAX_COUNT_MEAN)).astype(float), lambda y, n: y + 0.1,
        lambda mu, d: np.ones_like(mu), lambda mu, d: np.zeros_like(mu), _cdf=_pois_cdf,
        mean_range=(0.0, np.inf), overdispersed_alternative="negative_binomial",
    ),
    "negative_binomial": Family(
        "negative_binomial", LINKS["log"], ("log",), "non-negative integer counts", "theta", False, True, False,
        _bad_count, lambda mu, d: mu + mu ** 2 / _nb_theta(d), _nb_deviance, _nb_logpdf, _nb_sample,
        lambda y, n: y + (y == 0) / 6.0,  # R's negative.binomial()$initialize
        lambda mu, d: 1.0 + 2.0 * mu / _nb_theta(d), lambda mu, d: np.broadcast_to(2.0 / _nb_theta(d), np.shape(mu)).astype(float),
        _cdf=_nb_cdf, mean_range=(0.0, np.inf),
    ),
}


def get_family(name: str, link: str | None = None) -> Family:
    """Look up a family by name (and optionally a non-default link), listing the allowed names.

    Examples
    --------
    >>> get_family("bernoulli", "probit").link.name
    'probit'
    """
    try:
        fam = FAMILIES[name]
    except (KeyError, TypeError):
        raise SpecError(
            f"The 'family' argument must be one of: {', '.join(sorted(FAMILIES))}. Got {name!r}."
        ) from None
    return fam.with_link(link)
