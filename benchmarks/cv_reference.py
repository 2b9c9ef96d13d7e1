"""Leave-submarket-out cross-validation on the reference DGP, every available engine.

The question: predicting a submarket never seen (inside a known market), do the
partial-pooling engines beat no pooling (``ols``)? Each seed simulates the reference tree
(United_state -> 10 markets -> 5 submarkets x 100 rows), and every engine is fitted on the same
5 folds, each holding out one submarket per market. Engines use their ``FAST_OPTIONS`` updated
by :data:`SETTINGS` (the settings every recorded run used; each name is checked against the
engine's options). Prints per-seed and mean scores with the RMSE ratio to ``ols``
measured in the same run, and writes them into benchmarks/RESULTS.md under
"## Leave-submarket-out CV on the reference DGP" (replacing only that section).

    PYTHONPATH=src python benchmarks/cv_reference.py [--seeds 0 1 2] [--engines mixed,ols] [--no-write]
        [--rows-per-submarket 100] [--family gaussian|bernoulli|binomial|poisson|negative_binomial]

With 100 rows per submarket, pooling moves a held-out submarket's prediction only in the 4th
decimal of the RMSE; ``--rows-per-submarket 10`` (a section of its own) shows the same
comparison where the market effects are harder to estimate and pooling matters more.

``--family`` simulates the same tree with a non-gaussian outcome (binomial: 1-19 trials a row;
negative binomial: size 2) and ranks engines by the family's primary held-out score (log loss
for probabilities, deviance for counts; see ``hierfit.evaluate.metrics.primary_metric``); each
family has a section of its own. The oracle floor is computed for gaussian outcomes only.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

import hierfit
from hierfit.demo import NATIONAL, oracle_rmse
from hierfit.engines import ENGINES
from hierfit.engines.options import parse_options
from hierfit.evaluate import available_engines, compare
from hierfit.evaluate.metrics import primary_metric
from hierfit.model import get_family

#: Per-engine settings over FAST_OPTIONS: quick *and* good on 5,000 rows (2 chains x 400 draws
#: after 400 tuning steps give R-hat and ESS fine on this model; 3 members give an ensemble
#: spread worth calling an interval).
SETTINGS: dict[str, dict[str, object]] = {
    "pymc": {"draws": 400, "tune": 400, "chains": 2, "progressbar": False},
    "stan": {"draws": 400, "tune": 400, "chains": 2},
    "neural": {"n_members": 3, "max_epochs": 60, "patience": 6, "progress": False},
    "lightgbm": {"num_threads": 2},
    "boosted-mixed": {"num_threads": 2},
}


def engine_options(name: str) -> dict[str, object]:
    """FAST_OPTIONS updated by :data:`SETTINGS`, checked against the engine's OPTIONS."""
    entry = ENGINES[name]
    options = {**entry.fast_options(), **SETTINGS.get(name, {})}
    parse_options(entry.load().OPTIONS, options, name)
    return options

HEADING = "## Leave-submarket-out CV on the reference DGP"
REFERENCE_ROWS = 100


def heading(rows_per_submarket: int, family: str = "gaussian") -> str:
    title = HEADING if family == "gaussian" else f"{HEADING}, {family} outcome"
    return title if rows_per_submarket == REFERENCE_ROWS else f"{title}, {rows_per_submarket} rows per submarket"


def metric_of(family: str) -> str:
    """The score engines are ranked by (lower is better for each: rmse, log_loss, deviance)."""
    return primary_metric(get_family(family))
RESULTS = Path(__file__).with_name("RESULTS.md")


