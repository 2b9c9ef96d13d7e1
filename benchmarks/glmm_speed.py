"""GLMMs end to end: ``hierfit.fit(..., engine="mixed")`` vs glmer, glmmTMB and statsmodels.

Model (families ``bernoulli`` and ``poisson``)::

    y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)

on the simulated market trees of ``glmm_core_speed.py`` (same seeds and data-generating
process): 10 x 5 (5k rows), 100 x 10 (100k) and 1,000 x 20 (1M).

* hierfit: the public path, ``hierfit.fit(formula, DataFrame, engine="mixed", family=...)``,
  i.e. formula, design (the pass over the data frame), the GLMM fit and the result tables.
  One untimed warm-up fit comes first so that numba compilation (and kernel loading) is not
  in the timing; then best of ``--reps`` below 500k rows, a single run at or above.
  The frame holds integer group codes (``market``, ``submarket``) and float columns.
* Memory: tracemalloc peak of one more (untimed) fit, divided by the input frame's
  ``memory_usage(deep=True).sum()``; tracemalloc sees numpy's allocations, not those made
  inside numba kernels, so the growth of the resident set during a further fit (sampled
  every 2 ms) is printed next to it as a cross-check -- only a lower bound, since the
  allocator serves much of a fit from pages freed by the previous one.
* statsmodels: ``BinomialBayesMixedGLM`` / ``PoissonBayesMixedGLM`` (``from_formula`` with
  variance components for the market intercept, the market x1 slope and the submarket
  intercept; ``fit_vb()``), timed around ``from_formula`` + ``fit_vb`` in a subprocess on the
  same CSV, with ``--statsmodels-timeout``; sizes above ``--statsmodels-max`` rows are skipped.
  It is variational Bayes with independent components (no intercept-slope correlation), a
  different model and estimator, so only its time is compared.
* glmer / glmmTMB (default controls), when ``Rscript`` with lme4, glmmTMB and jsonlite is
  present: each in its own ``Rscript`` run on the same CSV, timed around the fitting call
  only (not ``read.csv``), with ``--r-timeout`` per run. Agreement columns: hierfit's logLik
  minus glmer's, the largest absolute fixed-effect and random-effect-SD differences to
  glmer, and hierfit's logLik minus glmmTMB's.

Printed: one JSON line per case as it finishes, then a table with the ratios (glmer s /
hierfit s, glmmTMB s / hierfit s, statsmodels s / hierfit s) and one line per target of the
issue (>= 20x glmer and >= 5x glmmTMB at 100k and 1M rows, the 1M-row bernoulli fit < 10 s,
peak memory <= 3x the input) saying met / not met. The load average is printed at the start
and the end (the machine may be shared).

Usage::

    python benchmarks/glmm_speed.py                                   # everything (R at 1M: long)
    python benchmarks/glmm_speed.py --sizes 5k --families bernoulli --no-r
    python benchmarks/glmm_speed.py --sizes 5k,100k --statsmodels-max 0 --r-timeout 600
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from glmm_core_speed import SIZES, fit_r, have_r, simulate

import hierfit

FORMULA = "y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"

SM_SCRIPT = r"""
import json, sys, time, warnings
import pandas as pd
from statsmodels.genmod.bayes_mixed_glm import BinomialBayesMixedGLM, PoissonBayesMixedGLM
warnings.simplefilter("ignore")
df = pd.read_csv(sys.argv[1])
cls = BinomialBayesMixedGLM if sys.argv[2] == "bernoulli" else PoissonBayesMixedGLM
vc = {"market": "0 + C(market)", "market_x1": "0 + C(market):x1", "submarket": "0 + C(submarket)"}
t0 = time.perf_counter()
model = cls.from_formula("y ~ x1 + x2", vc, df)
res = model.fit_vb()
t = time.perf_counter() - t0
print(json.dumps({"seconds": t, "fe_mean": list(map(float, res.fe_mean)),
                  "sd": list(map(float, res.vcp_mean)), "vc_names": list(model.vcp_names)}))
