"""Background preparation: compare() starts each engine's ``prepare`` hook before any fit
(Stan compiles while the quicker engines fit) and stops what is left at its end."""

from __future__ import annotations

import importlib.util
import sys
import time
import types
import warnings
from dataclasses import replace
from types import SimpleNamespace

import pytest

import hierfit
from hierfit.engines import ENGINES, register
from hierfit.evaluate import compare
from hierfit.evaluate.compare import _refit_seconds


class _Handle:
    def __init__(self, log: list) -> None:
        self.log = log

    def running(self) -> bool:
        return False

    def cancel(self) -> None:
        self.log.append("cancel")


@pytest.fixture()
def prepared_engine():
    """``ols`` under another name, its module given a ``prepare`` hook that records its calls."""
    import hierfit.engines.ols as ols_module

    log: list = []
    module = types.ModuleType("hierfit_test_prepared_engine")
    module.__dict__.update({k: getattr(ols_module, k) for k in ("OPTIONS", "fit", "load")})

    def prepare(spec, options):
        log.append(("prepare", spec.response, dict(options)))
        if module.fail:
            raise RuntimeError("no head start today")
        return _Handle(log)

    module.fail = False

    module.prepare = prepare
    sys.modules[module.__name__] = module
    register(replace(ENGINES["ols"], name="prepared", module=module.__name__))
    yield log, module
    del ENGINES["prepared"]
    del sys.modules[module.__name__]


def _compare(engines, options=None):
    sim = hierfit.simulate(n_markets=4, n_submarkets=3, rows_per_submarket=10, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compare(sim.formula, sim.data, engines=engines, cv="submarket:2", options=options, progress=False)


def test_compare_prepares_each_engine_before_fitting_and_cancels_at_the_end(prepared_engine):
    log, _ = prepared_engine
    comp = _compare(["prepared"], options={"prepared": {"rcond": 1e-10}})
    assert log == [("prepare", "y", {"rcond": 1e-10}), "cancel"]
    assert comp.summary()["n_folds"].tolist() == [2]


def test_a_failing_preparation_does_not_stop_the_fit(prepared_engine):
    log, module = prepared_engine
    module.fail = True
    comp = _compare(["prepared"])
    assert log == [("prepare", "y", {})]  # nothing to cancel
    assert "prepared" in comp.fits and not comp.failures


def test_fold_estimates_leave_out_the_one_time_compile():
    result = SimpleNamespace(timings={"fit_seconds": 70.0}, engine_fit=SimpleNamespace(info={"compile_seconds": 64.5}))
    assert _refit_seconds(result) == pytest.approx(5.5)
    plain = SimpleNamespace(timings={"fit_seconds": 2.0}, engine_fit=SimpleNamespace())
    assert _refit_seconds(plain) == 2.0


@pytest.mark.skipif(importlib.util.find_spec("stan") is None, reason="pystan is not installed")
def test_a_background_stan_compile_runs_in_a_child_and_cancels_cleanly():
    from hierfit.engines.bayes import stan_engine

    stan_engine._import_stan()
    # a program no cache holds (the comment changes its hash), so the child really compiles
    code = f"// hierfit test {time.time_ns()}\nparameters {{ real mu; }}\nmodel {{ mu ~ normal(0, 1); }}\n"
    job = stan_engine.BackgroundCompile(code)
    assert job.running()
    time.sleep(1.0)
    job.cancel()
    assert not job.running()
    assert job._process.returncode is not None
    assert not stan_engine.is_compiled(code)  # an interrupted compile leaves no usable entry


@pytest.mark.skipif(importlib.util.find_spec("stan") is None, reason="pystan is not installed")
def test_stan_prepare_is_nothing_to_do_for_a_cached_program(monkeypatch):
    from hierfit.engines.bayes import stan_engine

    monkeypatch.setattr(stan_engine, "is_compiled", lambda code: True)
    assert stan_engine.prepare(hierfit.make_spec("y ~ x1 + (1 | market)"), {}) is None


@pytest.mark.skipif(importlib.util.find_spec("stan") is None, reason="pystan is not installed")
def test_a_cached_module_that_no_longer_loads_is_not_compiled(monkeypatch, tmp_path):
    """httpstan's cache is shared by every environment, and a module links to the Stan runtime
    of the one that compiled it: once that environment is deleted, the entry (complete, with
    its compiler log) fails to import, and the program must be compiled again, not used."""
    from importlib.machinery import EXTENSION_SUFFIXES

    import httpstan.cache
    import httpstan.models

    from hierfit.engines.bayes import stan_engine

    stan_engine._import_stan()
    monkeypatch.setattr(httpstan.cache, "cache_directory", lambda: tmp_path)
    code = "parameters { real mu; }\nmodel { mu ~ normal(0, 1); }\n"
    folder = httpstan.cache.model_directory(httpstan.models.calculate_model_name(code))
    folder.mkdir(parents=True)
    (folder / "stderr.log").write_text("")
    assert not stan_engine.is_compiled(code)  # a log without a module
    # a module whose linked libraries are gone fails to load like this one (not a shared object)
    (folder / f"stan_services_model_x{EXTENSION_SUFFIXES[0]}").write_bytes(b"not a shared object")
    assert not stan_engine.is_compiled(code)
