"""Engine ``pymc``: the hierarchical model in PyMC, sampled with NUTS.

Group effects are non-centred at every level (``b_t[g] = diag(sd_t) L_t z_t[g]``, LKJ prior on
``L_t`` where a term is correlated, independent for ``||``). The likelihood is chosen by the
``likelihood`` option:

* ``"marginal"`` (gaussian default): group effects and normal-prior population coefficients
  are integrated out analytically from per-group sufficient statistics
  (:mod:`hierfit.engines.bayes.marginal`); NUTS samples only the SDs, correlations, sigma
  (and any non-normal-prior coefficient), and the effects are drawn afterwards from their
  exact conditional posterior. Nested levels are eliminated on the tree of groups
  (:mod:`hierfit.engines.bayes.tree_marginal`, O(groups) per gradient, block statistics);
  crossed factors keep the tree of their finest factor with the crossed terms in its dense border
  (:mod:`hierfit.engines.bayes.crossed`), or the dense algebra (O((p+q)³)), whichever the cost model
  prices lower. All are independent of the rows.
* ``"suffstats"``: every coefficient sampled, gaussian likelihood from ``W'ΩW, W'Ωy, y'Ωy``.
* ``"rows"``: the plain per-row model (the only choice for the other families).

A streamed design (a Parquet lake, a Dask DataFrame) is fitted by the statistics-based
likelihoods only (``"marginal"``, ``"suffstats"``): their statistics are gathered in one pass
over the source (:mod:`hierfit.engines.bayes.stream`) and the sampler runs as in memory.

``"auto"`` picks the gaussian likelihood (and the marginal's algebra) by the cost model of
:mod:`hierfit.engines.bayes.cost`; ``info["likelihood"]`` and ``info["marginal_algebra"]``
record what ran.

Both gaussian fast paths are exact with prior weights (``Ω``, residual variances ``σ²/w``) and
offsets (``y - offset``): see :mod:`hierfit.engines.bayes.structure`. Per-row likelihoods
(``eta = offset + X beta + sum_t Z_t b_t``; prior weights multiply each row's log-likelihood,
except the gaussian's, where they divide its variance, as lme4):

=================  ===================================================================
family             likelihood
=================  ===================================================================
gaussian           ``Normal(eta, sigma / sqrt(w))``
bernoulli          ``Binomial(1, logit_p=eta)`` (summed over rows that share ``eta``)
binomial           ``Binomial(trials, logit_p=eta)`` (``cbind(y, n - y)``; summed likewise)
poisson            ``Poisson(exp(eta))`` (summed likewise, the count of rows an offset)
negative_binomial  ``NegativeBinomial(mu=exp(eta), alpha=theta)`` (NB2), prior on ``1/sqrt(theta)``
=================  ===================================================================

``aggregate=True`` (the default) sums bernoulli, binomial and poisson rows identical in
covariates, groups, offset and weight before sampling -- exact, see
:mod:`hierfit.engines.bayes.aggregate` -- and the pointwise log-likelihood is still per row.

Examples
--------
>>> import hierfit
>>> sim = hierfit.simulate(n_markets=4, n_submarkets=3, rows_per_submarket=20, seed=1)
>>> fit = hierfit.fit(sim.formula, sim.data, engine="pymc", draws=200, tune=200, chains=2,
...                   progressbar=False, checks={"few_groups": "ignore", "ess": "ignore"})
>>> fit.native().posterior["sigma"].shape
(2, 200)
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np

from hierfit.design import Design, StreamedDesign
from hierfit.engines.bayes.aggregate import aggregate_rows, drop_zero_weights
from hierfit.engines.bayes.cost import MAX_MARGINAL_SIZE as _MAX_DENSE
from hierfit.engines.bayes.cost import LikelihoodChoice, problem_size
from hierfit.engines.bayes.cost import choose_likelihood as _cost_choice
from hierfit.engines.bayes.crossed import crossed_tree_layout, layout_stats
from hierfit.engines.bayes.marginal import MarginalData, marginal_data
from hierfit.engines.bayes.pt_marginal import marginal_loglik_op
from hierfit.engines.bayes.result import BayesFit, assemble_fit
from hierfit.engines.bayes.stream import (
    check_streamed_options,
    choose_streamed_likelihood,
    gather_statistics,
    scale_design,
    stream_tree_layout,
)
from hierfit.engines.bayes.structure import (
    BayesStructure,
    canonical_rows,
    make_structure,
    sufficient_stats,
)
from hierfit.engines.bayes.tree import TreeLayout, TreeStats, tree_layout
from hierfit.engines.bayes.tree_marginal import TreeMarginalData, ridge_solution, tree_marginal_data
from hierfit.engines.options import option
from hierfit.engines.state import LoadContext, StateReader
from hierfit.exceptions import EngineError, SpecError
from hierfit.model import ModelSpec
from hierfit.model.priors import Prior

#: above this many integrated coefficients the O(d³) dense marginal likelihood (crossed factors) loses
#: to sampling them; nested levels use the tree algebra at any size (see :mod:`.cost`)
MAX_MARGINAL_SIZE = _MAX_DENSE


@dataclass(frozen=True)
class OPTIONS:
    """Options of the ``pymc`` engine.

    Attributes
    ----------
    draws, tune, chains
        Posterior draws and warm-up iterations per chain, number of chains.
    cores
        Chains run in parallel on this many processes (default: min(chains, CPUs)).
    target_accept
        NUTS target acceptance; raise toward 0.99 if divergences are reported.
    max_treedepth
        NUTS maximum tree depth (pymc and numpyro samplers).
    seed
        Seeds sampling and the conditional draws: same seed, same draws.
    likelihood
        ``"auto"`` (gaussian: the fastest by :mod:`hierfit.engines.bayes.cost` -- ``"marginal"``
        for nested levels of any size, and for crossed factors up to 1,500 integrated
        coefficients; other families: ``"rows"``), or one of those names.
    sampler
        ``"auto"``: PyMC's own NUTS for the marginal model, numpyro (JAX, vectorised chains)
        for the others; or ``"pymc"``, ``"nutpie"``, ``"numpyro"`` (see
        ``benchmarks/bayes_speed.py`` for measurements).
    progressbar
        Show sampling progress.
    new_groups
        Intervals of rows in unseen groups (their point prediction is always the parent's):
        ``"sample"`` (default) draws the new group's effect from the fitted group distribution
        of each posterior draw; ``"parent"`` reports the parent's interval alone.
    log_likelihood
        Store pointwise log-likelihood (for LOO/WAIC): ``None`` = when draws × rows ≤ 5e7.
    posterior_predictive
        Add a ``posterior_predictive`` group of replicated outcomes to the InferenceData.
    aggregate
        Sum bernoulli, binomial and poisson rows that share covariates, groups, offset and
        weight before sampling (exact; :mod:`hierfit.engines.bayes.aggregate`).
    """

    draws: int = option(1000, ge=1)
    tune: int = option(1000, ge=0)
    chains: int = option(4, ge=1)
    cores: int | None = option(None, ge=1)
    target_accept: float = option(0.9, gt=0, lt=1)
    max_treedepth: int = option(10, ge=1)
    seed: int = 0
    likelihood: Literal["auto", "marginal", "rows", "suffstats"] = "auto"
    sampler: Literal["auto", "nutpie", "numpyro", "pymc"] = "auto"
    progressbar: bool = True
    new_groups: Literal["parent", "sample"] = "sample"
    log_likelihood: bool | None = None
    posterior_predictive: bool = False
    aggregate: bool = True


FAST_OPTIONS: dict = {"draws": 300, "tune": 300, "chains": 2, "progressbar": False}


def choose_likelihood(structure: BayesStructure, requested: str, rows: int = 0,
                      layout: TreeLayout | None = None) -> LikelihoodChoice:
    """Resolve ``likelihood="auto"`` by the cost model and reject impossible combinations.

    ``layout`` is the nested chain of the structure's levels (``None``: crossed, dense algebra).
    """
    if not structure.family.normal_errors:
        if requested in ("marginal", "suffstats"):
            raise SpecError(
                f"likelihood={requested!r} is exact only for the gaussian family; family {structure.family.name!r} "
                "uses likelihood='rows' (the default)."
            )
        return LikelihoodChoice("rows", None)
    return _cost_choice(problem_size(structure, rows, layout), requested)


def choose_sampler(requested: str, likelihood: str) -> str:
    """``auto``: PyMC's NUTS for the marginal model (its likelihood is a Python Op with an
    analytic gradient, which only PyMC's own sampler runs); numpyro (JAX) for the others."""
    import importlib.util

    if likelihood == "marginal":
        if requested not in ("auto", "pymc"):
            raise EngineError(
                f"sampler={requested!r} cannot run the marginal likelihood (a Python Op with an analytic gradient); "
                "use sampler='pymc' (the default), or likelihood='suffstats' or 'rows' with nutpie/numpyro."
            )
        return "pymc"
    if requested != "auto":
        return requested
    return "numpyro" if importlib.util.find_spec("numpyro") is not None else "pymc"


# -- priors in PyMC ---------------------------------------------------------------------------
def _pm_prior(prior: Prior, positive: bool):
    """PyMC distribution class and keyword arguments of one prior."""
    import pymc as pm

    p = dict(prior.params)
    table = {
        ("normal", False): (pm.Normal, {"mu": p.get("mu"), "sigma": p.get("sigma")}),
        ("student_t", False): (pm.StudentT, {"nu": p.get("nu"), "mu": p.get("mu"), "sigma": p.get("sigma")}),
        ("student_t", True): (pm.HalfStudentT, {"nu": p.get("nu"), "sigma": p.get("sigma")}),
        ("half_normal", True): (pm.HalfNormal, {"sigma": p.get("sigma")}),
        ("exponential", True): (pm.Exponential, {"lam": p.get("lam")}),
    }
    try:
        return table[(prior.distribution, positive)]
    except KeyError:
        raise SpecError(f"The pymc engine cannot use prior {prior} here.") from None


def _named(name: str, prior: Prior, positive: bool):
    cls, kwargs = _pm_prior(prior, positive)
    return cls(name, **kwargs)


def _vector_dist(priors: tuple[Prior, ...]):
    """One unnamed vector distribution for SD priors of one family (parameters stacked)."""
    fams = {p.distribution for p in priors}
    if len(fams) != 1:
        raise SpecError(
            f"Priors {', '.join(map(str, priors))} on one correlated term mix families; the pymc engine needs one "
            "family per correlated term (set them with priors={'sd:<level>': ...})."
        )
    cls, _ = _pm_prior(priors[0], True)
    stacked = {k: np.array([_pm_prior(p, True)[1][k] for p in priors]) for k in _pm_prior(priors[0], True)[1]}
    return cls.dist(**stacked, shape=len(priors))


def _vector_rv(name: str, priors: tuple[Prior, ...], positive: bool):
    """A vector of parameters ``name_0, name_1, ...`` with per-element priors, stacked."""
    import pytensor.tensor as pt

    if not priors:
        return pt.zeros(0)
    return pt.stack([_named(f"{name}_{i}", prior, positive) for i, prior in enumerate(priors)])


# -- the model --------------------------------------------------------------------------------
def build_model(design: Design, structure: BayesStructure, likelihood: str,
                md: MarginalData | TreeMarginalData | None = None):
    """The PyMC model of the spec; free variables ``sigma``, ``sd_<t>``, ``chol_<t>``, ``z_<t>``, ``beta``."""
    import pymc as pm
    import pytensor.tensor as pt

    pri = structure.priors
    with pm.Model() as model:
        lambdas = []
        for t, sd_priors, cor in zip(structure.terms, pri.sd, pri.cor):
            if t.correlated:
                assert cor is not None, "a correlated term has its LKJ prior"
                chol, _, _ = pm.LKJCholeskyCov(
                    f"chol_{t.name}", n=t.k, eta=cor.param("eta"), sd_dist=_vector_dist(sd_priors), compute_corr=True
                )
                lambdas.append(chol)
            else:
                lambdas.append(pt.diag(_vector_rv(f"sd_{t.name}", sd_priors, True)))
        sigma = _named("sigma", pri.sigma, True) if pri.sigma is not None else None
        if pri.theta is not None:
            # the NB size through phi = 1/sqrt(theta), the scale the prior is stated on (see .priors)
            sigma = 1.0 / pt.sqr(_named("inv_sqrt_theta", pri.theta, True))
        if likelihood == "marginal":
            assert md is not None, "the marginal model needs its summaries"
            beta_S = _vector_rv("beta", tuple(pri.beta[j] for j in structure.sampled_beta), False)
            loglik = marginal_loglik_op(md, structure)
            constant = -0.5 * md.n * np.log(2 * np.pi) + 0.5 * md.log_weights
            pm.Potential("marginal_loglik", loglik(sigma, lambdas, beta_S) + constant)
            return model
        beta = _vector_rv("beta", pri.beta, False)
        bs = []
        for t, lam in zip(structure.terms, lambdas):
            z = pm.Normal(f"z_{t.name}", 0.0, 1.0, shape=(t.n_groups, t.k))
            bs.append(pt.dot(z, lam.T))
        if likelihood == "suffstats":
            assert isinstance(md, MarginalData) and sigma is not None, "the sufficient-statistics model needs W'ΩW and sigma"
            u = pt.concatenate([beta] + [b.reshape((-1,)) for b in bs])
            quad = md.yty - 2 * pt.dot(u, md.Wty) + pt.dot(u, pt.dot(md.M, u))
            pm.Potential("loglik", -0.5 * md.n * pt.log(2 * np.pi * sigma**2) - quad / (2 * sigma**2)
                         + 0.5 * md.log_weights)
            return model
        eta = pt.dot(design.X, beta)
        if design.offset is not None:
            eta = eta + design.offset
        for td, b in zip(design.terms, bs):
            idx = design.group_index[td.level]
            eta = eta + (pt.as_tensor(td.Z) * b[idx]).sum(axis=1)
        family = structure.family
        w = design.weights
        if w is not None and family.normal_errors:
            sigma = sigma / np.sqrt(w)  # lme4's gaussian weights: residual variance sigma^2 / w (w > 0 here)
        cls, kwargs = _LIKELIHOODS[family.name](pt, eta, sigma, design)
        y = design.y if not family.discrete else np.round(design.y).astype(np.int64)
        if w is None or family.normal_errors:
            cls("y", **kwargs, observed=y)
        else:
            # prior weights multiply each row's log-likelihood (no observed variable can say that)
            pm.Potential("weighted_loglik", (w * pm.logp(cls.dist(**kwargs), y)).sum())
    return model


def _trials(design: Design) -> np.ndarray:
    """Trials per row: the binomial's, or one (bernoulli rows; aggregated cells carry theirs)."""
    return np.ones(design.n, dtype=np.int64) if design.trials is None else np.round(design.trials).astype(np.int64)


#: family name -> the PyMC distribution and its arguments given the linear predictor and the
#: dispersion (the engine's translation of the family table; pytensor is passed in, imported lazily)
_LIKELIHOODS: dict[str, Callable[..., tuple[Any, dict[str, Any]]]] = {
    "gaussian": lambda pt, eta, disp, d: (_pm("Normal"), {"mu": eta, "sigma": disp}),
    "bernoulli": lambda pt, eta, disp, d: (_pm("Binomial"), {"n": _trials(d), "logit_p": eta}),
    "binomial": lambda pt, eta, disp, d: (_pm("Binomial"), {"n": _trials(d), "logit_p": eta}),
    "poisson": lambda pt, eta, disp, d: (_pm("Poisson"), {"mu": pt.exp(eta)}),
    "negative_binomial": lambda pt, eta, disp, d: (_pm("NegativeBinomial"), {"mu": pt.exp(eta), "alpha": disp}),
}


def _pm(name: str) -> Any:
    import pymc as pm

    return getattr(pm, name)


# -- sampling -----------------------------------------------------------------------------------
def initial_values(structure: BayesStructure, md: MarginalData | TreeMarginalData | None, likelihood: str, chains: int,
                   seed: int) -> list[dict]:
    """Per-chain starting points near the no-pooling fit (dummy least squares), jittered.

    NUTS warm-up from PyMC's default start (the prior's centre, jittered) can begin where the
    gaussian likelihood's gradient is ~1e5 (thousands of rows, sigma far off): early trees then
    hit the maximum depth and warm-up dominates the run. Starting near the data avoids that.
    The least squares are ``(M + δI)u = W'y`` (δ = 1e-8 tr(M)/d), solved densely or on the tree.
    """
    if md is None:
        return [{} for _ in range(chains)]
    if isinstance(md, TreeMarginalData):
        u, rss, rank = ridge_solution(md)
    else:
        d = structure.size
        u = np.linalg.lstsq(md.M + 1e-8 * np.trace(md.M) / d * np.eye(d), md.Wty, rcond=None)[0]
        rss = md.yty - 2 * u @ md.Wty + u @ md.M @ u
        rank = np.linalg.matrix_rank(md.M)
    sigma0 = float(np.sqrt(max(rss, 1e-12) / max(md.n - rank, 1)))
    rng = np.random.default_rng([seed, 7])
    out = []
    for _ in range(chains):
        jit = lambda v: float(v * np.exp(rng.uniform(-0.2, 0.2)))
        # sigma's posterior SD on the log scale is ~1/sqrt(2n): jitter it by about two of those, not 20%
        start: dict = {"sigma": float(sigma0 * np.exp(rng.uniform(-2, 2) / np.sqrt(2 * md.n)))}
        for t in structure.terms:
            block = u[t.offset : t.offset + t.size].reshape(t.n_groups, t.k)
            sd0 = np.maximum(block.std(axis=0) if t.n_groups > 1 else np.abs(block[0]), 0.05 * sigma0)
            if t.correlated:
                chol = np.diag([jit(v) for v in sd0])
                start[f"chol_{t.name}"] = chol[np.tril_indices(t.k)]
            else:
                for j, v in enumerate(sd0):
                    start[f"sd_{t.name}_{j}"] = jit(v)
        names = structure.sampled_beta if likelihood == "marginal" else np.arange(structure.p)
        for i, j in enumerate(names):
            start[f"beta_{i}"] = float(u[j])
        out.append(start)
    return out


@contextlib.contextmanager
def _restore_level(log: logging.Logger, level: int) -> Any:
    try:
        yield
    finally:
        log.setLevel(level)


def _sample(model, options: OPTIONS, sampler: str, initvals: list[dict]):
    import pymc as pm

    cores = options.cores or min(options.chains, os.cpu_count() or 1)
    if sampler == "pymc" and "jax" in sys.modules and cores > 1:
        # JAX (numpyro, an earlier fit) keeps thread pools that a fork of this process would
        # inherit mid-lock (the chain workers hang): run the chains in this process instead
        cores = 1
    kwargs: dict = {}
    if sampler == "numpyro":
        # vectorised chains: parallel chains each hold a copy of the data (memory blew up at 50k)
        kwargs["nuts_sampler_kwargs"] = {"chain_method": "vectorized", "nuts_kwargs": {"max_tree_depth": options.max_treedepth}}
    elif sampler == "pymc":
        kwargs["nuts"] = {"max_treedepth": options.max_treedepth}
        kwargs["blas_cores"] = cores  # one BLAS thread per chain process
    if sampler == "pymc" and initvals and initvals[0]:
        kwargs["initvals"] = initvals
        kwargs["init"] = "adapt_diag"  # jitter is in the initial values already
    # PyMC logs its progress at INFO ("Initializing NUTS", "Sampling ... took"): quiet means quiet
    log = logging.getLogger("pymc")
    level = log.level
    if not options.progressbar:
        log.setLevel(logging.WARNING)
    with model, _restore_level(log, level):
        return pm.sample(
            draws=options.draws,
            tune=options.tune,
            chains=options.chains,
            cores=cores,
            target_accept=options.target_accept,
            random_seed=options.seed,
            progressbar=options.progressbar,
            nuts_sampler=sampler,
            compute_convergence_checks=False,
            **kwargs,
        )


def _posterior_arrays(idata: Any, structure: BayesStructure, likelihood: str) -> dict[str, Any]:
    """Flatten chains: sigma, Λ_t per term, sampled betas, and (non-marginal) b draws."""
    post = idata.posterior
    flat = lambda name: np.asarray(post[name]).reshape(-1, *post[name].shape[2:])
    out: dict[str, Any] = {}
    out["dispersion"] = flat("sigma") if structure.priors.sigma is not None else None
    if structure.priors.theta is not None:
        out["dispersion"] = 1.0 / flat("inv_sqrt_theta") ** 2
    lambdas = []
    for t in structure.terms:
        if t.correlated:
            packed = flat(f"chol_{t.name}")
            L = np.zeros((packed.shape[0], t.k, t.k))
            L[:, *np.tril_indices(t.k)] = packed
            lambdas.append(L)
        else:
            sds = np.stack([flat(f"sd_{t.name}_{j}") for j in range(t.k)], axis=1)
            lambdas.append(np.einsum("sj,jk->sjk", sds, np.eye(t.k)))
    out["lambdas"] = lambdas
    if likelihood == "marginal":
        out["beta_S"] = np.stack([flat(f"beta_{i}") for i in range(len(structure.sampled_beta))], axis=1) if len(structure.sampled_beta) else np.zeros((len(out["dispersion"]), 0))
    else:
        beta = np.stack([flat(f"beta_{i}") for i in range(structure.p)], axis=1) if structure.p else None
        bs = [np.einsum("sgk,sjk->sgj", flat(f"z_{t.name}"), lam) for t, lam in zip(structure.terms, lambdas)]
        out["beta"], out["b"] = beta, bs
    return out


def fit(design: Design | StreamedDesign, spec: ModelSpec, options: OPTIONS) -> BayesFit:
    """Sample the posterior with NUTS and wrap it in the result contract.

    A :class:`~hierfit.design.streamed.StreamedDesign` (rows left in their source) is fitted
    from statistics gathered in one pass over the source (:mod:`.stream`).
    """
    if isinstance(design, StreamedDesign):
        return _fit_streamed(design, options)
    structure0 = make_structure(design, marginal=True)
    layout: TreeLayout | None = None
    if structure0.family.normal_errors:  # nested: the tree; crossed: its finest factor's chain, the rest in the border
        layout = tree_layout(design, structure0) or crossed_tree_layout(design, structure0)
    choice = choose_likelihood(structure0, options.likelihood, design.n, layout)
    likelihood = choice.likelihood
    structure = structure0 if likelihood == "marginal" else make_structure(design, marginal=False)
    _check_new_groups(options)
    cells = None
    if likelihood == "rows" and options.aggregate:
        # rows sharing eta summed (exact); the cells come sorted, so the draws ignore the input order
        cells = aggregate_rows(design)
        ordered = cells.design
    elif likelihood == "rows":
        ordered = canonical_rows(drop_zero_weights(design))  # the same draws whatever the input row order
    else:
        ordered = canonical_rows(design)  # weight-0 rows add nothing to the sufficient statistics
    md = _summaries(structure, ordered, choice, layout)
    info: dict[str, Any] = {} if cells is None else {"aggregated_rows": cells.rows, "aggregated_cells": cells.cells}
    return _sample_and_assemble(design, ordered, structure, md, choice, options, info)


def _check_new_groups(options: OPTIONS) -> None:
    if options.new_groups not in ("parent", "sample"):
        raise EngineError(f"Option 'new_groups' must be 'parent' or 'sample'; got {options.new_groups!r}.")


def _fit_streamed(design: StreamedDesign, options: OPTIONS) -> BayesFit:
    """The statistics-based likelihoods of a streamed design: one statistics pass, then the same sampler."""
    check_streamed_options(design, "pymc", options.likelihood, options.log_likelihood, options.posterior_predictive)
    _check_new_groups(options)
    structure0 = make_structure(scale_design(design), marginal=True)  # sizes and prior families: the choice
    layout = stream_tree_layout(design, structure0)
    choice = choose_streamed_likelihood(structure0, options.likelihood, design.n, layout)
    tree = choice.likelihood == "marginal" and choice.algebra == "tree"
    gathered = gather_statistics(design, layout if tree else None)
    # the default priors from the outcome's moments over the rows of positive weight, as in memory
    structure = make_structure(scale_design(design, gathered.outcome), marginal=choice.likelihood == "marginal")
    md: MarginalData | TreeMarginalData
    if isinstance(gathered.stats, TreeStats):
        md = tree_marginal_data(structure, gathered.stats)
    else:
        md = marginal_data(structure, gathered.stats)
    info: dict[str, Any] = {"streamed_from": design.source.description}
    return _sample_and_assemble(cast(Design, design), cast(Design, design), structure, md, choice, options, info)


def _sample_and_assemble(design: Design, ordered: Design, structure: BayesStructure,
                         md: MarginalData | TreeMarginalData | None, choice: LikelihoodChoice, options: OPTIONS,
                         extra: dict[str, Any]) -> BayesFit:
    likelihood = choice.likelihood
    sampler = choose_sampler(options.sampler, likelihood)
    from threadpoolctl import threadpool_limits

    # Small dense algebra: BLAS threads only contend (37x slower per gradient measured on 2 busy cores).
    with threadpool_limits(1):
        t0 = time.perf_counter()
        model = build_model(ordered, structure, likelihood, md)
        inits = initial_values(structure, md, likelihood, options.chains, options.seed)
        idata = _sample(model, options, sampler, inits)
        sampling_seconds = time.perf_counter() - t0
        arrays = _posterior_arrays(idata, structure, likelihood)
        info = {"likelihood": likelihood, "sampler": sampler, "sampling_seconds": sampling_seconds}
        if choice.algebra is not None:
            info["marginal_algebra"] = choice.algebra
        info.update(extra)
        return _assemble(design, structure, md, arrays, idata, options, info)


def _summaries(structure: BayesStructure, ordered: Design, choice: LikelihoodChoice,
               layout: TreeLayout | None) -> MarginalData | TreeMarginalData | None:
    """What the gaussian likelihood reads: block statistics on the tree, or the dense ``W'ΩW``."""
    if choice.likelihood == "marginal" and choice.algebra == "tree":
        assert layout is not None, "the tree algebra needs the nested chain"
        return tree_marginal_data(structure, layout_stats(ordered, layout))
    if choice.likelihood in ("marginal", "suffstats"):
        return marginal_data(structure, sufficient_stats(ordered))
    return None


def _assemble(design, structure, md, arrays, idata, options, info) -> BayesFit:
    return assemble_fit(
        engine="pymc",
        design=design,
        structure=structure,
        md=md,
        arrays=arrays,
        sample_stats=idata.sample_stats,
        shape=(options.chains, options.draws),
        seed=options.seed,
        new_groups=options.new_groups,
        log_likelihood=options.log_likelihood,
        posterior_predictive=options.posterior_predictive,
        info=info,
    )


def load(state: StateReader, context: LoadContext) -> BayesFit:
    """Rebuild a saved ``pymc`` fit (InferenceData from its netCDF, no sampling)."""
    return BayesFit.load_state(state, context)
