"""Shared fixtures: simulated data sets are built once per session (seeded)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import matplotlib
import pytest

matplotlib.use("Agg")

# JAX (the numpyro sampler of the pymc engine) compiles a model's every operation on its first
# fit in a process (~25 s for a small bernoulli model, measured): its persistent compilation
# cache, kept like the Stan and numba caches in a per-user directory, makes later test runs
# load them instead.  Set before anything imports JAX; a cache the caller configured wins.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(tempfile.gettempdir()) / f"hierfit-jax-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import hierfit  # noqa: E402

#: Reference results from R (lme4, glmer, glmmTMB, performance) kept with the tests; see its README.
REFERENCE_DIR = Path(__file__).resolve().parent / "reference"


def reference_json(name: str) -> dict[str, Any]:
    """A reference file from :data:`REFERENCE_DIR`; a missing file is an error, never a skip."""
    path = REFERENCE_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"reference file {path} is missing: it belongs in the repository")
    return json.loads(path.read_text())


REFERENCE_FORMULA = "y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"

#: fast engines with no optional dependencies, for tests of comparison and reports
QUICK_ENGINES = ["ols", "mixed"]


def quick_comparison(sim: hierfit.Simulation, cv: str = "submarket:3", engines: list[str] | None = None,
                     options: dict[str, dict[str, Any]] | None = None, **kwargs: Any) -> hierfit.Comparison:
    """``compare`` of ``engines`` (default :data:`QUICK_ENGINES`) with their quick-fit options
    (updated by ``options``) on a simulation, with its truth."""
    import warnings

    from hierfit.engines import ENGINES
    from hierfit.evaluate import compare

    names = engines or QUICK_ENGINES
    opts = {n: {**ENGINES[n].fast_options(), **(options or {}).get(n, {})} for n in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compare(sim.formula, sim.data, engines=names, cv=cv, national="United_state", truth=sim.truth,
                       options=opts, progress=False, **kwargs)


@pytest.fixture(scope="session")
def reference_sim() -> hierfit.Simulation:
    """The reference DGP: 10 markets × 5 submarkets × 100 rows (5,000 rows)."""
    return hierfit.simulate(seed=20261121, national_name="United_state")


@pytest.fixture(scope="session")
def small_sim() -> hierfit.Simulation:
    """A small tree for quick contract checks: 5 markets × 3 submarkets × 30 rows."""
    return hierfit.simulate(n_markets=5, n_submarkets=3, rows_per_submarket=30, seed=7, national_name="United_state")


#: the formula every engine is fitted with by :func:`fits` (varying slope, nested levels)
CONFORMANCE_FORMULA = "y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"


def family_sim(family: str) -> hierfit.Simulation:
    """:func:`small_sim`'s tree with an outcome of ``family`` (binomial: 10 trials per row)."""
    return hierfit.simulate(n_markets=5, n_submarkets=3, rows_per_submarket=30, seed=7, national_name="United_state",
                            family=family, national=0.5 if family in ("poisson", "negative_binomial") else 1.0)


@pytest.fixture(scope="session")
def fits(small_sim):
    """``fits(name, family="gaussian")``: engine ``name``'s quick fit (its FAST_OPTIONS) of
    :func:`small_sim` (or its :func:`family_sim` for another family), made once.

    Shared by the conformance suite and the persistence tests, so the slow Bayesian fits are
    made once per session. An engine whose optional dependencies are missing is skipped.
    """
    import warnings

    from hierfit.engines import ENGINES
    from hierfit.exceptions import HierfitWarning

    cache: dict[tuple[str, str], hierfit.FitResult] = {}

    def get(name: str, family: str = "gaussian") -> hierfit.FitResult:
        if (name, family) not in cache:
            entry = ENGINES[name]
            if not entry.available:
                pytest.skip(f"engine {name!r} not installed: pip install 'hierfit[{entry.extra or name}]'")
            sim = small_sim if family == "gaussian" else family_sim(family)
            formula = CONFORMANCE_FORMULA if family == "gaussian" else sim.formula
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", HierfitWarning)
                cache[name, family] = hierfit.fit(formula, sim.data, engine=name, national="United_state", family=family,
                                                  **entry.fast_options())
        return cache[name, family]

    return get


@pytest.fixture(scope="session")
def family_data(small_sim):
    """``family_data(family)``: the rows :func:`fits` fitted for that family."""
    cache: dict[str, object] = {"gaussian": small_sim.data}

    def get(family: str):
        if family not in cache:
            cache[family] = family_sim(family).data
        return cache[family]

    return get
