"""Engine ``stan``: generated code (snapshot), compile cache, agreement with ``pymc``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import hierfit
from hierfit.design import build_design
from hierfit.engines.bayes.stancode import stan_code, stan_data

SNAPSHOT = Path(__file__).parent / "snapshots" / "stan_reference.stan"
QUIET = {"few_groups": "ignore", "ess": "ignore", "single_row_groups": "ignore"}


def test_generated_code_for_the_reference_spec_matches_the_snapshot():
    sim = hierfit.simulate(seed=0)
    code = stan_code(hierfit.make_spec(sim.formula, national=sim.national))
    if os.environ.get("HIERFIT_UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(code)
    assert code == SNAPSHOT.read_text(), "generated Stan code changed; review it and rerun with HIERFIT_UPDATE_SNAPSHOTS=1"
    # readable and structured as promised: blocks commented, non-centred, no per-row loop
    for block in ("functions {", "data {", "transformed data {", "parameters {", "model {", "generated quantities {"):
        assert block in code
    assert "for (n in 1:N)" not in code and "diag_pre_multiply(sd_market, L_market)" in code


def test_code_depends_on_the_spec_only_and_rows_code_is_vectorised():
    a = hierfit.simulate(n_markets=3, n_submarkets=2, rows_per_submarket=10, seed=1)
    b = hierfit.simulate(n_markets=6, n_submarkets=4, rows_per_submarket=7, seed=2)
    assert stan_code(build_design(hierfit.make_spec(a.formula), a.data)) == stan_code(build_design(hierfit.make_spec(b.formula), b.data))
    rows = stan_code(hierfit.make_spec("y ~ x1 + (1 + x1 || market)", family="bernoulli"))
    assert "else y_int ~ binomial_logit(trials, eta);" in rows and "rows_dot_product(r_market[g_market], Z_market)" in rows
    assert "cholesky_factor_corr" not in rows  # || : independent
    # the per-row program is the same for every family (the family is data): one compilation
    assert rows == stan_code(hierfit.make_spec("y ~ x2 + (1 + x1 || market)", family="poisson"))


def test_data_dict_matches_the_design():
    sim = hierfit.simulate(n_markets=3, n_submarkets=2, rows_per_submarket=10, seed=1)
    d = build_design(hierfit.make_spec(sim.formula), sim.data)
    data = stan_data(d)
    D = 3 + 2 * 3 + 6
    assert data["WtW"].shape == (D, D) and data["yty"] == pytest.approx(float(sim.data["y"] @ sim.data["y"]))
    assert data["P_I"] == 3 and data["P_S"] == 0 and list(data["idx_beta_I"]) == [1, 2, 3]


pytest.importorskip("arviz")
stan_mod = pytest.importorskip("hierfit.engines.bayes.stan_engine")
try:
    stan_mod._import_stan()
except Exception as exc:  # noqa: BLE001  # pragma: no cover - environment without pystan
    pytest.skip(f"pystan unavailable: {exc}", allow_module_level=True)


@pytest.mark.parametrize(
    "formula, family, priors",
    [
        ("y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)", "gaussian", {"b:x2": "t"}),
        ("y ~ x1 + (1 + x1 || market) + (1 | market:submarket)", "bernoulli", {}),
        ("y ~ x1 + x2 + (1 + x1 + x2 | market)", "poisson", {"sd": "exp"}),
        ("y ~ 0 + x1 + (1 | market) + (0 + x1 | market)", "gaussian", {"sigma": "t"}),
        ("y ~ x1 + offset(log(x2)) + (1 | market)", "negative_binomial", {"theta": "exp", "b:x1": "t"}),
    ],
)
def test_generated_programs_pass_stanc(formula, family, priors, tmp_path):
    """Every program shape (marginal and per-row, ||, several terms per level, no intercept,
    student_t / exponential priors, the NB size's prior) is valid Stan: translated by stanc (no C++ compile)."""
    import importlib.resources
    import subprocess

    table = {"t": hierfit.priors.student_t(4, 0, 2), "exp": hierfit.priors.exponential(1)}
    spec = hierfit.make_spec(formula, family=family, priors={k: table[v] for k, v in priors.items()})
    codes = [stan_code(spec)] + ([stan_code(spec, likelihood="rows")] if family == "gaussian" else [])
    with importlib.resources.path("httpstan", "stanc") as stanc:
        for i, code in enumerate(codes):
            path = tmp_path / f"m{i}.stan"
            path.write_text(code)
            done = subprocess.run([stanc, "--o", str(tmp_path / f"m{i}.hpp"), str(path)], capture_output=True, timeout=120, check=False)
            assert done.returncode == 0, done.stderr.decode() + "\n" + code


def test_compiled_models_are_shared_across_virtual_environments(monkeypatch):
    import sys

    import httpstan.models

    from hierfit.engines.bayes import stan_engine

    stan_engine._import_stan()
    assert httpstan.models.calculate_model_name is stan_engine.model_name  # server, client and cache checks
    code = "parameters { real x; } model { x ~ normal(0, 1); }"
    name = stan_engine.model_name(code)
    assert name.startswith("models/") and len(name) == len("models/") + 8
    monkeypatch.setattr(sys, "executable", "/another/clone/.venv/bin/python")  # a fresh clone's venv
    assert stan_engine.model_name(code) == name
    assert stan_engine.model_name(code + "\n") != name
