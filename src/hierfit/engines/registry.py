"""The engine table: one row per engine, with its capabilities.

Adding an engine adds a module under ``hierfit.engines`` and one row here; nothing in the
core changes. Rows name the module (imported lazily, so heavy optional dependencies are only
imported when that engine is used) and the optional dependencies it needs.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal, Protocol

from hierfit.exceptions import EngineError, SpecError
from hierfit.model import ModelSpec


@dataclass(frozen=True)
class Capabilities:
    """What an engine can do, declared as data (like scikit-learn's Tags).

    Attributes
    ----------
    uncertainty
        ``"none"``, ``"frequentist"`` (standard errors), ``"posterior"`` (draws) or
        ``"ensemble"`` (spread over refits).
    pooling
        ``"none"`` (each group on its own) or ``"partial"`` (groups shrink to their parent).
    varying_slopes, correlated_slopes
        Whether ``(1 + x | g)`` and its correlation are supported.
    families
        Outcome families supported.
    decomposition
        ``"exact"`` when contributions are the model's own additive parts, ``"approximate"``
        when derived (e.g. partial dependence for trees); parts always sum to the prediction.
    nonlinear
        Whether the engine adds a nonlinear part (its own decomposition column).
    smooth
        Whether the prediction is differentiable in the predictors. Trees are piecewise
        constant: their numerical slopes take a secant over a wider step.
    needs_group_terms
        Whether the formula must have at least one group-level term such as ``(1 | market)``.
    offsets, weights
        Whether the engine takes an offset (``offset(...)`` / ``offset=``) and prior weights.
    streaming_families
        Families the engine fits from a streaming source (Parquet files, a Dask DataFrame:
        :mod:`hierfit.design.sources`) without holding its rows.
    links
        ``"any"``: every link a family allows (``link="probit"``, ``"cloglog"``); ``"canonical"``:
        only each family's default link (its likelihood is written for logit / log).
    """

    uncertainty: Literal["none", "frequentist", "posterior", "ensemble"]
    pooling: Literal["none", "partial"]
    varying_slopes: bool
    correlated_slopes: bool
    families: tuple[str, ...]
    decomposition: Literal["exact", "approximate"]
    nonlinear: bool = False
    smooth: bool = True
    needs_group_terms: bool = False
    offsets: bool = False
    weights: bool = False
    links: Literal["any", "canonical"] = "canonical"
    streaming_families: tuple[str, ...] = ()


@dataclass(frozen=True)
class EngineEntry:
    """A registry row."""

    name: str
    module: str
    summary: str
    capabilities: Capabilities
    requires: tuple[str, ...] = ()
    extra: str = ""

    def missing_dependencies(self) -> list[str]:
        return [r for r in self.requires if importlib.util.find_spec(r) is None]

    @property
    def available(self) -> bool:
        return not self.missing_dependencies()

    def load(self) -> ModuleType:
        """Import the engine module, or explain which optional dependency to install."""
        missing = self.missing_dependencies()
        if missing:
            raise EngineError(
                f"Engine {self.name!r} needs optional dependencies {', '.join(missing)}: "
                f"pip install 'hierfit[{self.extra or self.name}]'."
            )
        return importlib.import_module(self.module)

    def fast_options(self) -> dict[str, Any]:
        """A copy of the engine module's ``FAST_OPTIONS`` (quick-fit settings; empty if none)."""
        return dict(getattr(self.load(), "FAST_OPTIONS", None) or {})

    def prepare(self, spec: ModelSpec, options: Mapping[str, Any]) -> Preparation | None:
        """Start, in the background, slow work a later fit of ``spec`` with ``options`` will
        need (the engine module's optional ``prepare``; Stan: compiling its program), so a
        caller with other work to do first -- :func:`hierfit.evaluate.compare` -- hides it.
        ``None`` when there is nothing to prepare. The fit itself never depends on it: it
        waits for, or redoes, whatever was not finished."""
        hook = getattr(self.load(), "prepare", None)
        return hook(spec, dict(options)) if hook is not None else None


class Preparation(Protocol):
    """Background work started by :meth:`EngineEntry.prepare`."""

    def running(self) -> bool:
        """Whether the work is still going on."""

    def cancel(self) -> None:
        """Stop the work if it still runs (a later fit redoes what it needs)."""


ENGINES: dict[str, EngineEntry] = {
    "ols": EngineEntry(
        name="ols",
        module="hierfit.engines.ols",
        summary="Fixed effects, sum-to-zero coding nested in each parent: the intercept is the national level; no pooling. "
        "Least squares for gaussian outcomes, a GLM by IRLS (R's glm, glm.nb) for the others.",
        capabilities=Capabilities(
            uncertainty="frequentist",
            pooling="none",
            varying_slopes=True,
            correlated_slopes=False,
            families=("gaussian", "bernoulli", "binomial", "poisson", "negative_binomial"),
            decomposition="exact",
            offsets=True,
            weights=True,
            links="any",
        ),
    ),
    "mixed": EngineEntry(
        name="mixed",
        module="hierfit.engines.mixed.engine",
        summary="Maximum-likelihood mixed models with lme4's results: REML/ML for gaussian outcomes from per-group sufficient statistics, "
        "Laplace/adaptive quadrature GLMMs (glmer, NB2 as glmmTMB) by penalised IRLS over the tree of groups.",
        capabilities=Capabilities(
            uncertainty="frequentist",
            pooling="partial",
            varying_slopes=True,
            correlated_slopes=True,
            families=("gaussian", "bernoulli", "binomial", "poisson", "negative_binomial"),
            decomposition="exact",
            needs_group_terms=True,
            offsets=True,
            weights=True,
            links="any",
            streaming_families=("gaussian", "bernoulli", "binomial", "poisson", "negative_binomial"),
        ),
    ),
    "pymc": EngineEntry(
        name="pymc",
        module="hierfit.engines.bayes.pymc_engine",
        summary="Bayesian (PyMC NUTS), non-centred effects, LKJ correlations; gaussian effects integrated out exactly.",
        capabilities=Capabilities(
            uncertainty="posterior",
            pooling="partial",
            varying_slopes=True,
            correlated_slopes=True,
            families=("gaussian", "bernoulli", "binomial", "poisson", "negative_binomial"),
            decomposition="exact",
            offsets=True,
            weights=True,
            streaming_families=("gaussian",),
        ),
        requires=("pymc", "arviz"),
        extra="pymc",
    ),
    "stan": EngineEntry(
        name="stan",
        module="hierfit.engines.bayes.stan_engine",
        summary="Bayesian (Stan via pystan), generated Stan code; the same model and priors as 'pymc'.",
        capabilities=Capabilities(
            uncertainty="posterior",
            pooling="partial",
            varying_slopes=True,
            correlated_slopes=True,
            families=("gaussian", "bernoulli", "binomial", "poisson", "negative_binomial"),
            decomposition="exact",
            offsets=True,
            weights=True,
            streaming_families=("gaussian",),
        ),
        requires=("stan", "arviz"),
        extra="stan",
    ),
    "neural": EngineEntry(
        name="neural",
        module="hierfit.engines.neural",
        summary="PyTorch network: the mixed model's linear part (pooled along the tree by a MAP with learned SDs) plus an MLP over predictors and group embeddings; deep-ensemble intervals.",
        capabilities=Capabilities(
            uncertainty="ensemble",
            pooling="partial",
            varying_slopes=True,
            correlated_slopes=True,
            families=("gaussian", "bernoulli", "binomial", "poisson", "negative_binomial"),
            decomposition="exact",
            nonlinear=True,
            offsets=True,
            weights=True,
        ),
        requires=("torch",),
        extra="neural",
    ),
    "lightgbm": EngineEntry(
        name="lightgbm",
        module="hierfit.engines.boosting.lightgbm_engine",
        summary="LightGBM with the hierarchy levels as categorical features and early stopping; group effects derived by partial dependence over the tree of groups; no pooling.",
        capabilities=Capabilities(
            uncertainty="none",
            pooling="none",
            varying_slopes=True,
            correlated_slopes=False,
            families=("gaussian", "bernoulli", "binomial", "poisson", "negative_binomial"),
            decomposition="approximate",
            needs_group_terms=True,
            nonlinear=True,
            smooth=False,
            offsets=True,
            weights=True,
            streaming_families=("gaussian",),
        ),
        requires=("lightgbm",),
        extra="lightgbm",
    ),
    "boosted-mixed": EngineEntry(
        name="boosted-mixed",
        module="hierfit.engines.boosting.boosted_mixed",
        summary="Mixed-effects boosting (MERF/GPBoost-style): LightGBM learns f(x), the mixed model the hierarchy, alternating until the validation loss stops improving.",
        capabilities=Capabilities(
            uncertainty="frequentist",
            pooling="partial",
            varying_slopes=True,
            correlated_slopes=True,
            families=("gaussian", "bernoulli", "binomial", "poisson", "negative_binomial"),
            decomposition="exact",
            needs_group_terms=True,
            nonlinear=True,
            smooth=False,
            offsets=True,
            weights=True,
            streaming_families=("gaussian",),
        ),
        requires=("lightgbm",),
        extra="lightgbm",
    ),
}

DEFAULT_ENGINE = "ols"


def register(entry: EngineEntry) -> None:
    """Add (or replace) an engine row, e.g. for a third-party engine."""
    ENGINES[entry.name] = entry


def get_engine(name: str) -> EngineEntry:
    """Look an engine up by name, with an error listing the allowed names.

    Examples
    --------
    >>> get_engine("ols").capabilities.pooling
    'none'
    """
    try:
        return ENGINES[name]
    except (KeyError, TypeError):
        raise EngineError(
            f"The 'engine' argument of fit() must be one of: {', '.join(sorted(ENGINES))}. Got {name!r}."
        ) from None


def check_capabilities(entry: EngineEntry, spec: ModelSpec) -> None:
    """Refuse a spec the engine cannot fit (family, varying slopes, group terms), before any work.

    Examples
    --------
    Every built-in engine fits every family; an engine plugged in with :func:`register` may not:

    >>> from dataclasses import replace
    >>> from hierfit.model import make_spec
    >>> ols = get_engine("ols")
    >>> mine = replace(ols, name="mine", capabilities=replace(ols.capabilities, families=("gaussian",)))
    >>> check_capabilities(mine, make_spec("y ~ x + (1 | g)", family="poisson"))
    Traceback (most recent call last):
    ...
    hierfit.exceptions.SpecError: Engine 'mine' fits the families: gaussian; got family='poisson'. Engines for 'poisson': boosted-mixed, lightgbm, mixed, neural, ols, pymc, stan (see `hierfit engines`).
    """
    caps = entry.capabilities
    family = spec.family.name
    if family not in caps.families:
        able = sorted(n for n, e in ENGINES.items() if family in e.capabilities.families)
        raise SpecError(
            f"Engine {entry.name!r} fits the families: {', '.join(caps.families)}; got family={family!r}. "
            f"Engines for {family!r}: {', '.join(able) or 'none'} (see `hierfit engines`)."
        )
    if caps.links == "canonical" and not spec.family.canonical:
        able = sorted(n for n, e in ENGINES.items() if family in e.capabilities.families and e.capabilities.links == "any")
        raise SpecError(
            f"Engine {entry.name!r} fits only the default link of family {family!r} ({spec.family.links[0]}); got "
            f"link={spec.family.link.name!r}. Engines for the {spec.family.link.name} link: {', '.join(able) or 'none'}."
        )
    group_terms = spec.formula.group_terms
    if not caps.varying_slopes and any(t.slopes for t in group_terms):
        raise SpecError(f"Engine {entry.name!r} does not fit varying slopes; drop them from the formula or choose another engine.")
    if spec.has_offset and not caps.offsets:
        able = sorted(n for n, e in ENGINES.items() if e.capabilities.offsets)
        raise SpecError(f"Engine {entry.name!r} does not take offsets; engines that do: {', '.join(able) or 'none yet'}.")
    if spec.weights is not None and not caps.weights:
        able = sorted(n for n, e in ENGINES.items() if e.capabilities.weights)
        raise SpecError(f"Engine {entry.name!r} does not take prior weights; engines that do: {', '.join(able) or 'none yet'}.")
    if caps.needs_group_terms and not group_terms:
        raise SpecError(
            f"Engine {entry.name!r} needs at least one group-level term such as (1 | market); use engine 'ols' otherwise."
        )


def default_engine() -> str:
    """``mixed`` once it is registered, else ``ols``."""
    return "mixed" if "mixed" in ENGINES else DEFAULT_ENGINE