def run(seeds: list[int], engines: list[str], rows_per_submarket: int = REFERENCE_ROWS,
        family: str = "gaussian", national: float = 1.0) -> tuple[pd.DataFrame, dict[str, str]]:
    rows = []
    failures: dict[str, str] = {}
    metric = metric_of(family)
    for seed in seeds:
        sim = hierfit.simulate(seed=seed, national_name=NATIONAL, rows_per_submarket=rows_per_submarket, family=family,
                               national=national)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            comp = compare(
                sim.formula, sim.data, engines=engines, cv="submarket:5", family=family, national=NATIONAL, truth=sim.truth,
                options={n: engine_options(n) for n in engines}, progress=False, seed=seed,
            )  # fmt: skip
        s = comp.summary()
        rec = comp.recovery
        sub = rec[(rec.level == "submarket") & (rec.kind == "total") & (rec.term == "Intercept")].set_index("engine")["rmse"]
        mkt = rec[(rec.level == "market") & (rec.kind == "total") & (rec.term == "Intercept")].set_index("engine")["rmse"]
        oracle = oracle_rmse(sim) if family == "gaussian" else np.nan
        s = s.assign(seed=seed, oracle_rmse=oracle, submarket_total_err=s.engine.map(sub), market_total_err=s.engine.map(mkt))
        rows.append(s)
        failures.update({f"{k} (seed {seed})": v for k, v in comp.failures.items()})
        print(f"seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    table = pd.concat(rows, ignore_index=True)
    ols = table[table.engine == "ols"].set_index("seed")[metric]
    table[f"{metric}_vs_ols"] = table[metric] / table.seed.map(ols)
    return table, failures


def summarise(table: pd.DataFrame, family: str = "gaussian") -> pd.DataFrame:
    metric = metric_of(family)
    scores = ["rmse"] if metric == "rmse" else [metric, "rmse"]
    extra = ["brier", "auc", "calibration"] if metric == "log_loss" else []
    cols = [*scores, f"{metric}_vs_ols", "mlpd", *extra, "coverage", "width", "submarket_total_err", "market_total_err",
            "full_fit_seconds", "fit_seconds"]
    mean = table.groupby("engine", sort=False)[cols].mean()
    wins = table.assign(win=table[f"{metric}_vs_ols"] < 1).groupby("engine", sort=False)["win"].sum().astype(int)
    mean.insert(len(scores) + 1, "seeds_beating_ols", wins.astype(str) + f"/{table.seed.nunique()}")
    mean.insert(0, "pooling", table.groupby("engine", sort=False)["pooling"].first())
    return mean.reset_index()


def markdown(summary: pd.DataFrame, table: pd.DataFrame, failures: dict[str, str], seeds: list[int], seconds: float,
             rows_per_submarket: int = REFERENCE_ROWS, family: str = "gaussian", national: float = 1.0) -> str:
    def fmt(frame: pd.DataFrame) -> str:
        return frame.to_markdown(index=False, floatfmt=".4f") if _has_tabulate() else "```\n" + frame.to_string(index=False, float_format=lambda v: f"{v:.4f}") + "\n```"

    metric = metric_of(family)
    partial = summary[summary.pooling == "partial"].set_index("engine")
    ols_score = summary.set_index("engine")[metric].get("ols", np.nan)
    verdict = [
        f"* {name}: {metric} {r[metric]:.4f} vs ols {ols_score:.4f} (ratio {r[f'{metric}_vs_ols']:.4f}; better on "
        f"{r['seeds_beating_ols']} seeds) -> {'beats' if r[f'{metric}_vs_ols'] < 1 else 'does NOT beat'} ols"
        for name, r in partial.iterrows()
    ]
    rows_flag = "" if rows_per_submarket == REFERENCE_ROWS else f" --rows-per-submarket {rows_per_submarket}"
    rows_flag += "" if family == "gaussian" else f" --family {family}"
    rows_flag += "" if national == 1.0 else f" --national {national:g}"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        heading(rows_per_submarket, family),
        "",
        f"`PYTHONPATH=src python benchmarks/cv_reference.py --seeds {' '.join(map(str, seeds))}{rows_flag}` -- "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()} with {_cores()} cores, {seconds:.0f} s in all. "
        f"Reference DGP (10 markets x 5 submarkets x {rows_per_submarket} rows, {family} outcome), 5 folds, each holding out one submarket "
        "per market; engines with `FAST_OPTIONS` updated by the script's `SETTINGS`. Columns: held-out "
        f"{metric} (the family's primary score), its ratio to `ols` in the same run, MLPD, 90% interval coverage and width, RMSE of "
        "submarket and market total effects against the truth (full-data fit), fit times (s). "
        f"Load average at the end: {load:.1f} (timings are inflated above the core count). Mean over seeds:",
        "",
        fmt(summary),
        "",
        *verdict,
    ]
    if family == "gaussian":
        floor = table.groupby("seed").oracle_rmse.first().mean()
        lines += ["", f"Floor: an oracle knowing every true effect except the held-out submarket's has RMSE {floor:.4f} (mean over seeds)."]
    if failures:
        lines += ["", "Engines that failed:", *[f"* {k}: {v}" for k, v in failures.items()]]
    per_seed = ["seed", "engine", *dict.fromkeys([metric, "rmse"]), f"{metric}_vs_ols", "mlpd", "coverage", "submarket_total_err", "full_fit_seconds"]
    lines += ["", "<details><summary>per seed</summary>", "", fmt(table[per_seed]), "", "</details>", ""]
    return "\n".join(lines)


def write_section(text: str, title: str = HEADING) -> None:
    """Replace the section ``title`` of RESULTS.md (or append it), leaving the others alone."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    start = old.find(title + "\n")
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        nxt = old.find("\n## ", start + len(title))
        new = old[:start] + text + ("" if nxt < 0 else "\n" + old[nxt + 1 :])
    RESULTS.write_text(new.rstrip("\n") + "\n")


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--engines", default=None, help="comma-separated (default: every available engine)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument("--rows-per-submarket", type=int, default=REFERENCE_ROWS, help="rows per submarket (reference: 100)")
    parser.add_argument("--family", default="gaussian", help="outcome family of the simulated tree (default gaussian)")
    parser.add_argument("--national", type=float, default=1.0, help="national intercept on the link scale (default 1.0)")
    args = parser.parse_args()
    engines = args.engines.split(",") if args.engines else available_engines()
    if "ols" not in engines:
        engines = ["ols", *engines]
    skipped = sorted(set(ENGINES) - set(engines))
    if skipped:
        print(f"not run (not installed or not importable): {', '.join(skipped)}")
    t0 = time.perf_counter()
    table, failures = run(args.seeds, engines, args.rows_per_submarket, args.family, args.national)
    summary = summarise(table, args.family)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    for k, v in failures.items():
        print(f"failed: {k}: {v}")
    text = markdown(summary, table, failures, args.seeds, time.perf_counter() - t0, args.rows_per_submarket, args.family,
                    args.national)
    if not args.no_write:
        write_section(text, heading(args.rows_per_submarket, args.family))
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
