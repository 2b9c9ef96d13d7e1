"""The engine protocol and the shared implementation for linear-predictor engines.

An engine module exposes ``OPTIONS`` (a dataclass type of its options with defaults) and
``fit(design, spec, options) -> EngineFit``. :class:`EngineFit` is what every engine returns;
:class:`hierfit.results.FitResult` wraps it into the one result users see.

:class:`LinearEngineFit` implements the whole contract for any engine whose predictor is
``X beta + sum_t Z_t b_t`` (ols, mixed, pymc, stan, and the linear part of neural): the engine
only supplies point estimates and either posterior/ensemble draws or an exact Gaussian
covariance of the flat parameter vector (see :mod:`hierfit.engines.layout`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np
import pandas as pd
from scipy import sparse, stats

from hierfit.checks import Diagnostic
from hierfit.design import Design, RowDesign
from hierfit.design.hierarchy import Hierarchy
from hierfit.engines.layout import EFFECT_KEYS, ParameterLayout
from hierfit.engines.state import LoadContext, StateReader, StateWriter, diagnostics_to_json
from hierfit.exceptions import PersistenceError
from hierfit.model import Family

FIXED_COLUMNS = ["term", "estimate", "std_error", "lower", "upper"]
VARIANCE_COLUMNS = ["level", "term1", "term2", "variance", "sd_or_corr"]
GROUP_COLUMNS = EFFECT_KEYS + ["estimate", "std_error", "lower", "upper", "n_rows"]
INTERVAL_KINDS = ("confidence", "prediction")


def variance_table(design: Design, covariances: list[np.ndarray], sigma: float | None,
                   dispersion: str | None = "sigma") -> pd.DataFrame:
    """The variance-components table from each term's ``k × k`` covariance and the dispersion.

    One row per coefficient (variance and SD), one per pair of a correlated term (covariance
    and correlation; NaN where an SD is 0), and unless ``sigma`` is None a row for the family's
    dispersion parameter (``Family.dispersion``): ``residual`` for a gaussian SD, else a
    ``dispersion`` row named after the parameter (the negative-binomial size ``theta``, whose
    ``variance`` and ``sd_or_corr`` columns both hold it, as in the simulator's truth).

    Examples
    --------
    >>> import numpy as np, hierfit
    >>> sim = hierfit.simulate(n_markets=3, n_submarkets=2, rows_per_submarket=5, seed=0)
    >>> d = hierfit.build_design(hierfit.make_spec("y ~ x1 + (1 + x1 | market)"), sim.data)
    >>> variance_table(d, [np.array([[4.0, 1.0], [1.0, 1.0]])], 2.0)["sd_or_corr"].tolist()
    [2.0, 1.0, 0.5, 2.0]
    """
    rows = []
    for td, cov in zip(design.terms, covariances):
        names = td.coefficients
        sd = np.sqrt(np.diag(cov))
        with np.errstate(invalid="ignore", divide="ignore"):
            cor = cov / np.outer(sd, sd)
        for i, a in enumerate(names):
            rows.append({"level": td.level, "term1": a, "term2": "", "variance": cov[i, i], "sd_or_corr": sd[i]})
        if td.term.correlated:
            for i in range(len(names)):
                for j in range(i + 1, len(names)):
                    rows.append({"level": td.level, "term1": names[i], "term2": names[j], "variance": cov[i, j], "sd_or_corr": cor[i, j]})
    if sigma is not None and dispersion == "sigma":
        rows.append({"level": "residual", "term1": "", "term2": "", "variance": sigma**2, "sd_or_corr": sigma})
    elif sigma is not None and dispersion is not None:
        rows.append({"level": "dispersion", "term1": dispersion, "term2": "", "variance": sigma, "sd_or_corr": sigma})
    return pd.DataFrame(rows, columns=VARIANCE_COLUMNS)


@runtime_checkable
class EngineFit(Protocol):
    """What every engine's ``fit`` returns; :class:`hierfit.results.FitResult` wraps it.

    Tables follow the result contract's column names. ``native_linear_predictor`` computes the
    linear predictor with the engine's *own* machinery (the booster's raw score, the network's
    forward pass, ``X beta + Z b`` from the solver's solution, the posterior mean), independently
    of ``contributions``: the conformance suite checks that the two agree.
    """

    engine: str
    statistics: dict[str, float]
    diagnostics: list[Diagnostic]

    def fixed_effects(self, level: float) -> pd.DataFrame:
        """Columns ``term, estimate, std_error, lower, upper``."""
        ...

    def variance_components(self) -> pd.DataFrame:
        """Columns ``level, term1, term2, variance, sd_or_corr`` (lme4's as.data.frame(VarCorr))."""
        ...

    def group_effects(self, level: float) -> pd.DataFrame:
        """Columns :data:`GROUP_COLUMNS`; ``kind`` is ``deviation`` or ``total``."""
        ...

    def contributions(self, design: RowDesign) -> pd.DataFrame:
        """Per-row additive parts on the link scale; they sum to the linear predictor."""
        ...

    def interval(self, design: RowDesign, kind: str, level: float,
                 scale: str = "response") -> tuple[np.ndarray, np.ndarray] | None:
        """Lower and upper bounds, or ``None`` without uncertainty.

        ``scale="link"`` asks for the bounds of the linear predictor (confidence intervals
        only: the caller refuses link-scale prediction intervals for a non-identity link).
        """
        ...

    def native(self) -> Any:
        """The engine's own fitted object."""
        ...

    def native_linear_predictor(self, design: RowDesign) -> np.ndarray:
        """The linear predictor of ``design``'s rows computed by the engine's own object."""
        ...

    def summary_lines(self) -> list[str]:
        """Engine-specific lines for ``FitResult.summary()``."""
        ...

    def linear_predictor_draws(self, design: RowDesign, max_draws: int) -> np.ndarray | None:
        """``(n_draws, n)`` draws of the linear predictor at ``design``'s rows from the engine's own
        uncertainty (posterior, joint sampling or ensemble draws), or ``None`` without draws.

        At most ``max_draws``, and the same parameter draws for every design, so that quantities
        computed from two designs (a contrast) pair them draw by draw. Rows of unseen groups use
        their ancestor's effects (the new group's own effect at its mean, 0).
        """
        ...

    def linear_predictor_gaussian(self, design: RowDesign) -> tuple[sparse.csr_matrix, GaussianCoefficients] | None:
        """``(R, g)`` when the linear predictor is ``R @ theta + c`` (``c`` known) and ``theta`` has
        the exact Gaussian / Student-t sampling distribution ``g``; ``None`` otherwise."""
        ...

    def save(self, state: StateWriter) -> None:
        """Write the fit's state (:mod:`hierfit.engines.state`); the engine module's
        ``load(state, context)`` rebuilds the fit from it."""
        ...


class BaseEngineFit(ABC):
    """Defaults shared by the engines' fits (no interval, no extra summary)."""

    engine: str = ""
    statistics: dict[str, float]
    diagnostics: list[Diagnostic]

    @abstractmethod
    def fixed_effects(self, level: float) -> pd.DataFrame: ...

    @abstractmethod
    def variance_components(self) -> pd.DataFrame: ...

    @abstractmethod
    def group_effects(self, level: float) -> pd.DataFrame: ...

    @abstractmethod
    def contributions(self, design: RowDesign) -> pd.DataFrame: ...

    @abstractmethod
    def native_linear_predictor(self, design: RowDesign) -> np.ndarray: ...

    def interval(self, design: RowDesign, kind: str, level: float,
                 scale: str = "response") -> tuple[np.ndarray, np.ndarray] | None:
        return None

    def native(self) -> Any:
        return self

    def summary_lines(self) -> list[str]:
        return []

    def linear_predictor_draws(self, design: RowDesign, max_draws: int) -> np.ndarray | None:
        return None

    def linear_predictor_gaussian(self, design: RowDesign) -> tuple[sparse.csr_matrix, GaussianCoefficients] | None:
        return None

    @abstractmethod
    def save(self, state: StateWriter) -> None:
        """Write this fit's state as data; the engine module's ``load(state, context)`` reads it back."""


def thin_draws(n: int, keep: int) -> np.ndarray:
    """At most ``keep`` evenly spaced indices of ``n`` draws (the same ones on every call).

    >>> thin_draws(10, 4).tolist()
    [0, 3, 6, 9]
    """
    return np.unique(np.linspace(0, n - 1, min(n, keep)).round().astype(int))


SE_BLOCK_ENTRIES = 4_000_000  # dense rows × coefficients entries formed at once (32 MB)
PREDICTION_DRAWS = 1000  # draws behind a non-gaussian outcome's prediction interval from Wald bounds


@dataclass(frozen=True, eq=False)
class GaussianCoefficients:
    """Exact sampling distribution ``theta = K @ gamma``, ``gamma ~ t_df(gamma_hat, cov)``."""

    K: sparse.csr_matrix
    cov: np.ndarray
    df: float  # np.inf for normal quantiles

    def std_errors(self, M: sparse.spmatrix) -> np.ndarray:
        """Standard errors of ``M @ theta``: ``sqrt(diag(M K cov Kᵀ Mᵀ))``.

        ``M K cov`` is dense (rows × coefficients), so it is formed a block of rows at a time:
        memory stays bounded for prediction intervals on many rows.
        """
        MK = sparse.csr_matrix(M @ self.K)
        var = np.empty(MK.shape[0])
        step = max(1, SE_BLOCK_ENTRIES // max(self.cov.shape[0], 1))
        for start in range(0, MK.shape[0], step):
            block = MK[start : start + step]
            var[start : start + step] = np.asarray(block.multiply(block @ self.cov).sum(axis=1)).ravel()
        return np.sqrt(np.maximum(var, 0.0))

    def quantile(self, level: float) -> float:
        q = 0.5 + level / 2
        return float(stats.t.ppf(q, self.df) if np.isfinite(self.df) else stats.norm.ppf(q))


@dataclass(frozen=True, eq=False)
class Draws:
    """Draws of the flat parameter vector ``(n_draws, P)`` with one dispersion per draw."""

    theta: np.ndarray
    dispersion: np.ndarray | None = None


class Uncertainty:
    """How a linear engine knows its uncertainty: one strategy per fit.

    :class:`NoUncertainty`, :class:`ExactGaussian` (a sampling distribution of the
    coefficients, ``ols``), :class:`PosteriorDraws` (posterior or ensemble draws) or
    :class:`LazyDraws` (draws made on first use, e.g. the mixed model's joint draws: a fit
    that only reports estimates never pays for them).
    """

    def draws(self) -> Draws | None:
        return None

    def gaussian(self) -> GaussianCoefficients | None:
        return None


class NoUncertainty(Uncertainty):
    """Point estimates only."""


@dataclass(frozen=True, eq=False)
class ExactGaussian(Uncertainty):
    """Exact Gaussian (or Student-t) sampling distribution of the coefficients."""

    coefficients: GaussianCoefficients

    def gaussian(self) -> GaussianCoefficients:
        return self.coefficients


@dataclass(frozen=True, eq=False)
class PosteriorDraws(Uncertainty):
    """Draws computed during the fit."""

    values: Draws

    def draws(self) -> Draws:
        return self.values


class LazyDraws(Uncertainty):
    """Draws made by ``make()`` the first time they are needed, then kept.

    Not saved: a saved fit stores the recipe's inputs and its ``load`` makes a new
    ``LazyDraws`` that redraws with the same seed (the mixed engine saves the statistics of
    its PLS system, not ``n_draws × P`` draws).
    """

    def __init__(self, make: Callable[[], Draws]) -> None:
        self._make = make

    @cached_property
    def _values(self) -> Draws:
        return self._make()

    def draws(self) -> Draws:
        return self._values


class LinearEngineFit(BaseEngineFit):
    """The result contract for a linear predictor, from estimates plus one uncertainty source.

    Parameters
    ----------
    design
        The fitting design (only its layout, hierarchy and family are kept).
    beta, b
        Point estimates.
    sigma
        Dispersion point estimate (gaussian residual SD, negative-binomial theta), else ``None``.
    variance_table
        The engine's variance components (rows per :data:`VARIANCE_COLUMNS`).
    uncertainty
        The one source of intervals (:class:`Uncertainty`); default none.
    """

    def __init__(
        self,
        *,
        engine: str,
        design: Design,
        beta: np.ndarray,
        b: list[np.ndarray],
        sigma: float | None,
        variance_table: pd.DataFrame,
        uncertainty: Uncertainty | None = None,
        statistics: dict[str, float] | None = None,
        diagnostics: list[Diagnostic] | None = None,
        seed: int = 0,
    ) -> None:
        layout = ParameterLayout.from_design(design)
        self._set_linear(engine=engine, layout=layout, hierarchy=design.hierarchy, family=design.spec.family,
                         theta=layout.flatten(beta, b), sigma=sigma, variance_table=variance_table, uncertainty=uncertainty,
                         statistics=statistics, diagnostics=diagnostics, seed=seed)

    def _set_linear(self, *, engine: str, layout: ParameterLayout, hierarchy: Hierarchy, family: Family, theta: np.ndarray,
                    sigma: float | None, variance_table: pd.DataFrame, uncertainty: Uncertainty | None,
                    statistics: dict[str, float] | None, diagnostics: list[Diagnostic] | None, seed: int) -> None:
        self.engine = engine
        self.layout = layout
        self.hierarchy: Hierarchy = hierarchy
        self.family = family  # the Family row
        self.theta = theta
        self.sigma = sigma
        self.uncertainty = uncertainty if uncertainty is not None else NoUncertainty()
        self._variance_table = variance_table
        self.statistics = dict(statistics or {})
        self.diagnostics = list(diagnostics or [])
        self.seed = seed

    # -- persistence ------------------------------------------------------------------------
    def save(self, state: StateWriter) -> None:
        """The linear parts with their uncertainty (engines with more state extend this)."""
        self.save_linear(state)

    def save_linear(self, state: StateWriter, *, uncertainty: bool = True) -> None:
        """Write the layout, estimates, variance table, statistics, diagnostics and seed.

        ``uncertainty=False`` leaves the uncertainty out, for engines that regenerate it from
        their own state (their ``load`` hands :meth:`restore` a new one).
        """
        state.put("engine", self.engine)
        state.put("layout", self.layout.to_json())
        state.put_array("theta", self.theta)
        state.put("sigma", self.sigma)
        state.put_table("variance_table", self._variance_table[VARIANCE_COLUMNS].reset_index(drop=True))
        state.put("statistics", self.statistics)
        state.put("diagnostics", diagnostics_to_json(self.diagnostics))
        state.put("seed", self.seed)
        if uncertainty:
            save_uncertainty(self.uncertainty, state)

    @classmethod
    def restore(cls, state: StateReader, context: LoadContext, uncertainty: Uncertainty | None = None) -> Self:
        """A fit of this class with the linear parts :meth:`save_linear` wrote.

        ``__init__`` needs the fitting design, which a saved fit no longer has, so the object
        is made without it; subclasses set their own attributes on the result.
        """
        try:
            layout = ParameterLayout.from_json(state.get("layout"), context.hierarchy)
        except (ValueError, KeyError, TypeError) as exc:
            raise state.fail(str(exc)) from None
        theta = state.get_array("theta", ndim=1)
        if theta.shape != (layout.size,):
            raise state.fail(f"theta has {theta.size} entries; the layout needs {layout.size}")
        table = state.get_table("variance_table")
        if list(table.columns) != VARIANCE_COLUMNS:
            raise state.fail(f"the variance table has columns {list(table.columns)}")
        obj = cls.__new__(cls)
        obj._set_linear(
            engine=state.get_str("engine"), layout=layout, hierarchy=context.hierarchy, family=context.spec.family, theta=theta,
            sigma=state.get_optional_float("sigma"), variance_table=table,
            uncertainty=uncertainty if uncertainty is not None else load_uncertainty(state, layout.size),
            statistics=state.get_float_dict("statistics"), diagnostics=state.get_diagnostics("diagnostics"), seed=state.get_int("seed"),
        )
        return obj

    @property
    def draws(self) -> np.ndarray | None:
        """``(n_draws, P)`` parameter draws, or ``None`` (see :attr:`uncertainty`)."""
        d = self.uncertainty.draws()
        return None if d is None else d.theta

    @property
    def sigma_draws(self) -> np.ndarray | None:
        """One dispersion per draw (gaussian sigma), or ``None``."""
        d = self.uncertainty.draws()
        return None if d is None else d.dispersion

    @property
    def gaussian(self) -> GaussianCoefficients | None:
        """The exact sampling distribution of the coefficients, or ``None``."""
        return self.uncertainty.gaussian()

    @property
    def beta(self) -> np.ndarray:
        return self.layout.unflatten(self.theta)[0]

    @property
    def b(self) -> list[np.ndarray]:
        return self.layout.unflatten(self.theta)[1]

    # -- tables -----------------------------------------------------------------------------
    def _summarise(self, M: sparse.spmatrix, level: float) -> pd.DataFrame:
        est = np.asarray(M @ self.theta).ravel()
        n = M.shape[0]
        se = np.full(n, np.nan)
        lower = np.full(n, np.nan)
        upper = np.full(n, np.nan)
        if self.draws is not None:
            values = np.asarray(M @ self.draws.T).T  # (n_draws, n)
            se = values.std(axis=0, ddof=1)
            lower, upper = np.quantile(values, [(1 - level) / 2, (1 + level) / 2], axis=0)
        elif self.gaussian is not None:
            se = self.gaussian.std_errors(M)
            q = self.gaussian.quantile(level)
            lower, upper = est - q * se, est + q * se
        return pd.DataFrame({"estimate": est, "std_error": se, "lower": lower, "upper": upper})

    def fixed_effects(self, level: float) -> pd.DataFrame:
        p = len(self.layout.x_names)
        M = sparse.eye(p, self.layout.size, format="csr")
        table = self._summarise(M, level)
        table.insert(0, "term", list(self.layout.x_names))
        return table[FIXED_COLUMNS]

    def variance_components(self) -> pd.DataFrame:
        return self._variance_table[VARIANCE_COLUMNS].reset_index(drop=True)

    def group_effects(self, level: float) -> pd.DataFrame:
        keys, M = self.layout.effect_map(self.hierarchy)
        values = self._summarise(M, level)
        return pd.concat([keys, values], axis=1)[GROUP_COLUMNS]

    # -- rows -------------------------------------------------------------------------------
    def contributions(self, design: RowDesign) -> pd.DataFrame:
        beta, b = self.layout.unflatten(self.theta)
        return self.layout.contributions(design, beta, b)

    def native_linear_predictor(self, design: RowDesign) -> np.ndarray:
        """``R theta`` (+ offset): the row map applied to the estimates (engines with their own solver override)."""
        eta = np.asarray(self.layout.row_matrix(design) @ self.theta).ravel()
        return eta if design.offset is None else eta + design.offset

    def interval(self, design: RowDesign, kind: str, level: float,
                 scale: str = "response") -> tuple[np.ndarray, np.ndarray] | None:
        alpha = (1 - level) / 2
        if self.draws is not None:
            return self._draw_interval(design, kind, alpha, self.family, scale)
        if self.gaussian is not None:
            return self._gaussian_interval(design, kind, level, scale)
        return None

    def new_group_sd(self, design: RowDesign) -> np.ndarray:
        """Per row, the SD of the effects of its unseen groups: ``sqrt(Σ_t z_tᵀ Σ_t z_t)``.

        A row whose submarket was not seen is predicted with its market's effects (the mean of
        a new submarket's effect is 0), but the new submarket's own effect is unknown: its
        variance, from the fitted variance components, widens the row's interval. Engines
        without pooling have no such components and add nothing.
        """
        var = np.zeros(design.n)
        table = self._variance_table
        for td in design.terms:
            unseen = design.group_index[td.level] < 0
            if not unseen.any():
                continue
            cov = _term_covariance(table, td.level, td.coefficients)
            if cov is None:
                continue
            z = td.Z[unseen]
            var[unseen] += np.einsum("ij,jk,ik->i", z, cov, z)
        return np.sqrt(var)

    def _draw_interval(self, design: RowDesign, kind: str, alpha: float, family: Family,
                       scale: str = "response") -> tuple[np.ndarray, np.ndarray]:
        draws = self.uncertainty.draws()
        assert draws is not None
        rng = np.random.default_rng(self.seed)
        lower = np.empty(design.n)
        upper = np.empty(design.n)
        new_sd = self.new_group_sd(design)
        disp = None if draws.dispersion is None or not family.has_dispersion else draws.dispersion[:, None]
        chunk = max(1, 2_000_000 // max(len(draws.theta), 1))
        for start in range(0, design.n, chunk):
            rows = slice(start, min(start + chunk, design.n))
            eta = self.layout.eta_draws(design, draws.theta, rows)
            if new_sd[rows].any():
                eta = eta + rng.standard_normal(eta.shape) * new_sd[rows]
            if scale == "link":  # quantiles of the linear predictor itself (no clipping of the mean)
                lower[rows], upper[rows] = np.quantile(eta, [alpha, 1 - alpha], axis=0)
                continue
            mu = family.inverse_link(eta)
            if kind == "prediction":
                mu = family.sample(rng, mu, None if design.trials is None else design.trials[rows], disp)
            lower[rows], upper[rows] = np.quantile(mu, [alpha, 1 - alpha], axis=0)
        return lower, upper

    def _gaussian_interval(self, design: RowDesign, kind: str, level: float,
                           scale: str = "response") -> tuple[np.ndarray, np.ndarray]:
        """Wald bounds ``eta ± q se`` of the linear predictor, mapped through the (increasing)
        inverse link for the mean; a non-gaussian outcome's prediction bounds are quantiles of
        outcomes drawn at means drawn from that normal (seeded)."""
        gaussian = self.uncertainty.gaussian()
        assert gaussian is not None
        R = self.layout_row_matrix(design)
        se = np.sqrt(gaussian.std_errors(R) ** 2 + self.new_group_sd(design) ** 2)
        eta = np.asarray(R @ self.theta).ravel() + (0.0 if design.offset is None else design.offset)
        q = gaussian.quantile(level)
        family = self.family
        if family.normal_errors:
            if kind == "prediction" and self.sigma is not None:
                se = np.sqrt(se**2 + self.sigma**2)
            return eta - q * se, eta + q * se
        if kind == "confidence":
            lower, upper = eta - q * se, eta + q * se
            return (lower, upper) if scale == "link" else (family.inverse_link(lower), family.inverse_link(upper))
        rng = np.random.default_rng(self.seed)
        alpha = (1 - level) / 2
        lower, upper = np.empty(design.n), np.empty(design.n)
        step = max(1, 2_000_000 // PREDICTION_DRAWS)
        for start in range(0, design.n, step):
            rows = slice(start, min(start + step, design.n))
            draws = eta[rows] + se[rows] * rng.standard_normal((PREDICTION_DRAWS, len(eta[rows])))
            trials = None if design.trials is None else design.trials[rows]
            y = family.sample(rng, family.inverse_link(draws), trials, self.sigma)
            lower[rows], upper[rows] = np.quantile(y, [alpha, 1 - alpha], axis=0)
        return lower, upper

    def linear_predictor_draws(self, design: RowDesign, max_draws: int) -> np.ndarray | None:
        """``R theta_d`` (+ offset) for evenly thinned parameter draws ``theta_d``."""
        draws = self.draws
        if draws is None:
            return None
        return self.layout.eta_draws(design, draws[thin_draws(len(draws), max_draws)], slice(None))

    def linear_predictor_gaussian(self, design: RowDesign) -> tuple[sparse.csr_matrix, GaussianCoefficients] | None:
        gaussian = self.gaussian
        return None if gaussian is None else (self.layout_row_matrix(design), gaussian)

    def layout_row_matrix(self, design: RowDesign) -> sparse.csr_matrix:
        """Sparse ``R`` with ``eta = R @ theta`` for the rows of ``design``."""
        return self.layout.row_matrix(design)


def save_uncertainty(uncertainty: Uncertainty, state: StateWriter) -> None:
    """Write a saved-as-is uncertainty strategy (none, exact Gaussian, or draws)."""
    if isinstance(uncertainty, NoUncertainty):
        state.put("uncertainty", "none")
    elif isinstance(uncertainty, ExactGaussian):
        g = uncertainty.coefficients
        state.put("uncertainty", "exact")
        state.put_sparse("gaussian_K", g.K)
        state.put_array("gaussian_cov", g.cov)
        state.put("gaussian_df", g.df)
    elif isinstance(uncertainty, PosteriorDraws):
        d = uncertainty.values
        state.put("uncertainty", "draws")
        state.put_array("draws_theta", d.theta)
        state.put("draws_dispersion", d.dispersion is not None)
        state.put_array("draws_dispersion_values", d.dispersion if d.dispersion is not None else np.zeros(0))
    else:
        raise PersistenceError(
            f"Engine uncertainty {type(uncertainty).__name__} is regenerated, not saved: the engine's save must call "
            "save_linear(state, uncertainty=False) and its load rebuild it."
        )


def load_uncertainty(state: StateReader, size: int) -> Uncertainty:
    """The strategy :func:`save_uncertainty` wrote, its shapes checked against ``size`` parameters."""
    kind = state.get_str("uncertainty")
    if kind == "none":
        return NoUncertainty()
    if kind == "exact":
        K, cov = state.get_sparse("gaussian_K"), state.get_array("gaussian_cov", ndim=2)
        if K.shape[0] != size or cov.shape != (K.shape[1], K.shape[1]):
            raise state.fail(f"the Gaussian coefficients have shapes {K.shape} and {cov.shape} for {size} parameters")
        return ExactGaussian(GaussianCoefficients(K, cov, state.get_float("gaussian_df")))
    if kind == "draws":
        theta = state.get_array("draws_theta", ndim=2)
        if theta.shape[1] != size:
            raise state.fail(f"the draws have {theta.shape[1]} parameters, not {size}")
        # one dispersion per draw, or per ensemble member (neural): the engine reads it
        dispersion = state.get_array("draws_dispersion_values", ndim=1) if state.get_bool("draws_dispersion") else None
        return PosteriorDraws(Draws(theta, dispersion))
    raise state.fail(f"unknown uncertainty {kind!r}")


def _term_covariance(table: pd.DataFrame, level: str, coefficients: tuple[str, ...]) -> np.ndarray | None:
    """A term's covariance matrix from variance-component rows; ``None`` if the level has none."""
    rows = table[table["level"] == level]
    if rows.empty:
        return None
    k = len(coefficients)
    cov = np.zeros((k, k))
    for _, r in rows.iterrows():
        if r["term1"] not in coefficients:
            continue
        i = coefficients.index(r["term1"])
        if r["term2"] == "":
            cov[i, i] = r["variance"]
        elif r["term2"] in coefficients:
            j = coefficients.index(r["term2"])
            cov[i, j] = cov[j, i] = r["variance"]
    return cov