"""


def frame(d: dict[str, np.ndarray]) -> pd.DataFrame:
    """The simulated columns as the DataFrame handed to ``hierfit.fit`` (integer group codes)."""
    return pd.DataFrame({"y": d["y"], "x1": d["x1"], "x2": d["x2"], "market": d["market"], "submarket": d["submarket"]})


def hfit(df: pd.DataFrame, family: str) -> hierfit.FitResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hierfit.HierfitWarning)
        return hierfit.fit(FORMULA, df, engine="mixed", family=family)


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_growth(df: pd.DataFrame, family: str) -> float:
    """Peak resident-set growth (bytes) during one fit, sampled every 2 ms (NaN off Linux)."""
    if not os.path.exists("/proc/self/statm"):
        return float("nan")
    base = _rss()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        hfit(df, family)
    finally:
        done.set()
        th.join()
    return float(max(peak[0], _rss()) - base)


def fit_hierfit(df: pd.DataFrame, family: str, reps: int) -> dict[str, Any]:
    """Warm-up fit (untimed), best-of-``reps`` wall time, then the memory runs."""
    hfit(df, family)  # warm-up: numba compilation / kernel loading stays out of the timing
    best, engine_s, result = np.inf, np.nan, None
    for _ in range(reps):
        t0 = time.perf_counter()
        res = hfit(df, family)
        wall = time.perf_counter() - t0
        if wall < best:
            best, engine_s, result = wall, res.timings.get("fit_seconds", np.nan), res
    in_bytes = int(df.memory_usage(deep=True).sum())
    tracemalloc.start()
    hfit(df, family)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    rss = rss_growth(df, family)
    return {"seconds": best, "engine_s": engine_s, "result": result, "peak_ratio": peak / in_bytes,
            "rss_ratio": rss / in_bytes, "input_mb": in_bytes / 2**20}


def fit_statsmodels(csv: Path, family: str, timeout: float) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as fh:
        fh.write(SM_SCRIPT)
    try:
        res = subprocess.run([sys.executable, fh.name, str(csv), family], capture_output=True, text=True,
                             timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"timeout": True, "message": f"> {timeout:.0f} s (timed out)"}
    finally:
        os.unlink(fh.name)
    if res.returncode != 0:
        return {"error": True, "message": res.stderr.strip()[-300:]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def fit_r_one(csv: Path, family: str, which: str, timeout: float) -> dict[str, Any]:
    """One glmer or glmmTMB fit of the CSV (:func:`glmm_core_speed.fit_r`); ``{"error": ...}``
    on failure or timeout."""
    out = fit_r(csv, family, which, timeout)
    err = out.get("error")
    if err is None:
        return out[which]
    if err.get("timeout"):
        return {"error": f"> {timeout:.0f} s (timed out)", "timeout": True}
    return {"error": err["message"]}


def _sds(result: hierfit.FitResult) -> dict[tuple[str, str], float]:
    vc = result.variance_components()
    vc = vc[(vc.term2 == "") & vc.level.isin(["market", "submarket"])]
    return {(r.level, r.term1): float(r.sd_or_corr) for r in vc.itertuples()}


def _r_key(grp: str, var: str) -> tuple[str, str]:
    return grp.split(":")[-1], "Intercept" if var == "(Intercept)" else var


def _fixef(result: hierfit.FitResult) -> dict[str, float]:
    fe = result.fixed_effects()
    return dict(zip(fe.term, fe.estimate.astype(float)))


def _r_fixef(fe: dict[str, float]) -> dict[str, float]:
    return {("Intercept" if k == "(Intercept)" else k): float(v) for k, v in fe.items()}


def run_case(size: str, family: str, args: argparse.Namespace, use_r: bool, tmp: Path) -> dict[str, Any]:
    markets, subs, n = SIZES[size]
    d = simulate(markets, subs, n, family)
    df = frame(d)
    csv = tmp / f"{family}_{size}.csv"
    df[["market", "submarket", "x1", "x2", "y"]].to_csv(csv, index=False, float_format="%.17g")
    h = fit_hierfit(df, family, args.reps if n < 500_000 else 1)
    res = h["result"]
    ll = float(res.statistics["loglik"])
    row: dict[str, Any] = {"size": size, "family": family, "n": n, "hierfit_s": h["seconds"],
                           "engine_s": h["engine_s"], "peak_x_input": h["peak_ratio"],
                           "rss_x_input": h["rss_ratio"], "input_MB": h["input_mb"], "loglik": ll,
                           "diagnostics": [str(x) for x in res.diagnostics]}
    if n <= args.statsmodels_max:
        sm = fit_statsmodels(csv, family, args.statsmodels_timeout)
        if "seconds" in sm:
            row["statsmodels_s"] = sm["seconds"]
            row["statsmodels_ratio"] = sm["seconds"] / h["seconds"]
            ours = _fixef(res)
            row["dfixef_vs_statsmodels"] = max(abs(ours[k] - v) for k, v in zip(("Intercept", "x1", "x2"), sm["fe_mean"]))
        else:
            row["statsmodels_s"] = sm["message"]
    else:
        row["statsmodels_s"] = f"skipped (> --statsmodels-max {args.statsmodels_max})"
    if use_r:
        for eng in ("glmer", "glmmTMB"):
            r = fit_r_one(csv, family, eng, args.r_timeout)
            if "error" in r:
                row[f"{eng}_s"] = r["error"] if r.get("timeout") else "failed"
                if not r.get("timeout"):
                    row[f"{eng}_error"] = r["error"]
                continue
            row[f"{eng}_s"] = r["seconds"]
            row[f"{eng}_ratio"] = r["seconds"] / h["seconds"]
            row[f"dlogLik_vs_{eng}"] = ll - r["logLik"]
            ours, theirs = _fixef(res), _r_fixef(r["fixef"])
            row[f"dfixef_vs_{eng}"] = max(abs(ours[k] - theirs[k]) for k in theirs)
            if eng == "glmer":
                sds = _sds(res)
                row["dsd_vs_glmer"] = max(abs(sds[_r_key(g, v)] - s) for g, v, s in zip(r["sd_grp"], r["sd_var"], r["sd"]))
                row["glmer_messages"] = r.get("messages")
            else:
                row["glmmTMB_pdHess"] = r.get("pdHess")
    csv.unlink(missing_ok=True)
    return row


TABLE_COLS = [("size", "size"), ("family", "family"), ("hierfit_s", "hierfit s"), ("engine_s", "engine s"),
              ("glmer_s", "glmer s"), ("glmmTMB_s", "glmmTMB s"), ("statsmodels_s", "statsm. s"),
              ("glmer_ratio", "glmer/h"), ("glmmTMB_ratio", "TMB/h"), ("statsmodels_ratio", "statsm./h"),
              ("peak_x_input", "peak/in"), ("rss_x_input", "rss/in"), ("dlogLik_vs_glmer", "dlogLik glmer"),
              ("dfixef_vs_glmer", "dfixef glmer"), ("dsd_vs_glmer", "dSD glmer"), ("dlogLik_vs_glmmTMB", "dlogLik TMB")]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if not np.isfinite(v):
            return "nan"
        if abs(v) >= 100:
            return f"{v:.0f}"
        return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"
    if isinstance(v, str) and v.startswith("skipped"):
        return "skipped"
    if isinstance(v, str) and v.startswith(">"):
        return v.split(" (")[0].replace(" ", "")
    return str(v) if v is not None else "-"


def table(rows: list[dict[str, Any]]) -> None:
    cells = [[h for _, h in TABLE_COLS]] + [[_fmt(r.get(k, "-")) for k, _ in TABLE_COLS] for r in rows]
    w = [max(len(c[i]) for c in cells) for i in range(len(TABLE_COLS))]
    for j, c in enumerate(cells):
        print("  ".join(x.rjust(w[i]) for i, x in enumerate(c)))
        if j == 0:
            print("-" * (sum(w) + 2 * (len(w) - 1)))
    print("hierfit s: wall time of hierfit.fit on the DataFrame (design + engine + tables) after one untimed warm-up fit,")
    print("  best of 3 below 500k rows, one run at 1M; engine s: its engine part (fit_seconds); R: time of the fitting call;")
    print("  statsmodels: from_formula + fit_vb (variational Bayes, no correlation: only the time is comparable).")
    print("x/h: that engine's seconds / hierfit's; peak/in: tracemalloc peak / input frame bytes; rss/in: resident-set")
    print("  growth during a fit / input frame bytes; dlogLik: hierfit's logLik minus the other's (positive: hierfit higher);")
    print("  dfixef / dSD: max |difference| of fixed effects / random-effect SDs to glmer.")


def targets(rows: list[dict[str, Any]], sizes: list[str]) -> None:
    print("\nTargets:")
    big = [r for r in rows if r["size"] in ("100k", "1M")]

    def ratio_line(eng: str, need: float) -> None:
        have = [r for r in big if isinstance(r.get(f"{eng}_ratio"), float)]
        timed_out = [r for r in big if isinstance(r.get(f"{eng}_s"), str) and r[f"{eng}_s"].startswith(">")]
        if not have and not timed_out:
            print(f"  >= {need:.0f}x {eng} at 100k and 1M rows: not evaluated (no {eng} runs at those sizes)")
            return
        parts = [f"{r['family']} {r['size']} {r[f'{eng}_ratio']:.1f}x" for r in have]
        parts += [f"{r['family']} {r['size']} {eng} {r[f'{eng}_s']} -> > "
                  f"{float(r[f'{eng}_s'][1:].split()[0]) / r['hierfit_s']:.0f}x" for r in timed_out]
        ok = all(r[f"{eng}_ratio"] >= need for r in have) and all(
            float(r[f"{eng}_s"][1:].split()[0]) / r["hierfit_s"] >= need for r in timed_out)
        missing = {("bernoulli", s) for s in ("100k", "1M")} | {("poisson", s) for s in ("100k", "1M")}
        missing -= {(r["family"], r["size"]) for r in have + timed_out}
        note = f" (cases not run: {sorted(missing)})" if missing else ""
        print(f"  >= {need:.0f}x {eng} at 100k and 1M rows: {'met' if ok else 'NOT met'} ({', '.join(parts)}){note}")

    ratio_line("glmer", 20)
    ratio_line("glmmTMB", 5)
    b1 = [r for r in rows if r["size"] == "1M" and r["family"] == "bernoulli"]
    if b1:
        t = b1[0]["hierfit_s"]
        print(f"  1M-row bernoulli fit < 10 s: {'met' if t < 10 else 'NOT met'} ({t:.2f} s)")
    else:
        print("  1M-row bernoulli fit < 10 s: not evaluated (1M bernoulli not run)")
    ok = all(r["peak_x_input"] <= 3 for r in rows)
    per = ", ".join(f"{r['family']} {r['size']} {r['peak_x_input']:.2f}x (rss {r['rss_x_input']:.2f}x)" for r in rows)
    print(f"  peak memory <= 3x the input: {'met' if ok else 'NOT met'} (tracemalloc peak / input frame: {per})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="5k,100k,1M", help=f"comma-separated, from {', '.join(SIZES)}")
    ap.add_argument("--families", default="bernoulli,poisson")
    ap.add_argument("--reps", type=int, default=3, help="timed hierfit repetitions below 500k rows (best is kept)")
    ap.add_argument("--no-r", action="store_true", help="skip glmer / glmmTMB")
    ap.add_argument("--r-timeout", type=float, default=3600.0, help="seconds per R fit (glmer and glmmTMB separately)")
    ap.add_argument("--statsmodels-max", type=int, default=100_000, help="largest row count given to statsmodels")
    ap.add_argument("--statsmodels-timeout", type=float, default=600.0, help="seconds per statsmodels fit")
    args = ap.parse_args()
    sizes = args.sizes.split(",")
    for s in sizes:
        if s not in SIZES:
            ap.error(f"unknown size {s!r}; choose from {', '.join(SIZES)}")
    t_start = time.perf_counter()
    print(f"load average (1, 5, 15 min) at start: {tuple(round(x, 2) for x in os.getloadavg())}")
    print(f"hierfit {hierfit.__version__}, numpy {np.__version__}, pandas {pd.__version__}, {os.cpu_count()} CPUs")
    print("hierfit timings exclude numba compilation: one untimed warm-up fit precedes the timed ones.")
    use_r = not args.no_r and have_r()
    if use_r:
        versions = ("cat(R.version.string, '| lme4', format(packageVersion('lme4')), "
                    "'| glmmTMB', format(packageVersion('glmmTMB')))")
        v = subprocess.run(["Rscript", "-e", versions], capture_output=True, text=True, check=False)
        print(v.stdout.strip())
    else:
        print("glmer / glmmTMB columns skipped: " + ("--no-r given" if args.no_r else
              "Rscript with lme4, glmmTMB and jsonlite not found"))
    if any(SIZES[s][2] > args.statsmodels_max for s in sizes):
        print(f"statsmodels skipped above {args.statsmodels_max} rows (--statsmodels-max)")
    tmp = Path(tempfile.mkdtemp(prefix="glmm_speed_"))
    rows = []
    try:
        for size in sizes:
            for family in args.families.split(","):
                row = run_case(size, family, args, use_r, tmp)
                rows.append(row)
                print(json.dumps(row, default=float), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average (1, 5, 15 min) at end: {tuple(round(x, 2) for x in os.getloadavg())}; "
          f"total {time.perf_counter() - t_start:.0f} s\n")
    table(rows)
    targets(rows, sizes)


if __name__ == "__main__":
    main()
