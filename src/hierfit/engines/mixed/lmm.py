"""Exact REML/ML linear mixed models from sufficient statistics (lme4's formulation).

:func:`fit_lmm` makes one pass over the data to gather grouped cross-products
(:mod:`._suffstats`), then optimises lme4's profiled criterion over ``theta`` with an
exact gradient (:mod:`._gradient`, :mod:`._optim`); each evaluation costs O(number of
random effects) whatever the number of rows.

Structure (:mod:`._blocks`, :mod:`._factor`): nested grouping factors form a chain that is
eliminated leaf-first with batched small dense algebra, O(q) per evaluation.  Factors
crossed with that chain are gathered into one dense "root" block (dense Cholesky of size
``q_root``), which is fine while the chain's coupling to it is small.  Large crossed
designs (store x product, user x item) use :mod:`._crossed` instead: the largest factor
block diagonal, its coupling to the others sparse, only the rest dense (MixedModels.jl).

Results follow lme4 conventions: ``theta`` (relative Cholesky factor), ``sigma``, ``vcov``
of the fixed effects, conditional modes and conditional SDs (given beta, as
``ranef(condVar = TRUE)``), logLik / AIC / BIC and the ``isSingular`` rule.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg as sla
from scipy import stats

from ._blocks import DENSE_ROOT_WARN, Plan, RandomBlock, make_plan
from ._crossed import CrossedSystem, blocked_cost, crossed_cost, crossed_criterion_and_gradient, crossed_plan, moment_start
from ._factor import Factorization, System
from ._gradient import criterion_and_gradient
from ._optim import minimize_theta
from ._standardize import Standardization, standardize
from ._suffstats import ColumnAffine, compute_rows, make_layout
from ._theta import ThetaSpec, profiled_criterion, sd_and_correlation

__all__ = [
    "LmmDevfun",
    "LmmSolution",
    "OptSummary",
    "RandomBlock",
    "devfun_from_system",
    "draw_effects",
    "evaluated_at",
    "fit_lmm",
    "likelihood_ratio_test",
    "lmm_devfun",
    "lmm_solution",
    "optimize_lmm",
    "standardization_maps",
]

#: lme4's isSingular tolerance on bounded (diagonal) theta elements.
SINGULAR_TOL = 1e-4

#: Either elimination of the mixed-model equations: blocked (nested chain, dense root) or
#: crossed (block-diagonal first factor, sparse coupling, dense rest).
MixedSystem = System | CrossedSystem

#: Below this many multiply-adds an evaluation is cheap either way, and the blocked
#: elimination (the one every nested model uses) is kept.
CROSSED_MIN_COST = 1e8

#: Multiply-adds of one evaluation above which a slow-fit warning is issued (~10 s here).
SLOW_EVALUATION_COST = 4e11


def choose_solver(plan: Plan, solver: str = "auto") -> tuple[str, Plan]:
    """Pick the elimination for ``plan``: ``"blocked"`` or ``"crossed"`` and the plan it uses.

    ``"auto"`` takes the crossed elimination when the plan has crossed factors and it costs
    less than the blocked one by the multiply-adds of one evaluation (the blocked root update
    is ``m_0 q_root^2``, the crossed dense block ``q_rest^3 / 3``).
    """
    if solver not in ("auto", "blocked", "crossed"):
        raise ValueError(f"solver must be 'auto', 'blocked' or 'crossed', got {solver!r}")
    if solver == "blocked" or not plan.root or len(plan.factors) < 2:
        return "blocked", plan
    if solver == "auto":
        dense, sparse = blocked_cost(plan), crossed_cost(plan)
        if dense < CROSSED_MIN_COST or dense <= sparse:
            return "blocked", plan
    return "crossed", crossed_plan(plan)


def _warn_if_slow(plan: Plan, kind: str) -> None:
    cost = crossed_cost(plan) if kind == "crossed" else blocked_cost(plan)
    q = sum(plan.factors[f].m * plan.factors[f].K for f in plan.root)
    if cost > SLOW_EVALUATION_COST and q > DENSE_ROOT_WARN:
        warnings.warn(
            f"crossed random effects leave a dense block of {q} columns (O(q^3) = {cost:.1e} "
            f"multiply-adds per likelihood evaluation); fitting may take minutes (only the factor "
            f"with the most levels is eliminated sparsely; every other factor is in that block).",
            RuntimeWarning, stacklevel=4)


_BLAS_CONTROLLER: list[object] = []  # lazily created threadpoolctl controller (cached)


def _single_thread_blas() -> contextlib.AbstractContextManager[object]:
    """Limit BLAS to one thread while optimising, if threadpoolctl is installed.

    Every BLAS call during the optimisation is tiny (scipy's L-BFGS-B works on vectors of
    length ``len(theta)``); waking a thread pool for each one costs far more than the work,
    dramatically so on a loaded machine (measured: 100x slower L-BFGS-B on 2 busy cores).
    The controller is built once per process: scanning the loaded libraries is the
    expensive part (~50 ms).
    """
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - optional speed-up
        return contextlib.nullcontext()
    if not _BLAS_CONTROLLER:
        _BLAS_CONTROLLER.append(ThreadpoolController())
    ctl = _BLAS_CONTROLLER[0]
    return ctl.limit(limits=1, user_api="blas")  # type: ignore[attr-defined]


def _blas_for(sysm: MixedSystem) -> contextlib.AbstractContextManager[object]:
    """One BLAS thread for the blocked elimination's tiny calls; the crossed one's dense
    block is a large Cholesky factor and inverse, which use every thread it is given."""
    return contextlib.nullcontext() if isinstance(sysm, CrossedSystem) else _single_thread_blas()


@dataclass(frozen=True)
class LmmSolution:
    """A fitted linear mixed model (lme4 conventions; terms in caller order).

    Attributes
    ----------
    beta, vcov_beta, se_beta : numpy.ndarray
        Fixed effects, ``sigma^2 (R_X' R_X)^{-1}`` (lme4's ``vcov``) and its root diagonal.
    theta, theta_lower : numpy.ndarray
        Relative Cholesky parameters (per term, lower triangle column-wise) and bounds.
    theta_entries : tuple of (int, int, int)
        (term, row, column) of each theta element.
    sigma : float
        Residual SD (``r^2/(n-p)`` under REML, ``r^2/n`` under ML).
    covariances, sds, correlations : list of numpy.ndarray
        Per term: ``k x k`` covariance (absolute scale), SDs, correlation matrix.
    ranef, ranef_condsd : list of numpy.ndarray
        Per term: ``(n_groups, k)`` conditional modes and conditional SDs (given beta).
    ranef_condcov : list of numpy.ndarray
        Per term: ``(n_groups, k, k)`` conditional covariances.
    loglik, objective : float
        Log-likelihood (REML log-likelihood for REML fits) and the minimised criterion.
    reml_criterion, deviance : float or None
        The criterion under REML, resp. ``-2 loglik`` under ML (the other is None).
    aic, bic : float
    n_obs, n_params : int
        Rows; parameters counted as lme4 (``p + len(theta) + 1``).
    reml, converged, singular : bool
    singular_terms : list of (int, int)
        (term, column) pairs whose diagonal theta is below ``1e-4`` (lme4's isSingular):
        a variance at 0 for column 0, or for a later column of a correlated term a
        covariance matrix of reduced rank (e.g. a correlation at +-1).
    message : str
    n_evaluations : int
    timings : dict of str -> float
        Wall seconds of the phases: ``data_pass``, ``optimize``, ``finalize``.
    optsum : OptSummary
        The optimisation's record (standardised coordinates).
    log_weights : float
        ``sum(log w)`` of the prior weights over the rows with ``w > 0`` (0 without weights).
    """

    beta: np.ndarray
    vcov_beta: np.ndarray
    se_beta: np.ndarray
    theta: np.ndarray
    theta_lower: np.ndarray
    theta_entries: tuple[tuple[int, int, int], ...]
    sigma: float
    covariances: list[np.ndarray]
    sds: list[np.ndarray]
    correlations: list[np.ndarray]
    ranef: list[np.ndarray]
    ranef_condsd: list[np.ndarray]
    ranef_condcov: list[np.ndarray]
    loglik: float
    objective: float
    reml_criterion: float | None
    deviance: float | None
    aic: float
    bic: float
    n_obs: int
    n_params: int
    reml: bool
    converged: bool
    message: str
    n_evaluations: int
    singular: bool
    singular_terms: list[tuple[int, int]]
    timings: dict[str, float]
    optsum: OptSummary
    log_weights: float
    _system: MixedSystem = field(repr=False, compare=False)
    _fz: Factorization = field(repr=False, compare=False)
    _u: list[np.ndarray] = field(repr=False, compare=False)
    _term_map: list[tuple[int, int, int, int]] = field(repr=False, compare=False)
    _factor_T: list[np.ndarray] = field(repr=False, compare=False)
    _std: Standardization = field(repr=False, compare=False)
    _beta_t: np.ndarray = field(repr=False, compare=False)
    _sigma_t: float = field(repr=False, compare=False)

    def sample_effects(self, n_draws: int, rng: np.random.Generator
                       ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Draw ``(beta, b)`` jointly from their conditional Gaussian given theta and sigma.

        The covariance is ``sigma^2`` times the inverse of the full mixed-model-equations
        matrix (the flat-prior posterior, as ``arm::sim``), so draws of sums such as
        ``beta_0 + b_market + b_submarket`` carry all correlations.

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
        return draw_effects(self._system, self._fz, self._std, self._beta_t, self._u,
                            self._sigma_t, self._iter_terms(), self._factor_T, n_draws, rng)

    def _iter_terms(self) -> list[tuple[int, int, int, int, int]]:
        """Per term: (level, root segment, first factor column, k, factor id)."""
        return [(lvl, seg, c0, k, _factor_of(self._system, lvl, seg))
                for lvl, seg, c0, k in self._term_map]


def draw_effects(sysm: MixedSystem, fz: Factorization, std: Standardization, beta_t: np.ndarray,
                 u: list[np.ndarray], sigma_t: float,
                 terms: list[tuple[int, int, int, int, int]], factor_T: list[np.ndarray],
                 n_draws: int, rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
    """Joint Gaussian draws of ``(beta, b)`` with covariance ``sigma_t^2`` times the inverse of
    the full mixed-model-equations matrix factorised in ``fz`` (see ``LmmSolution.sample_effects``).

    ``u`` are the per-level spherical modes ``(m, K)`` and ``terms`` lists per term (level,
    root segment, first factor column, k, factor id); the GLMM core reuses this with its
    penalised-IRLS system at the mode and ``sigma_t = 1``.
    """
    p = beta_t.size
    d = int(n_draws)
    # Solve L_full' x = z with L_full' = [[L', R_ZX], [0, R_X]]: x ~ N(0, (L_full L_full')^-1).
    z_beta = rng.standard_normal((p, d))
    x_beta = sla.solve_triangular(fz.LM[:p, :p], z_beta, lower=True, trans="T")
    rhs = []
    for i in range(sysm.n_random):
        m, K = fz.L[i].shape[:2]
        z = rng.standard_normal((m, K, d))
        rhs.append(z - fz.G[i][:, :, -(p + 1):-1] @ x_beta)
    x_u = sysm.back_solve(fz, rhs)
    # Draws in the standardised coordinates of the system, then mapped back.
    beta_draws = std.beta(beta_t[None, :] + sigma_t * x_beta.T)
    u_draws = [u[i][..., None] + sigma_t * x_u[i] for i in range(sysm.n_random)]
    b_draws = []
    for t, (f_lvl, f_seg, c0, k, fac) in enumerate(terms):
        uf = _factor_u(sysm, u_draws, f_lvl, f_seg)  # (m, K, d)
        bf = np.transpose((factor_T[fac] @ uf)[:, c0:c0 + k, :], (2, 0, 1))
        b_draws.append(np.ascontiguousarray(std.ranef(t, bf)))
    return beta_draws, b_draws


def _factor_of(sysm: MixedSystem, lvl: int, seg: int) -> int:
    """Factor id held by a chain level, or by segment ``seg`` of the root."""
    if lvl < sysm.n_chain:
        return sysm.plan.chain[lvl]
    return sysm.plan.root[seg]


def _factor_u(sysm: MixedSystem, u: list[np.ndarray], lvl: int, seg: int) -> np.ndarray:
    """Random effects of one factor as ``(m, K, d)`` from level-wise solutions."""
    if lvl < sysm.n_chain:
        return u[lvl]
    s = [sg for sg in sysm.layout.segments if sg.start >= sysm.layout.offsets[lvl]][seg]
    r0 = s.start - sysm.layout.offsets[lvl]
    return u[lvl][0, r0:r0 + s.m * s.K].reshape(s.m, s.K, -1)


def _factor_condcov(sysm: MixedSystem, diag: list[np.ndarray], lvl: int, seg: int) -> np.ndarray:
    """Diagonal ``(m, K, K)`` blocks of ``A^{-1}`` for one factor."""
    if lvl < sysm.n_chain:
        return diag[lvl]
    s = [sg for sg in sysm.layout.segments if sg.start >= sysm.layout.offsets[lvl]][seg]
    r0 = s.start - sysm.layout.offsets[lvl]
    sub = diag[lvl][0, r0:r0 + s.m * s.K, r0:r0 + s.m * s.K].reshape(s.m, s.K, s.m, s.K)
    g = np.arange(s.m)
    return sub[g, :, g, :]


@dataclass(frozen=True, eq=False)
class LmmDevfun:
    """lme4's ``mkLmerDevfun``: the profiled criterion of one data set as a function of theta.

    Built by :func:`lmm_devfun` after the one pass over the rows; each call costs O(random
    effects).  It works in the *standardised* coordinates of :mod:`._standardize` (``theta_t``);
    :meth:`standardized_theta` and the solution map to and from the caller's.

    Attributes
    ----------
    system : System or CrossedSystem
        Sufficient statistics and elimination plan.
    spec : ThetaSpec
        Where theta sits in each term's relative covariance factor.
    std : Standardization
        The column maps the statistics were gathered under.
    blocks : tuple of RandomBlock
        The random-effects terms.
    n, p : int
        Rows and population columns.
    reml : bool
        REML criterion (else ML deviance).
    data_seconds : float
        Wall time of the data pass.
    log_weights : float
        ``sum(log w)`` over the rows that carry likelihood (0 without prior weights): the
        Jacobian of residual variances ``sigma^2 / w`` in the reported criterion.
    """

    system: MixedSystem
    spec: ThetaSpec
    std: Standardization
    blocks: tuple[RandomBlock, ...]
    n: int
    p: int
    reml: bool
    data_seconds: float
    log_weights: float = 0.0

    def __call__(self, theta_t: np.ndarray) -> float:
        """The criterion at standardised ``theta_t`` (``inf`` where the system is not positive definite)."""
        try:
            fz = self.system.factorize(self.spec.factor_T(theta_t, self.system.plan))
        except np.linalg.LinAlgError:
            return np.inf
        return profiled_criterion(fz, self.n, self.p, self.reml)

    def value_and_gradient(self, theta_t: np.ndarray) -> tuple[float, np.ndarray]:
        """The criterion and its exact gradient at standardised ``theta_t``."""
        try:
            if isinstance(self.system, CrossedSystem):
                return crossed_criterion_and_gradient(self.system, self.spec, theta_t, self.n, self.p, self.reml)
            return criterion_and_gradient(self.system, self.spec, theta_t, self.n, self.p, self.reml)
        except np.linalg.LinAlgError:
            return np.inf, np.zeros(self.spec.size)

    @property
    def lower(self) -> np.ndarray:
        """Bounds of theta (0 on diagonals of the factors, free elsewhere)."""
        return self.spec.lower

    def standardized_theta(self, theta: np.ndarray) -> np.ndarray:
        """Theta in the standardised coordinates from theta in the caller's."""
        theta = np.asarray(theta, dtype=float)
        if theta.shape != (self.spec.size,):
            raise ValueError(f"theta must have {self.spec.size} elements; got shape {theta.shape}")
        return _theta_standardized(self.spec, self.std, theta)


@dataclass(frozen=True)
class OptSummary:
    """The record of one optimisation of the criterion (MixedModels.jl's ``optsum``).

    Attributes
    ----------
    initial, final : numpy.ndarray
        Starting and final theta in the standardised coordinates of the devfun.
    fmin : float
        Criterion at ``final``.
    converged : bool
        Whether the optimiser's checks passed (see :mod:`._optim`).
    message : str
        What the optimiser said (or why it was not run).
    n_evaluations : int
        Criterion evaluations.
    optimizer : str
        ``"L-BFGS-B (analytic gradient)"``, ``"L-BFGS-B (finite differences)"`` or
        ``"none"`` (evaluated at the start).
    seconds : float
        Wall time of the optimisation.
    """

    initial: np.ndarray
    final: np.ndarray
    fmin: float
    converged: bool
    message: str
    n_evaluations: int
    optimizer: str
    seconds: float


def lmm_devfun(X: np.ndarray, y: np.ndarray, blocks: Sequence[RandomBlock], *, reml: bool = True,
               weights: np.ndarray | None = None, solver: str = "auto") -> LmmDevfun:
    """Gather the sufficient statistics in one pass and return the criterion (``mkLmerDevfun``).

    Parameters
    ----------
    X : numpy.ndarray
        ``(n, p)`` fixed-effects model matrix (full column rank).
    y : numpy.ndarray
        ``(n,)`` response.
    blocks : sequence of RandomBlock
        Random-effects terms.  Their order defines the order of ``theta`` and results.
    reml : bool, default True
        REML criterion (True) or ML deviance.
    weights : numpy.ndarray, optional
        ``(n,)`` prior weights (lmer's ``weights``): row ``i`` has residual variance
        ``sigma^2 / w_i``.  Rows of weight 0 are left out of the likelihood (R's ``lm``; lme4
        itself returns ``logLik = -Inf`` for them), which equals dropping those rows.
    solver : {"auto", "blocked", "crossed"}, default "auto"
        Elimination of the mixed-model equations (:func:`choose_solver`); both give the
        same fit to rounding.

    Returns
    -------
    LmmDevfun

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> g = np.repeat(np.arange(10), 8)
    >>> y = rng.normal(size=10)[g] + rng.normal(size=80)
    >>> devfun = lmm_devfun(np.ones((80, 1)), y, [RandomBlock(g, 10, np.ones((80, 1)))])
    >>> bool(devfun(np.array([0.5])) < devfun(np.array([0.01])))
    True
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).ravel()
    if X.ndim != 2 or X.shape[0] != y.size:
        raise ValueError("X must be (n, p) and y (n,)")
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(X))):
        raise ValueError("X and y must be finite (drop missing rows first)")
    n, p = X.shape
    w, log_weights = _prior_weights(weights, n)
    blocks = tuple(blocks)
    t0 = time.perf_counter()
    plan, _ = make_plan(blocks, n, warn=False)
    kind, plan = choose_solver(plan, solver)
    _warn_if_slow(plan, kind)
    if w is not None:
        n = int(np.count_nonzero(w))  # rows that carry likelihood
    # The statistics are those of centred and scaled columns (see _standardize): raw
    # cross-products of a large-mean outcome lose every digit the variances depend on.
    std = standardize(X, y, [[blk.column(a) for a in range(blk.k)] for blk in blocks],
                      [blk.correlated for blk in blocks])
    xy_map, factor_maps = standardization_maps(std, plan)
    sysm: MixedSystem
    if kind == "crossed":
        sysm = CrossedSystem.from_data(X, y, plan, p, xy_map, factor_maps, w)
    else:
        layout = make_layout(plan, p)
        sysm = System(plan, layout, compute_rows(X, y, plan, layout, xy_map, factor_maps, weights=w))
    return devfun_from_system(sysm, blocks, std, n, p, reml=reml, data_seconds=time.perf_counter() - t0,
                              log_weights=log_weights)


def standardization_maps(std: Standardization, plan: Plan) -> tuple[ColumnAffine, list[ColumnAffine]]:
    """The ``(center, scale)`` maps of ``[X y]`` and of each factor's columns that the data pass
    applies (:func:`._suffstats.compute_rows`)."""
    xy_map = (np.append(std.x.center, std.y_center), np.append(std.x.scale, std.y_scale))
    return xy_map, [_factor_map(std, fac.blocks) for fac in plan.factors]


def devfun_from_system(sysm: MixedSystem, blocks: Sequence[RandomBlock], std: Standardization, n: int, p: int, *,
                       reml: bool, data_seconds: float, log_weights: float = 0.0) -> LmmDevfun:
    """The criterion of already gathered statistics (from one pass over rows in memory, or the
    merged passes over a streamed source: :mod:`._stream`).

    ``blocks`` give the terms' structure (their order, sizes and correlation); ``n`` counts the
    rows that carry likelihood.
    """
    _check_fixed_rank(sysm.raw_rows[-1][0], p)
    return LmmDevfun(sysm, ThetaSpec.from_blocks(blocks), std, tuple(blocks), n, p, reml, data_seconds, log_weights)


def _prior_weights(weights: np.ndarray | None, n: int) -> tuple[np.ndarray | None, float]:
    """Validated prior weights (``None`` for unit weights) and ``sum(log w)`` over ``w > 0``."""
    if weights is None:
        return None, 0.0
    w = np.asarray(weights, dtype=np.float64).ravel()
    if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0) or not np.any(w > 0):
        raise ValueError("weights must be (n,), finite, non-negative and not all zero")
    return w, float(np.sum(np.log(w[w > 0])))


def optimize_lmm(devfun: LmmDevfun, *, start_theta: np.ndarray | None = None, maxiter: int = 1000,
                 n_starts: int = 1, seed: int = 0, gradient: str = "analytic") -> OptSummary:
    """Minimise the criterion over theta within lme4's bounds (``optimizeLmer``).

    Parameters
    ----------
    devfun : LmmDevfun
        From :func:`lmm_devfun`.
    start_theta : numpy.ndarray, optional
        Start in the caller's coordinates (default: lme4's identity start, standardised; the
        crossed elimination starts from moment estimates, :func:`._crossed.moment_start`).
    maxiter : int, default 1000
        Iteration cap of the optimiser.
    n_starts : int, default 1
        Extra random restarts (seeded by ``seed``) used when > 1; the best optimum wins.
    seed : int, default 0
        Seed of the restarts.
    gradient : {"analytic", "fd"}, default "analytic"
        Exact gradient of the profiled criterion, or central finite differences.
    """
    if gradient not in ("analytic", "fd"):
        raise ValueError("gradient must be 'analytic' or 'fd'")
    spec = devfun.spec
    if start_theta is not None:
        x0 = devfun.standardized_theta(start_theta)
    elif isinstance(devfun.system, CrossedSystem):
        x0 = moment_start(devfun.system, spec)
    else:
        x0 = spec.start()
    # For each diagonal theta: the theta entries below it in the same column of its T.
    below = {d: [t for t, (bt, it, jt) in enumerate(spec.entries) if bt == b and jt == j and it > j]
             for d, (b, i, j) in enumerate(spec.entries) if i == j}
    t0 = time.perf_counter()
    with _blas_for(devfun.system):
        opt = minimize_theta(devfun, x0, spec.lower, maxiter=maxiter, n_starts=n_starts, seed=seed, below=below,
                             grad=devfun.value_and_gradient if gradient == "analytic" else None)
    optimizer = "L-BFGS-B (analytic gradient)" if gradient == "analytic" else "L-BFGS-B (finite differences)"
    return OptSummary(np.maximum(x0, spec.lower), opt.theta, opt.fun, opt.converged, opt.message,
                      opt.n_evaluations, optimizer, time.perf_counter() - t0)


def evaluated_at(devfun: LmmDevfun, theta: np.ndarray | None = None) -> OptSummary:
    """An :class:`OptSummary` for the criterion evaluated, not optimised, at ``theta`` (caller's
    coordinates; default lme4's identity start in the standardised coordinates)."""
    x = devfun.spec.start() if theta is None else devfun.standardized_theta(theta)
    x = np.maximum(x, devfun.lower)
    return OptSummary(x, x, devfun(x), True, "evaluated at start_theta (not optimised)", 1, "none", 0.0)


def lmm_solution(devfun: LmmDevfun, optsum: OptSummary) -> LmmSolution:
    """Every reported quantity at the optimum (``mkMerMod``), in the caller's coordinates."""
    with _blas_for(devfun.system):
        return _assemble(devfun.system, devfun.spec, devfun.std, devfun.n, devfun.p, devfun.reml, devfun.data_seconds, optsum,
                         devfun.log_weights)


def fit_lmm(X: np.ndarray, y: np.ndarray, blocks: Sequence[RandomBlock], *,
            reml: bool = True, weights: np.ndarray | None = None, start_theta: np.ndarray | None = None,
            maxiter: int = 1000, n_starts: int = 1, seed: int = 0,
            optimize: bool = True, gradient: str = "analytic", solver: str = "auto") -> LmmSolution:
    """Fit a linear mixed model by REML or ML: :func:`lmm_devfun` → :func:`optimize_lmm` → :func:`lmm_solution`.

    Parameters
    ----------
    X, y, blocks, reml, weights, solver
        As :func:`lmm_devfun`.
    start_theta, maxiter, n_starts, seed, gradient
        As :func:`optimize_lmm`.
    optimize : bool, default True
        False evaluates everything at ``start_theta`` (e.g. to profile or to reuse a fit).

    Returns
    -------
    LmmSolution
        The fit; ``converged`` is False (with ``message``) when the optimiser failed.
    """
    devfun = lmm_devfun(X, y, blocks, reml=reml, weights=weights, solver=solver)
    if optimize:
        optsum = optimize_lmm(devfun, start_theta=start_theta, maxiter=maxiter, n_starts=n_starts, seed=seed,
                              gradient=gradient)
    else:
        optsum = evaluated_at(devfun, start_theta)
    return lmm_solution(devfun, optsum)


def _factor_map(std: Standardization, block_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(center, scale)`` of a factor's columns: its terms' maps side by side."""
    maps = [std.z[b] for b in block_ids]
    return np.concatenate([m.center for m in maps]), np.concatenate([m.scale for m in maps])


def _theta_standardized(spec: ThetaSpec, std: Standardization, theta: np.ndarray) -> np.ndarray:
    """Theta in the standardised coordinates from theta in the caller's."""
    Ts = [std.term_T_standardized(b, T) for b, T in enumerate(spec.block_T(theta))]
    return np.array([Ts[b][i, j] for b, i, j in spec.entries])


def _check_fixed_rank(xy_cross: np.ndarray, p: int) -> None:
    """Refuse a rank-deficient X (lme4 drops columns; the design layer must do that)."""
    xtx = xy_cross[:p, :p]
    if p == 0:
        return
    d = np.sqrt(np.maximum(np.diag(xtx), 1e-300))
    ev = np.linalg.eigvalsh(xtx / np.outer(d, d))
    if ev[0] <= 1e-10 * ev[-1]:
        raise ValueError("the fixed-effects matrix X is rank deficient (or has a zero column)")


def _assemble(sysm: MixedSystem, spec: ThetaSpec, std: Standardization, n: int, p: int, reml: bool,
              data_seconds: float, optsum: OptSummary, log_weights: float = 0.0) -> LmmSolution:
    """Compute every reported quantity at the optimum, in the caller's coordinates.

    Everything comes from the sufficient statistics in ``sysm`` and the optimum (no rows), so
    a saved fit rebuilds its solution exactly from them (``engines/mixed/_persist.py``). The
    system holds standardised columns: quantities are computed there (suffix ``_t``) and
    mapped back by ``std``.
    """
    theta_t = optsum.final
    t0 = time.perf_counter()
    plan = sysm.plan
    fT = spec.factor_T(theta_t, plan)
    fz = sysm.factorize(fT, keep=True)
    # prior weights scale each row's residual variance to sigma^2 / w: their Jacobian
    obj = std.criterion(profiled_criterion(fz, n, p, reml), n, reml) - log_weights
    LM = fz.LM
    RXt = LM[:p, :p]
    beta_t = sla.solve_triangular(RXt, LM[p, :p], lower=True, trans="T") if p else np.zeros(0)
    r2 = float(LM[p, p]) ** 2
    sigma_t = float(np.sqrt(r2 / (n - p if reml else n)))
    sigma = std.y_scale * sigma_t
    rx_inv = sla.solve_triangular(RXt, np.eye(p), lower=True) if p else np.zeros((0, 0))
    vcov = std.vcov(sigma_t ** 2 * (rx_inv.T @ rx_inv))
    c = np.concatenate([-beta_t, [1.0]])
    u = sysm.back_solve(fz, [G[:, :, -(p + 1):] @ c[:, None] for G in fz.G])
    diag = sysm.diag_inverse(fz)
    # Where each term lives: (level, root segment, first column in factor, k).
    term_map: list[tuple[int, int, int, int]] = []
    bT = spec.block_T(theta_t)
    covs, sds, cors, modes, condsd, condcov = [], [], [], [], [], []
    theta = np.empty_like(theta_t)
    for b, k in enumerate(spec.block_k):
        f = next(i for i, fac in enumerate(plan.factors) if b in fac.blocks)
        fac = plan.factors[f]
        c0 = fac.col_offsets[fac.blocks.index(b)]
        if f in plan.chain:
            lvl, seg = plan.chain.index(f), 0
        else:
            lvl, seg = sysm.n_chain, plan.root.index(f)
        term_map.append((lvl, seg, c0, k))
        T = std.term_T(b, bT[b])
        for t, (bt, i, j) in enumerate(spec.entries):
            if bt == b:
                theta[t] = T[i, j]
        cov = sigma ** 2 * (T @ T.T)
        sd, cor = sd_and_correlation(cov)
        covs.append(cov)
        sds.append(sd)
        cors.append(cor)
        bf = (fT[f] @ _factor_u(sysm, u, lvl, seg))[:, c0:c0 + k, 0]
        cc = sigma_t ** 2 * (fT[f] @ _factor_condcov(sysm, diag, lvl, seg) @ fT[f].T)
        cc = std.ranef_cov(b, cc[:, c0:c0 + k, c0:c0 + k])
        modes.append(std.ranef(b, bf))
        condcov.append(cc)
        condsd.append(np.sqrt(np.diagonal(cc, axis1=1, axis2=2)))
    loglik = -0.5 * obj
    n_params = p + spec.size + 1
    # isSingular's rule, judged in the standardised coordinates so that the verdict does
    # not depend on the units of the predictors.
    sing = [(b, i) for val, (b, i, j), lo in zip(theta_t, spec.entries, spec.lower)
            if lo == 0.0 and val < SINGULAR_TOL]
    timings = {"data_pass": data_seconds, "optimize": optsum.seconds, "finalize": time.perf_counter() - t0}
    return LmmSolution(
        beta=std.beta(beta_t), vcov_beta=vcov, se_beta=np.sqrt(np.diag(vcov)), theta=theta,
        theta_lower=spec.lower.copy(), theta_entries=spec.entries, sigma=sigma,
        covariances=covs, sds=sds, correlations=cors, ranef=modes, ranef_condsd=condsd,
        ranef_condcov=condcov, loglik=loglik, objective=obj,
        reml_criterion=obj if reml else None, deviance=None if reml else obj,
        aic=obj + 2.0 * n_params, bic=obj + np.log(n) * n_params, n_obs=n,
        n_params=n_params, reml=reml, converged=optsum.converged, message=optsum.message,
        n_evaluations=optsum.n_evaluations, singular=bool(sing), singular_terms=sing, timings=timings, optsum=optsum,
        log_weights=log_weights,
        _system=sysm, _fz=fz, _u=[ui[..., 0] for ui in u], _term_map=term_map,
        _factor_T=fT, _std=std, _beta_t=beta_t, _sigma_t=sigma_t)


def likelihood_ratio_test(sol_small: LmmSolution, sol_big: LmmSolution
                          ) -> tuple[float, int, float]:
    """Likelihood-ratio test of nested models (both ML, or REML with equal fixed effects).

    Returns
    -------
    tuple of (float, int, float)
        Chi-square statistic, degrees of freedom and p-value.  For a variance on the
        boundary the p-value is conservative (lme4's ``anova`` reports the same).
    """
    if sol_small.reml != sol_big.reml:
        raise ValueError("both fits must use the same criterion")
    if sol_small.reml and sol_small.beta.size != sol_big.beta.size:
        raise ValueError("REML fits are comparable only with identical fixed effects")
    stat = max(0.0, 2.0 * (sol_big.loglik - sol_small.loglik))
    df = sol_big.n_params - sol_small.n_params
    return stat, df, float(stats.chi2.sf(stat, df)) if df > 0 else float("nan")
