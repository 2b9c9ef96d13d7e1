"""``hierfit demo``: simulate the reference tree, compare every available engine, write a report.

United_state -> 10 markets -> 5 submarkets x 100 rows (5,000 rows) from the reference
data-generating process; every registered engine whose dependencies are installed is fitted
on all rows and cross-validated by leaving submarkets out (each submarket predicted from its
market alone); the short table and ``demo-report.html`` show which engine recovers the truth.

Engines run with their module's ``FAST_OPTIONS`` (quick *and* good on 5,000 rows), and
cross-validation runs within a time budget (engines that would not fit in it are fitted once,
and the report says so).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hierfit.engines import ENGINES
from hierfit.engines.options import parse_options
from hierfit.simulation import Simulation, simulate

NATIONAL = "United_state"
DEFAULT_BUDGET = 200.0

def demo_options(name: str) -> dict[str, Any]:
    """The demo's options for one engine: its module's ``FAST_OPTIONS``, checked against the
    engine's ``OPTIONS`` (an option the engine does not have is an error, never dropped).

    Examples
    --------
    >>> demo_options("mixed")
    {'n_draws': 400, 'progress': False}
    """
    entry = ENGINES[name]
    options = entry.fast_options()
    parse_options(entry.load().OPTIONS, options, name)
    return options


def oracle_rmse(sim: Simulation, level: str = "submarket") -> float:
    """RMSE of an oracle that knows every true effect except the held-out ``level`` group's:
    the floor for leave-``level``-out prediction (residual noise plus the new group's effect)."""
    truth = sim.truth.group_effects("deviation")
    dev = truth[(truth["level"] == level) & (truth["term"] == "Intercept")].set_index("group")["estimate"]
    cols = [c for c in ("market", "submarket") if c in sim.data.columns]
    labels = sim.data[cols[0]].astype(str)
    for c in cols[1:]:
        labels = labels + ":" + sim.data[c].astype(str)
    oracle = sim.truth.mean - dev.reindex(labels).fillna(0.0).to_numpy()
    return float(np.sqrt(np.mean((sim.data["y"].to_numpy() - oracle) ** 2)))


def run_demo(
    out: Path | str | None = "demo-report.html",
    seed: int = 0,
    echo: Callable[[str], None] = print,
    engines: Sequence[str] | None = None,
    budget: float = DEFAULT_BUDGET,
    cv: str = "submarket",
    progress: bool = True,
    sim: Simulation | None = None,
):
    """Simulate, compare the available engines, print a short table, write the report.

    Parameters
    ----------
    out
        Report file (``None``: no report).
    engines
        Engines to run (default: every registered engine that is installed).
    budget
        Seconds for fitting and cross-validating all engines (``compare``'s ``time_budget``:
        quick engines first; slower ones are fitted without CV, or skipped, when it runs
        out). Writing the report takes another 10-30 s.
    cv
        Cross-validation scheme (default: leave submarkets out).
    sim
        Data to use instead of the reference simulation (tests pass a small one).

    Returns
    -------
    Comparison
    """
    from hierfit.report import build_report

    t0 = time.perf_counter()
    sim = sim if sim is not None else simulate(seed=seed, national_name=NATIONAL)
    names = []
    for name in engines if engines is not None else sorted(ENGINES):
        entry = ENGINES[name]
        if not entry.available:
            echo(f"  {name}: skipped, not installed (pip install 'hierfit[{entry.extra or name}]')")
            continue
        try:
            entry.load()
        except Exception as exc:  # a broken optional engine must not stop the demo
            echo(f"  {name}: skipped, cannot be imported ({type(exc).__name__}: {exc})")
            continue
        names.append(name)
    n_groups = sim.data.groupby(["market", "submarket"]).ngroups if {"market", "submarket"} <= set(sim.data.columns) else 0
    echo(f"simulated {len(sim.data)} rows: {NATIONAL} -> {sim.data['market'].nunique()} markets -> {n_groups} submarkets")
    echo(f"true model: {sim.formula}")
    echo(f"engines: {', '.join(names)}; cross-validation: {cv}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # failures and diagnostics are printed / reported below
        comp = _compare(sim, names, cv, budget, progress, seed)
    echo("\n" + short_table(comp).to_string(index=False))
    if cv.split(":")[0] == "submarket":
        echo(f"floor: an oracle knowing every effect but the held-out submarket's has RMSE {oracle_rmse(sim):.3f}")
    for note in comp.notes:
        echo(f"note: {note}")
    for name, msg in comp.failures.items():
        echo(f"failed: {name}: {msg}")
    if out is not None:
        path = Path(out)
        build_report(comp, path, title="hierfit demo: United_state -> markets -> submarkets")
        echo(f"\nreport: {path.resolve()}")
    echo(f"done in {time.perf_counter() - t0:.0f} s")
    return comp


def _compare(sim: Simulation, names: list[str], cv: str, budget: float, progress: bool, seed: int):
    from hierfit.evaluate import compare

    return compare(
        sim.formula,
        sim.data,
        engines=names,
        cv=cv,
        national=NATIONAL,
        options={n: demo_options(n) for n in names},
        truth=sim.truth,
        time_budget=budget,
        progress=progress,
        seed=seed,
    )


def short_table(comp) -> pd.DataFrame:
    """Per engine: pooling, held-out RMSE / MLPD / coverage, fit time, recovery of totals."""
    s = comp.summary()
    table = pd.DataFrame(
        {
            "engine": s["engine"],
            "pooling": s["pooling"],
            "cv_rmse": s["rmse"].round(4),
            "cv_mlpd": s["mlpd"].round(3),
            "coverage": s["coverage"].round(2),
            "fit_s": s["full_fit_seconds"].round(1),
        }
    )
    rec = comp.recovery
    for level in ("market", "submarket"):
        r = rec[(rec["kind"] == "total") & (rec["term"] == "Intercept") & (rec["level"] == level)].set_index("engine")["rmse"]
        table[f"{level}_err"] = table["engine"].map(r).round(3)
    return table
