"""Speed and memory of the sufficient-statistic LMM core vs statsmodels MixedLM.

Model (the issue's 3-level reference)::

    y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)

simulated at N = 5k, 50k, 500k, 5M rows (markets x submarkets grow with N; 1,000 x 20
at 5M).  ``fit_lmm`` is timed end to end (data pass + optimisation + results); statsmodels
gets the same random-effect structure (``groups=market, re_formula="1 + x1",
vc_formula={"submarket": "0 + C(submarket)"}``) and is skipped where its time, projected
from the smaller sizes, would exceed ``--sm-max-seconds``.

Peak memory of ``fit_lmm`` is measured with tracemalloc in a separate (untimed) run and
reported relative to the bytes of its input arrays (X, y, group codes, Z columns).

Run: ``PYTHONPATH=src python benchmarks/mixed_speed_core.py [--sizes 5000 50000 ...]``
"""

from __future__ import annotations

import argparse
import resource
import time
import tracemalloc
import warnings

import numpy as np

from hierfit.engines.mixed.lmm import RandomBlock, fit_lmm

#: (rows, markets, submarkets per market)
DEFAULT_SIZES = {5_000: (10, 5), 50_000: (100, 10), 500_000: (500, 20), 5_000_000: (1000, 20)}


def simulate(n: int, n_market: int, n_sub: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Rows spread uniformly over submarkets; true SDs: market 1.0, slope 0.3, sub 0.5."""
    rng = np.random.default_rng(seed)
    sub = rng.integers(0, n_market * n_sub, n)
    market = sub // n_sub
    x1 = rng.normal(size=n)
    x2 = rng.normal(size=n)
    a = rng.normal(0, 1.0, n_market)
    s = rng.normal(0, 0.3, n_market)
    c = rng.normal(0, 0.5, n_market * n_sub)
    y = 2.0 + 0.5 * x1 - 0.3 * x2 + a[market] + s[market] * x1 + c[sub] + rng.normal(size=n)
    return {"y": y, "x1": x1, "x2": x2, "market": market, "sub": sub,
            "n_market": np.array(n_market), "n_sub": np.array(n_market * n_sub)}


def build(d: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[RandomBlock]]:
    n = d["y"].size
    X = np.column_stack([np.ones(n), d["x1"], d["x2"]])
    zm = np.column_stack([np.ones(n), d["x1"]])
    blocks = [RandomBlock(d["sub"], int(d["n_sub"]), np.ones((n, 1))),
              RandomBlock(d["market"], int(d["n_market"]), zm)]
    return X, d["y"], blocks


def input_bytes(X: np.ndarray, y: np.ndarray, blocks: list[RandomBlock]) -> int:
    return X.nbytes + y.nbytes + sum(b.group_index.nbytes + np.asarray(b.Z).nbytes
                                     for b in blocks)


def time_ours(d: dict[str, np.ndarray]) -> tuple[float, float, object]:
    """Wall and process-CPU seconds of one end-to-end fit (CPU is robust to machine load)."""
    X, y, blocks = build(d)
    t0, c0 = time.perf_counter(), time.process_time()
    sol = fit_lmm(X, y, blocks, reml=True)
    return time.perf_counter() - t0, time.process_time() - c0, sol


def peak_ours(d: dict[str, np.ndarray]) -> float:
    X, y, blocks = build(d)
    tracemalloc.start()
    fit_lmm(X, y, blocks, reml=True)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / input_bytes(X, y, blocks)


def time_statsmodels(d: dict[str, np.ndarray]) -> tuple[float, float, object]:
    import pandas as pd
    import statsmodels.formula.api as smf

    df = pd.DataFrame({k: d[k] for k in ("y", "x1", "x2", "market", "sub")})
    t0, c0 = time.perf_counter(), time.process_time()
    md = smf.mixedlm("y ~ x1 + x2", df, groups="market", re_formula="1 + x1",
                     vc_formula={"submarket": "0 + C(sub)"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = md.fit(reml=True)
    return time.perf_counter() - t0, time.process_time() - c0, res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=list(DEFAULT_SIZES))
    ap.add_argument("--sm-max-seconds", type=float, default=300.0)
    ap.add_argument("--no-statsmodels", action="store_true")
    args = ap.parse_args()
    hdr = (f"{'N':>9} {'mkts x subs':>12} {'ours s':>7} {'cpu s':>6} {'pass s':>6} "
           f"{'opt s':>6} {'evals':>5} {'peak/in':>7} {'sm s':>8} {'sm cpu':>8} {'ratio':>6} "
           f"{'cpu ratio':>9} {'|dlogLik|':>9} {'dSD rel':>8}")
    print(hdr)
    print("-" * len(hdr))
    sm_hist: list[tuple[int, float]] = []
    for n in args.sizes:
        n_m, n_s = DEFAULT_SIZES.get(n, (max(10, n // 5000), 20))
        d = simulate(n, n_m, n_s)
        t_ours, c_ours, sol = time_ours(d)
        peak = peak_ours(d)
        sm_txt, smc_txt, ratio_txt, cratio_txt, dll_txt, dsd_txt = "skipped", "", "", "", "", ""
        projected = None
        if len(sm_hist) >= 2:
            (n1, t1), (n2, t2) = sm_hist[-2], sm_hist[-1]
            expo = max(1.0, np.log(t2 / t1) / np.log(n2 / n1))
            projected = t2 * (n / n2) ** expo
        elif sm_hist:
            projected = sm_hist[-1][1] * n / sm_hist[-1][0]
        if not args.no_statsmodels and (projected is None or projected <= args.sm_max_seconds):
            t_sm, c_sm, res = time_statsmodels(d)
            sm_hist.append((n, t_sm))
            sm_txt, ratio_txt = f"{t_sm:8.2f}", f"{t_sm / t_ours:6.0f}"
            smc_txt, cratio_txt = f"{c_sm:8.2f}", f"{c_sm / c_ours:9.0f}"
            dll_txt = f"{abs(sol.loglik - res.llf):9.2e}"
            sd_sm = np.sqrt(np.concatenate([[float(res.vcomp[0])], np.diag(res.cov_re)]))
            sd_us = np.concatenate([sol.sds[0], sol.sds[1]])
            dsd_txt = f"{np.max(np.abs(sd_sm / sd_us - 1)):8.1e}"
        elif projected is not None:
            sm_txt = f"~{projected:6.0f}*"
        print(f"{n:>9} {f'{n_m}x{n_s}':>12} {t_ours:7.2f} {c_ours:6.2f} "
              f"{sol.timings['data_pass']:6.2f} {sol.timings['optimize']:6.2f} "
              f"{sol.n_evaluations:>5} {peak:7.2f} {sm_txt:>8} {smc_txt:>8} {ratio_txt:>6} "
              f"{cratio_txt:>9} {dll_txt:>9} {dsd_txt:>8}", flush=True)
        assert sol.converged, sol.message
    print("times in s (wall; cpu = process CPU, robust to a loaded machine); ratio = "
          "statsmodels / ours; * = projected statsmodels time (not run); peak/in = "
          "tracemalloc peak of fit_lmm / bytes of its input arrays; dlogLik, dSD rel: "
          "agreement with statsmodels")
    print(f"process max RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
