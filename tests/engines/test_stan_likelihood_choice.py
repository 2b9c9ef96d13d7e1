"""The stan engine's likelihood="auto": the dense marginal program while the cost model says it
is cheaper than the per-row program, the per-row one beyond (never a dense 41,000-square algebra)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import hierfit
from hierfit.engines.bayes.stan_engine import choose_likelihood


def _design(n_groups: int, rows_per_group: int, family: str = "gaussian"):
    rng = np.random.default_rng(7)
    g = np.repeat(np.arange(n_groups), rows_per_group)
    x = rng.normal(size=g.size)
    eta = 0.5 * x + rng.normal(size=n_groups)[g]
    y = eta + rng.normal(size=g.size) if family == "gaussian" else rng.binomial(1, 1 / (1 + np.exp(-eta)))
    data = pd.DataFrame({"y": y, "x": x, "g": [f"g{i:05d}" for i in g]})
    spec = hierfit.make_spec("y ~ x + (1 | g)", family=family)
    return hierfit.build_design(spec, data), spec


def test_the_reference_model_runs_the_marginal_program():
    sim = hierfit.simulate(seed=0)
    spec = hierfit.make_spec(sim.formula)
    assert choose_likelihood(hierfit.build_design(spec, sim.data), spec, "auto") == "marginal"


def test_beyond_the_dense_limit_auto_runs_the_per_row_program():
    design, spec = _design(n_groups=1_600, rows_per_group=2)
    assert choose_likelihood(design, spec, "auto") == "rows"
    assert choose_likelihood(design, spec, "marginal") == "marginal"  # forced: as asked


@pytest.mark.parametrize("requested", ["auto", "rows"])
def test_other_families_and_forced_rows_run_the_per_row_program(requested):
    design, spec = _design(n_groups=20, rows_per_group=10, family="bernoulli")
    assert choose_likelihood(design, spec, requested) == "rows"
    design, spec = _design(n_groups=20, rows_per_group=10)
    assert choose_likelihood(design, spec, "rows") == "rows"
