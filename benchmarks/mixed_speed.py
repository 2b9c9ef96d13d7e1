"""hierfit's `mixed` engine end to end vs statsmodels MixedLM, on the issue's reference model.

    y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)

N = 5k, 50k, 500k, 5M rows (10×5, 100×10, 500×20 and 1,000×20 markets × submarkets). The
hierfit time is the whole public path, ``hierfit.fit(formula, DataFrame, engine="mixed")``:
formula, design (the pass over the data frame), sufficient statistics, REML optimisation and
the result tables (best of 3 runs; statsmodels runs once). statsmodels gets the same structure and is skipped where its time,
projected from the smaller sizes, would exceed 5 minutes. Memory: tracemalloc peak of the
hierfit fit (a separate, untimed run) relative to the bytes of the input columns.

Run: ``python benchmarks/mixed_speed.py`` (``--sizes 5000 50000`` for a quick look).
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
import warnings

import numpy as np
import pandas as pd
from mixed_speed_core import DEFAULT_SIZES, simulate, time_statsmodels

import hierfit

FORMULA = "y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"


def frame(d: dict[str, np.ndarray]) -> pd.DataFrame:
    return pd.DataFrame({"y": d["y"], "x1": d["x1"], "x2": d["x2"], "market": d["market"], "submarket": d["sub"]})


def fit(df: pd.DataFrame) -> hierfit.FitResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hierfit.HierfitWarning)
        return hierfit.fit(FORMULA, df, engine="mixed")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=list(DEFAULT_SIZES))
    ap.add_argument("--sm-max-seconds", type=float, default=300.0)
    args = ap.parse_args()
    head = f"{'N':>9} {'groups':>9} {'hierfit s':>9} {'cpu s':>6} {'engine s':>8} {'peak/in':>7} {'statsmodels s':>13} {'ratio':>6} {'|dlogLik|':>9}"
    print(head)
    print("-" * len(head))
    history: list[tuple[int, float]] = []
    for n in args.sizes:
        n_m, n_s = DEFAULT_SIZES[n]
        d = simulate(n, n_m, n_s)
        df = frame(d)
        # best of 3: at 5k-50k rows a fit takes a few hundredths of a second, where one run is noisy
        runs = []
        for _ in range(3):
            t0, c0 = time.perf_counter(), time.process_time()
            result = fit(df)
            runs.append((time.perf_counter() - t0, time.process_time() - c0))
        wall, cpu = min(runs)
        tracemalloc.start()
        fit(df)
        peak = tracemalloc.get_traced_memory()[1] / df.memory_usage(deep=True).sum()
        tracemalloc.stop()
        projected = None
        if len(history) >= 2:
            (n1, t1), (n2, t2) = history[-2:]
            projected = t2 * (n / n2) ** max(1.0, np.log(t2 / t1) / np.log(n2 / n1))
        sm, ratio, dll = "skipped", "", ""
        if projected is None or projected <= args.sm_max_seconds:
            t_sm, _, res = time_statsmodels(d)
            history.append((n, t_sm))
            sm, ratio = f"{t_sm:13.2f}", f"{t_sm / wall:6.0f}"
            dll = f"{abs(result.statistics['loglik'] - res.llf):9.1e}"
        else:
            sm = f"~{projected:.0f} (proj.)"
        print(f"{n:>9} {f'{n_m}x{n_s}':>9} {wall:9.2f} {cpu:6.2f} {result.timings['fit_seconds']:8.2f} {peak:7.2f} {sm:>13} {ratio:>6} {dll:>9}", flush=True)
    print("hierfit s: wall time of hierfit.fit on the DataFrame (design + engine), best of 3; engine s: its engine part;")
    print("ratio: statsmodels / hierfit wall time; peak/in: tracemalloc peak / bytes of the input frame;")
    print("|dlogLik|: REML log-likelihood difference to statsmodels (its optimiser stops earlier).")


if __name__ == "__main__":
    main()
