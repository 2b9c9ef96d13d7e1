"""Default priors scaled to the data, and the user's engine-neutral priors resolved per parameter.

Both Bayesian engines (``pymc`` and ``stan``) read the same :class:`ResolvedPriors`, so the
same spec gives the same model in both. Defaults (weakly informative, on the data's scale, in
the spirit of rstanarm/bambi's autoscaling):

==============  ===========================================================================
target          default
==============  ===========================================================================
Intercept       gaussian: ``normal(mean(y), 2.5 sd(y))``; bernoulli/binomial/poisson/negative
                binomial: ``normal(c, 2.5)``, ``c = 0`` for the logit link, ``log(mean rate)``
                for the log link (the rate is ``y / exp(offset)`` where there is an offset)
b:<col>         ``normal(0, 2.5 s_y / sd(col))`` with ``s_y = sd(y)`` (gaussian) or 1
sd:<level>      ``half_normal(s_y / sd(z))`` per coefficient (``sd(z) = 1`` for intercepts)
cor             ``lkj(2)``
sigma           ``half_normal(sd(y))`` (gaussian)
theta           negative binomial: ``half_normal(1)`` on ``1 / sqrt(theta)`` (see below)
==============  ===========================================================================

The negative binomial's size ``theta`` (``Var = mu + mu^2 / theta``) gets its prior on
``phi = 1 / sqrt(theta)``, the coefficient of variation of the gamma-distributed row effect
that turns a Poisson into an NB2 count (``Var = mu + (phi mu)^2``): a scale like the group SDs,
so the same scale priors apply, and ``phi = 0`` is the Poisson model, which the default
``half_normal(1)`` favours without ruling out strong overdispersion (95% prior mass on
``theta > 0.26``; the Stan prior-choice recommendations' choice). A prior directly on
``theta`` (brms's ``gamma(0.01, 0.01)``) is nearly flat where the data cannot tell large
sizes apart and lets chains drift to ``theta = 1e6``. Set it with ``priors={"theta": ...}``
(any scale prior; it is read as the prior of ``1 / sqrt(theta)``, and ``summary()`` says so).

User priors (``hierfit.priors``) replace defaults: ``"b"`` sets every population slope and
``"b:<col>"`` one of them (more specific wins); ``"sd"`` every group-level SD and
``"sd:<level>"`` those of one level.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from hierfit.design import Design
from hierfit.exceptions import SpecError
from hierfit.formula import INTERCEPT
from hierfit.model.priors import Prior, half_normal, lkj, normal

#: distributions allowed per kind of parameter (location parameters vs positive scales)
LOCATION_PRIORS = ("normal", "student_t")
SCALE_PRIORS = ("exponential", "half_normal", "student_t")


@dataclass(frozen=True)
class ResolvedPriors:
    """Every parameter's prior, after defaults and user overrides.

    Attributes
    ----------
    beta
        One prior per population column (``design.x_names`` order).
    sd
        Per group-level term (``design.terms`` order), one prior per coefficient.
    cor
        Per term, the LKJ prior of its correlation matrix (``None`` when uncorrelated or k = 1).
    sigma
        Residual SD prior (gaussian) or ``None``.
    theta
        Negative binomial: the prior of ``1 / sqrt(theta)``; ``None`` for other families.
    source
        Per target label (``"b:x1"``, ``"sd:market[Intercept]"``), ``"default"`` or ``"user"``.
    """

    beta: tuple[Prior, ...]
    sd: tuple[tuple[Prior, ...], ...]
    cor: tuple[Prior | None, ...]
    sigma: Prior | None
    source: dict[str, str]
    theta: Prior | None = None

    def lines(self, x_names: tuple[str, ...], terms: list[tuple[str, tuple[str, ...]]]) -> list[str]:
        """Human-readable table of the priors used (for ``summary()``)."""
        out = ["priors (default = scaled to the data; user = set with priors=...):"]
        for name, prior in zip(x_names, self.beta):
            label = INTERCEPT if name == INTERCEPT else f"b:{name}"
            out.append(f"  {label:<28} ~ {prior}  [{self.source[label]}]")
        for (level, coefs), sds, cor in zip(terms, self.sd, self.cor):
            for c, prior in zip(coefs, sds):
                label = f"sd:{level}[{c}]"
                out.append(f"  {label:<28} ~ {prior}  [{self.source[label]}]")
            if cor is not None:
                label = f"cor:{level}"
                out.append(f"  {label:<28} ~ {cor}  [{self.source[label]}]")
        if self.sigma is not None:
            out.append(f"  {'sigma':<28} ~ {self.sigma}  [{self.source['sigma']}]")
        if self.theta is not None:
            out.append(f"  {'theta (as 1/sqrt(theta))':<28} ~ {self.theta}  [{self.source['theta']}]")
        return out


def _round(v: float) -> float:
    """Three significant digits: stated priors stay readable, and stan/pymc use the same value."""
    return float(f"{v:.3g}")


#: Centre of the intercept's default prior, by link: the mean outcome on the link scale where
#: that is a sensible location (identity, log), 0 (even odds) for the binary links.
_INTERCEPT_CENTRE: dict[str, Callable[[np.ndarray], float]] = {
    "identity": lambda y: float(np.mean(y)),
    "log": lambda y: float(np.log(max(np.mean(y), 1e-3))),
    "logit": lambda y: 0.0,
    "probit": lambda y: 0.0,
    "cloglog": lambda y: 0.0,
}


def resolve_priors(design: Design) -> ResolvedPriors:
    """Defaults scaled to ``design``'s data, overridden by ``design.spec.priors``.

    Examples
    --------
    >>> import hierfit
    >>> from hierfit.design import build_design
    >>> sim = hierfit.simulate(n_markets=3, n_submarkets=2, rows_per_submarket=10, seed=0)
    >>> d = build_design(hierfit.make_spec("y ~ x1 + (1 | market)", priors={"sigma": hierfit.priors.half_normal(2)}), sim.data)
    >>> str(resolve_priors(d).sigma)
    'half_normal(sigma=2)'
    """
    spec = design.spec
    user = dict(spec.priors)
    family = spec.family
    gaussian = family.normal_errors
    s_y = float(np.std(_outcome_scale(design))) if gaussian else 1.0
    if not s_y > 0:
        s_y = 1.0
    source: dict[str, str] = {}

    def pick(label: str, keys: list[str], default: Prior, allowed: tuple[str, ...]) -> Prior:
        for key in keys:
            if key in user:
                prior = user[key]
                if prior.distribution not in allowed:
                    raise SpecError(
                        f"Prior {key!r} = {prior} is not supported by the Bayesian engines for this parameter; "
                        f"use one of: {', '.join(sorted(allowed))}."
                    )
                source[label] = "user"
                return prior
        source[label] = "default"
        return default

    beta = []
    for j, name in enumerate(design.x_names):
        col = design.X[:, j]
        if name == INTERCEPT:
            centre = _INTERCEPT_CENTRE[family.link.name](_outcome_scale(design))
            beta.append(pick(INTERCEPT, [INTERCEPT], normal(_round(centre), _round(2.5 * s_y)), LOCATION_PRIORS))
        else:
            sx = float(np.std(col))
            scale = 2.5 * s_y / sx if sx > 0 else 2.5 * s_y
            beta.append(pick(f"b:{name}", [f"b:{name}", "b"], normal(0.0, _round(scale)), LOCATION_PRIORS))
    sds: list[tuple[Prior, ...]] = []
    cors: list[Prior | None] = []
    for td in design.terms:
        term_sds = []
        for j, c in enumerate(td.coefficients):
            sz = float(np.std(td.Z[:, j])) if c != INTERCEPT else 1.0
            scale = s_y / sz if sz > 0 else s_y
            term_sds.append(
                pick(f"sd:{td.level}[{c}]", [f"sd:{td.level}", "sd"], half_normal(_round(scale)), SCALE_PRIORS)
            )
        sds.append(tuple(term_sds))
        if td.term.correlated and len(td.coefficients) > 1:
            cors.append(pick(f"cor:{td.level}", ["cor"], lkj(2.0), ("lkj",)))
        else:
            cors.append(None)
    sigma = pick("sigma", ["sigma"], half_normal(_round(s_y)), SCALE_PRIORS) if gaussian else None
    theta = pick("theta", ["theta"], half_normal(1.0), SCALE_PRIORS) if family.dispersion == "theta" else None
    unused = sorted(k for k in user if not _target_used(k, design))
    if unused:
        raise SpecError(
            f"Prior target {unused[0]!r} matches no parameter of this model. Population columns: "
            f"{', '.join(design.x_names)}; levels: {', '.join(t.level for t in design.terms) or 'none'}"
            f"{'' if gaussian else '; no sigma for family ' + repr(family.name)}"
            f"{'' if family.dispersion == 'theta' else '; theta is the negative-binomial size'}."
        )
    return ResolvedPriors(tuple(beta), tuple(sds), tuple(cors), sigma, source, theta)


def _weighted_rows(y: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """The outcomes that carry likelihood (rows of weight 0 say nothing about its scale)."""
    return y if weights is None else y[weights > 0]


def _outcome_scale(design: Design) -> np.ndarray:
    """The outcome net of the offset, per trial, on the rows that carry likelihood: what the
    default priors are scaled from (``y - offset`` for the identity link, a rate
    ``y / exp(offset)`` otherwise, so the log link's intercept centre is a log-rate)."""
    y = np.asarray(design.y, dtype=float)
    if design.trials is not None:
        y = y / np.maximum(design.trials, 1.0)
    if design.offset is not None:
        y = y - design.offset if design.spec.family.link.name == "identity" else y / np.exp(design.offset)
    return _weighted_rows(y, design.weights)


def _target_used(key: str, design: Design) -> bool:
    if key == INTERCEPT:
        return INTERCEPT in design.x_names
    if key == "b":
        return any(n != INTERCEPT for n in design.x_names)
    if key.startswith("b:"):
        return key[2:] in design.x_names and key[2:] != INTERCEPT
    if key == "sd":
        return bool(design.terms)
    if key.startswith("sd:"):
        return any(t.level == key[3:] for t in design.terms)
    if key == "cor":
        return any(t.term.correlated and len(t.coefficients) > 1 for t in design.terms)
    if key == "sigma":
        return design.spec.family.normal_errors
    if key == "theta":
        return design.spec.family.dispersion == "theta"
    return False
