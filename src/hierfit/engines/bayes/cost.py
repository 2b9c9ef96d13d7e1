"""Which gaussian likelihood the ``pymc`` engine runs: a cost model over the problem's sizes.

Four ways to sample the same posterior, with predicted wall time
``setup + iterations × leapfrogs × (gradient + step)`` on one core per chain:

=====================  ================================================================  ===========
choice                 gradient (s)                                                      leapfrogs
=====================  ================================================================  ===========
``marginal`` / tree    ``a0 + a1 L + a2 L² + a3 Σ_l G_l K_l (K_l + A_l + d_B)²``           ``LEAP_MARGINAL``
``marginal`` / dense   ``b0 + b2 d_I² + b3 d_I³``                                         ``LEAP_MARGINAL``
``suffstats``          ``s0 + s2 d²`` (numpyro, JAX)                                      ``LEAP_FULL``
``rows``               ``r0 + r1 n (p + Σ k)`` (numpyro, JAX)                             ``LEAP_FULL``
=====================  ================================================================  ===========

``L`` levels (nested chain), ``G_l`` groups and ``K_l`` coefficients per group at level ``l``,
``A_l`` the coefficients of its ancestors, ``d_B`` the integrated population coefficients,
``d_I`` all integrated coefficients, ``d = p + q`` all coefficients, ``n`` rows. The marginal
models sample only the variance parameters (and non-normal-prior betas): few dimensions, short
trajectories; the others sample every coefficient (non-centred), longer ones.

Calibration (``PYTHONPATH=src python benchmarks/bayes_speed.py --calibrate``, 2026-12-02, this
project's 2-core machine shared with other jobs, one BLAS thread): best of repeated evaluations of
:func:`.pt_marginal.value_and_grad` on simulated trees of 1-3 levels, 10 to 50,000 groups, ``K``
1-2, ``p = 3`` (14 tree timings, 85 µs to 1.5 ms; 11 dense ones, d_I 13 to 1,503, 47 µs to
0.26 s), fitted by non-negative least squares on relative errors:

* tree: ``a = (0, 7e-5, 2.1e-5, 1.6e-9)`` (model within 25% of every timing: 86 µs at 1 level ×
  10 groups, 227 µs for the reference 10 × 5 tree, 1.55 ms for 1,000 × 20);
* dense: ``b = (4.6e-5, 1.4e-8, 7.2e-11)`` (163 µs at d_I = 73, 11 ms at 403, 0.26 s at 1,503);
* one in-process radon fit (4 chains × 2,000 iterations): 5.1 gradients per iteration
  (``LEAP_MARGINAL = 6`` leaves room for the 2-level trees) and 102 µs per leapfrog of PyMC
  beside the gradient, model build included (``STEP = 1e-4``; ``SETUP_PYMC = 4`` s for imports of
  the chain processes, compilation and the conditional draws);
* numpyro (JAX; the default sampler of ``rows``/``suffstats``), two fits of the reference model
  at 5,000 rows differing only in their draws (150 vs 600, 2 chains), load average ~10:
  17 µs per leapfrog for ``rows`` (``n (p + Σk) = 30,000``) and 33 µs for ``suffstats``
  (``d = 73``), 50-75 s of compilation and warm-up (``SETUP_JAX = 30`` s, the machine was
  loaded), ~25 leapfrogs per iteration on the non-centred full models once warm-up has adapted
  (``LEAP_FULL``); ``r = (1e-5, 2.5e-10)``, ``s = (3e-5, 1e-9)``.

The gradient constants hold to ~25%, the numpyro ones to a factor ~2 (loaded machine, few
fits); the choice only needs the ordering, which is far apart except near the tree/dense
cross-over (d_I ~ 100, both fast) and between ``rows`` and the dense marginal for crossed factors
of a few hundred coefficients. ``suffstats`` is not a candidate where its dense ``M`` would exceed ``SUFFSTATS_MAX_BYTES``.
Crossed (non-nested) factors keep a tree through their finest factor with the crossed terms'
coefficients in its dense border (:mod:`.crossed`; ``d_B`` then counts them, and the border's own
``d_B³`` factorisation is priced with the dense constant); the dense marginal is a candidate up to
:data:`MAX_MARGINAL_SIZE` integrated coefficients (its O(d³) gradient loses to sampling beyond).

Examples
--------
>>> size = ProblemSize(rows=919, population=2, integrated_population=2, terms=((85, 1),), levels=((85, 1),))
>>> choose_likelihood(size).likelihood, choose_likelihood(size).algebra
('marginal', 'tree')
>>> crossed = ProblemSize(rows=100_000, population=2, integrated_population=2, terms=((3000, 1), (40, 1)), levels=None)
>>> choose_likelihood(crossed).likelihood
'rows'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the cost model itself is pure arithmetic on sizes
    from hierfit.engines.bayes.structure import BayesStructure
    from hierfit.engines.bayes.tree import TreeLayout

#: above this many integrated coefficients the O(d³) dense marginal likelihood is not a candidate
MAX_MARGINAL_SIZE = 1500
#: a dense W'ΩW larger than this (bytes) is not built for likelihood="suffstats" under "auto"
SUFFSTATS_MAX_BYTES = 2e8

TREE = (0.0, 7e-5, 2.1e-5, 1.6e-9)
DENSE = (4.6e-5, 1.4e-8, 7.2e-11)
ROWS = (1e-5, 2.5e-10)
SUFFSTATS = (3e-5, 1e-9)
STEP = 1e-4
SETUP_PYMC = 4.0
SETUP_JAX = 30.0
LEAP_MARGINAL = 6.0
LEAP_FULL = 25.0


@dataclass(frozen=True)
class ProblemSize:
    """The sizes the choice depends on.

    ``terms``: ``(groups, coefficients)`` per group-level term; ``levels``: ``(groups, K)`` per
    level of the nested chain, top first (``None``: no tree); ``crossed``: coefficients of crossed
    terms kept in the tree's dense border (:mod:`.crossed`).
    """

    rows: int
    population: int
    integrated_population: int
    terms: tuple[tuple[int, int], ...]
    levels: tuple[tuple[int, int], ...] | None
    crossed: int = 0

    @property
    def border(self) -> int:
        """Width of the tree's dense border: integrated population and crossed coefficients."""
        return self.integrated_population + self.crossed

    @property
    def q(self) -> int:
        return sum(g * k for g, k in self.terms)

    @property
    def integrated(self) -> int:
        return self.integrated_population + self.q


