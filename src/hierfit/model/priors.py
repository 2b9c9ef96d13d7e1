"""Engine-neutral priors. Each Bayesian engine translates these names to its own library.

Targets (keys of ``ModelSpec.priors``):

* ``"Intercept"`` -- the national level (population intercept);
* ``"b"`` -- every population slope, or ``"b:<column>"`` for one of them;
* ``"sd"`` -- every group-level SD, or ``"sd:<level>"`` for one level;
* ``"cor"`` -- the LKJ prior on group-level correlation matrices;
* ``"sigma"`` -- the residual SD (gaussian family);
* ``"theta"`` -- the negative-binomial size, its prior stated on ``1 / sqrt(theta)``
  (see :mod:`hierfit.engines.bayes.priors`).

Examples
--------
>>> normal(0, 2.5)
Prior(distribution='normal', params=(('mu', 0.0), ('sigma', 2.5)))
>>> lkj(2).param("eta")
2.0
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from hierfit.exceptions import SpecError

PRIOR_TARGET_PREFIXES = ("Intercept", "b", "b:", "sd", "sd:", "cor", "sigma", "theta")


@dataclass(frozen=True)
class Prior:
    """A named distribution with its parameters, e.g. ``Prior("normal", (("mu", 0), ("sigma", 1)))``."""

    distribution: str
    params: tuple[tuple[str, float], ...]

    def param(self, name: str) -> float:
        return dict(self.params)[name]

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v:g}" for k, v in self.params)
        return f"{self.distribution}({args})"


def normal(mu: float = 0.0, sigma: float = 1.0) -> Prior:
    """Normal prior."""
    return Prior("normal", (("mu", float(mu)), ("sigma", float(_positive(sigma, "sigma")))))


def student_t(nu: float, mu: float = 0.0, sigma: float = 1.0) -> Prior:
    """Student-t prior."""
    return Prior("student_t", (("nu", float(_positive(nu, "nu"))), ("mu", float(mu)), ("sigma", float(_positive(sigma, "sigma")))))


def half_normal(sigma: float = 1.0) -> Prior:
    """Half-normal prior for scales."""
    return Prior("half_normal", (("sigma", float(_positive(sigma, "sigma"))),))


def exponential(lam: float = 1.0) -> Prior:
    """Exponential prior for scales (rate ``lam``)."""
    return Prior("exponential", (("lam", float(_positive(lam, "lam"))),))


def lkj(eta: float = 2.0) -> Prior:
    """LKJ prior on correlation matrices; ``eta > 1`` favours weaker correlations."""
    return Prior("lkj", (("eta", float(_positive(eta, "eta"))),))


def validate_priors(priors: Mapping[str, Prior]) -> dict[str, Prior]:
    """Check target names and value types; return a plain dict."""
    out: dict[str, Prior] = {}
    for target, prior in dict(priors).items():
        if not isinstance(prior, Prior):
            raise SpecError(f"Prior for {target!r} must be made with hierfit.priors (normal, half_normal, ...); got {prior!r}.")
        ok = target in {"Intercept", "b", "sd", "cor", "sigma", "theta"} or target.startswith(("b:", "sd:"))
        if not ok:
            raise SpecError(
                f"Unknown prior target {target!r}. Allowed: Intercept, b, b:<column>, cor, sd, sd:<level>, sigma, theta."
            )
        out[target] = prior
    return out


def _positive(value: float, name: str) -> float:
    if not value > 0:
        raise SpecError(f"Prior parameter '{name}' must be positive; got {value!r}.")
    return value
