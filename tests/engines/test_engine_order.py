"""Engines fitted in any order in one process, without hangs or fork warnings.

httpstan keeps a process pool whose threads outlive a fit, and JAX keeps thread pools; PyMC's
chain workers are forked, and a fork of a process with such threads can hang forever on an
inherited lock (seen: 40 minutes asleep in a futex). The script runs as users write them --
no ``if __name__ == "__main__"`` guard -- in a subprocess under a timeout.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("pymc")
pytest.importorskip("hierfit.engines.bayes.stan_engine")._import_stan()  # pystan needs its import shim

SCRIPT = """
import warnings, hierfit
warnings.simplefilter("error", RuntimeWarning)  # 'os.fork() was called ... multithreaded' is one
sim = hierfit.simulate(n_markets=5, n_submarkets=3, rows_per_submarket=30, seed=7, national_name="United_state")
formula = "y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"
for engine in ["stan", "pymc", "stan", "pymc"]:
    fit = hierfit.fit(formula, sim.data, engine=engine, national="United_state", draws=100, tune=100, chains=2,
                      progressbar=False, checks={"few_groups": "ignore", "ess": "ignore", "rhat": "ignore",
                                                 "divergences": "ignore", "treedepth": "ignore"})
    print(engine, fit.fixed_effects().shape[0], flush=True)
"""


def test_stan_then_pymc_then_stan_then_pymc_in_one_process() -> None:
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["stan", "3", "pymc", "3", "stan", "3", "pymc", "3"]