@dataclass(frozen=True)
class LikelihoodChoice:
    """What runs: ``likelihood`` and, for ``"marginal"``, its ``algebra`` (``"tree"``/``"dense"``),
    with the predicted seconds of every candidate considered."""

    likelihood: str
    algebra: str | None
    seconds: dict[str, float] = field(default_factory=dict)


def tree_gradient_seconds(levels: tuple[tuple[int, int], ...], border: int) -> float:
    """Predicted seconds of one tree-structured value and gradient (the border's own dense
    factorisation and inverse priced as the dense algebra's cubic term)."""
    a0, a1, a2, a3 = TREE
    units, above = 0, 0
    for g, k in levels:
        units += g * k * (k + above + border) ** 2
        above += k
    L = len(levels)
    return a0 + a1 * L + a2 * L * L + a3 * units + DENSE[2] * border**3


def dense_gradient_seconds(d_I: int) -> float:
    """Predicted seconds of one dense value and gradient."""
    b0, b2, b3 = DENSE
    return b0 + b2 * d_I**2 + b3 * d_I**3


def predicted_seconds(size: ProblemSize, iterations: int = 4000) -> dict[str, float]:
    """Predicted wall seconds of each candidate for ``iterations`` NUTS iterations per core
    (default: 4 chains × 2,000 on 2 cores = 4,000)."""
    out: dict[str, float] = {}
    marginal_steps = iterations * LEAP_MARGINAL
    if size.levels is not None:
        out["marginal/tree"] = SETUP_PYMC + marginal_steps * (tree_gradient_seconds(size.levels, size.border) + STEP)
    if size.integrated <= MAX_MARGINAL_SIZE:
        out["marginal/dense"] = SETUP_PYMC + marginal_steps * (dense_gradient_seconds(size.integrated) + STEP)
    d = size.population + size.q
    if 8.0 * d * d <= SUFFSTATS_MAX_BYTES:
        out["suffstats"] = SETUP_JAX + iterations * LEAP_FULL * (SUFFSTATS[0] + SUFFSTATS[1] * d * d)
    width = size.population + sum(k for _, k in size.terms)
    out["rows"] = SETUP_JAX + iterations * LEAP_FULL * (ROWS[0] + ROWS[1] * size.rows * width)
    return out


def choose_likelihood(size: ProblemSize, requested: str = "auto") -> LikelihoodChoice:
    """The cheapest candidate for ``"auto"``; a forced ``requested`` runs as asked (``"marginal"``
    on the tree when the factors nest, dense otherwise, whatever its size)."""
    seconds = predicted_seconds(size)
    if requested == "marginal":
        return LikelihoodChoice("marginal", "tree" if size.levels is not None else "dense", seconds)
    if requested != "auto":
        return LikelihoodChoice(requested, None, seconds)
    best = min(seconds, key=seconds.__getitem__)
    likelihood, _, algebra = best.partition("/")
    return LikelihoodChoice(likelihood, algebra or None, seconds)


def problem_size(structure: BayesStructure, rows: int, layout: TreeLayout | None) -> ProblemSize:
    """The sizes of a model's structure that the choice depends on (``layout``: its nested
    chain of levels, with crossed terms in its border (a :class:`.crossed.CrossedTreeLayout`), or
    ``None`` for a program without the tree algebra)."""
    levels = None if layout is None else tuple((lv.n_groups, lv.k) for lv in layout.levels)
    crossed = sum(bt.size for bt in getattr(layout, "border_terms", ()))
    return ProblemSize(rows, structure.p, len(structure.integrated_beta), tuple((t.n_groups, t.k) for t in structure.terms),
                       levels, crossed)
