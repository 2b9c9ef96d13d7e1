"""The Bayesian engines against the ``mixed`` GLMM on the shared R references (issue 19).

Every (engine, model) pair of ``tests/engines/test_bayes_glmm_reference.py`` -- ``pymc`` and
``stan`` on Contraception (bernoulli) and Arabidopsis (poisson, negative binomial), default
priors, 2 chains x 400 draws after 400 warm-up -- compared with that module's ``agreement``:
fixed effects by posterior mean and the SDs of well-populated levels and the NB size by
posterior median, in posterior SDs (target <= 0.3); for ``popu`` (9 groups) the ML estimate's
posterior quantile (target 0.2-0.8). The module docstring says why each comparison is fair.
The suite runs one pair; this script all six (~3 minutes, two Stan compiles on a cold cache).

    PYTHONPATH=src python benchmarks/bayes_glmm_agreement.py [--engines pymc,stan] [--models contraception,...]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import pandas as pd

import hierfit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' reference loaders and comparison
from tests.engines.test_bayes_glmm_reference import MODELS, SETTINGS, TOLERANCE, agreement
from tests.engines.test_mixed_glmm import dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default="pymc,stan")
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    rows = []
    t_all = time.perf_counter()
    for model in args.models.split(","):
        key, formula, family = MODELS[model]
        data = dataset(key)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", hierfit.HierfitWarning)
            ml = hierfit.fit(formula, data, engine="mixed", family=family)
            for engine in args.engines.split(","):
                t0 = time.perf_counter()
                fit = hierfit.fit(formula, data, engine=engine, family=family, **SETTINGS)
                seconds = time.perf_counter() - t0
                distances, few = agreement(fit, ml)
                fixed = [abs(v) for k, v in distances.items() if k.startswith("b:")]
                scales = {k: v for k, v in distances.items() if not k.startswith("b:")}
                worst = max(abs(v) for v in distances.values())
                rows.append({
                    "model": model, "engine": engine, "rows": len(data), "max |fixed| (SD)": max(fixed),
                    **{f"{k} (SD)": v for k, v in scales.items()}, **{f"{k} ML quantile": v for k, v in few.items()},
                    "divergences": sum(d.check == "divergences" for d in fit.diagnostics),
                    "verdict": "met" if worst <= TOLERANCE and all(0.2 <= q <= 0.8 for q in few.values()) else "NOT met",
                    "seconds": seconds,
                })
                print(f"{model} {engine}: worst {worst:.3f} SD, {seconds:.0f} s", flush=True)
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 220, "display.max_columns", 30):
        print()
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep=""))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s; load average {load:.1f}; settings {SETTINGS}")


if __name__ == "__main__":
    main()
