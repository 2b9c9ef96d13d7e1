"""``hierfit demo``: simulate the reference tree, fit every available engine, show the answer."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from hierfit.api import fit
from hierfit.engines import ENGINES
from hierfit.exceptions import HierfitWarning
from hierfit.simulate import simulate

NATIONAL = "United_state"


def run_demo(out: Path | None = None, seed: int = 0, echo: Callable[[str], None] = print) -> dict[str, object]:
    """Simulate United_state → 10 markets → 5 submarkets × 100 rows and fit each engine.

    Prints, per engine, fit time, holdout RMSE and the submarket-total recovery error, then the
    decomposition of a few rows. Returns the fits keyed by engine name.
    """
    sim = simulate(seed=seed, national_name=NATIONAL)
    rng = np.random.default_rng(seed)
    test = rng.random(len(sim.data)) < 0.2
    train, holdout = sim.data[~test], sim.data[test]
    truth = sim.truth.group_effects("total")
    echo(f"simulated {len(sim.data)} rows: {NATIONAL} -> 10 markets -> 5 submarkets; true model {sim.formula}")
    fits: dict[str, object] = {}
    rows = []
    for name in sorted(ENGINES):
        entry = ENGINES[name]
        if not entry.available:
            echo(f"  {name}: skipped (pip install 'hierfit[{entry.extra or name}]')")
            continue
        options = getattr(entry.load(), "FAST_OPTIONS", {})
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", HierfitWarning)
            result = fit(sim.formula, train, engine=name, national=NATIONAL, **options)
        seconds = time.perf_counter() - t0
        pred = result.predict(holdout)["prediction"].to_numpy()
        est = result.group_effects("total")
        merged = truth.merge(est, on=["level", "group", "term"], suffixes=("_true", ""))
        sub = merged[(merged.level == "submarket") & (merged.term == "Intercept")]
        rows.append(
            {
                "engine": name,
                "fit_seconds": seconds,
                "holdout_rmse": float(np.sqrt(np.mean((holdout["y"].to_numpy() - pred) ** 2))),
                "submarket_total_rmse": float(np.sqrt(np.mean((sub.estimate - sub.estimate_true) ** 2))),
            }
        )
        fits[name] = result
    floor = float(np.sqrt(np.mean((holdout["y"].to_numpy() - sim.truth.mean[test]) ** 2)))
    table = pd.DataFrame(rows)
    echo("\n" + table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    echo(f"noise floor (RMSE of the true mean on the holdout): {floor:.4f}")
    if fits:
        name = "mixed" if "mixed" in fits else next(iter(fits))
        parts = fits[name].decompose(holdout.head(5))
        echo(f"\ndecomposition of 5 holdout rows ({name}): national + market + submarket + slopes + population")
        echo(pd.concat([holdout.head(5)[["market", "submarket"]], parts.round(3)], axis=1).to_string(index=False))
    return fits
