"""Speed of the GLMM core against glmer and glmmTMB on simulated market trees.

Model (both families)::

    y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)

on trees of markets x submarkets with rows spread evenly: 10 x 5 (5k rows), 100 x 10 (100k)
and 1,000 x 20 (1M), each simulated with a fixed seed.  The same data are written to CSV
and, when ``Rscript`` with lme4 and glmmTMB is available, fitted there in the same run
(glmer and glmmTMB with their default controls, timed around the fitting call only).
Columns are skipped, with a note, when R is absent.

Printed per case: wall seconds of hierfit's core (best of ``--reps``), of glmer and
glmmTMB, the ratios, hierfit's peak traced memory during the fit relative to the input
arrays (``tracemalloc``, in a separate run), and hierfit's agreement with glmer: logLik
difference and the largest absolute difference of fixed effects and random-effect SDs.

Usage::

    python benchmarks/glmm_core_speed.py                     # all sizes, both families
    python benchmarks/glmm_core_speed.py --sizes 5k,100k --families bernoulli --no-r
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from hierfit.engines.mixed.glmm import RandomBlock, fit_glmm
from hierfit.model.family import get_family

SIZES = {"5k": (10, 5, 5_000), "100k": (100, 10, 100_000), "1M": (1_000, 20, 1_000_000)}

#: glmer / glmmTMB fits of one CSV (``which``: "glmer", "glmmTMB" or "both"), as JSON with the
#: names of the fixed effects and of the SD rows, so that they can be matched by name
R_SCRIPT = r"""
suppressMessages({library(lme4); library(glmmTMB)})
args <- commandArgs(TRUE)
d <- read.csv(args[1]); fam <- args[2]; which <- args[3]
d$market <- factor(d$market); d$submarket <- factor(d$submarket)
f <- y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)
famobj <- if (fam == "bernoulli") binomial() else poisson()
out <- list()
if (which %in% c("both", "glmer")) {
  t <- system.time(m <- glmer(f, data = d, family = famobj))[["elapsed"]]
  vc <- as.data.frame(VarCorr(m)); sdr <- vc[is.na(vc$var2), ]
  out$glmer <- list(seconds = t, logLik = as.numeric(logLik(m)), fixef = as.list(fixef(m)),
                    sd = sdr$sdcor, sd_grp = sdr$grp, sd_var = sdr$var1,
                    messages = m@optinfo$conv$lme4$messages)
}
if (which %in% c("both", "glmmTMB")) {
  t <- system.time(m2 <- glmmTMB(f, data = d, family = famobj))[["elapsed"]]
  out$glmmTMB <- list(seconds = t, logLik = as.numeric(logLik(m2)),
                      fixef = as.list(fixef(m2)$cond), pdHess = m2$sdr$pdHess)
}
cat(jsonlite::toJSON(out, auto_unbox = TRUE, digits = NA))
"""


def simulate(markets: int, subs: int, n: int, family: str, seed: int = 20261201
             ) -> dict[str, np.ndarray]:
    """One seeded market tree: columns market, submarket (global code), x1, x2, y."""
    rng = np.random.default_rng(seed + (0 if family == "bernoulli" else 1))
    market = np.sort(rng.integers(0, markets, n))
    sub = market * subs + rng.integers(0, subs, n)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    L = np.array([[0.5, 0.0], [0.1, 0.3]])
    bm = rng.normal(size=(markets, 2)) @ L.T
    bs = rng.normal(0.0, 0.3, markets * subs)
    eta = -0.3 + 0.5 * x1 - 0.4 * x2 + bm[market, 0] + bm[market, 1] * x1 + bs[sub]
    if family == "bernoulli":
        y = (rng.uniform(size=n) < 1.0 / (1.0 + np.exp(-eta))).astype(float)
    else:
        y = rng.poisson(np.exp(eta)).astype(float)
    return {"market": market, "submarket": sub, "x1": x1, "x2": x2, "y": y}


def _inputs(d: dict[str, np.ndarray], markets: int, subs: int
            ) -> tuple[np.ndarray, np.ndarray, list[RandomBlock]]:
    n = d["y"].size
    X = np.column_stack([np.ones(n), d["x1"], d["x2"]])
    blocks = [RandomBlock(d["submarket"], markets * subs, np.ones(n)),
              RandomBlock(d["market"], markets, np.column_stack([np.ones(n), d["x1"]]))]
    return X, d["y"], blocks


def _nbytes(X: np.ndarray, y: np.ndarray, blocks: list[RandomBlock]) -> int:
    return X.nbytes + y.nbytes + sum(b.group_index.nbytes + np.asarray(b.Z).nbytes for b in blocks)


def fit_hierfit(d: dict[str, np.ndarray], markets: int, subs: int, family: str, reps: int
                ) -> dict[str, object]:
    """Best-of-``reps`` wall time, then one traced run for the peak memory."""
    X, y, blocks = _inputs(d, markets, subs)
    fam = get_family(family)
    best, sol = np.inf, None
    for _ in range(reps):
        t0 = time.perf_counter()
        sol = fit_glmm(X, y, blocks, fam)
        best = min(best, time.perf_counter() - t0)
    tracemalloc.start()
    fit_glmm(X, y, blocks, fam)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert sol is not None
    return {"seconds": best, "peak_ratio": peak / _nbytes(X, y, blocks), "sol": sol,
            "input_mb": _nbytes(X, y, blocks) / 2**20}


def have_r() -> bool:
    """Whether Rscript with lme4, glmmTMB and jsonlite is on the PATH."""
    if shutil.which("Rscript") is None:
        return False
    res = subprocess.run(["Rscript", "-e", "library(lme4); library(glmmTMB); library(jsonlite)"],
                         capture_output=True, text=True, check=False)
    return res.returncode == 0


def fit_r(csv: Path, family: str, which: str, timeout: float) -> dict[str, dict[str, object]]:
    """glmer / glmmTMB fits of the CSV (``{}`` entries on failure or timeout)."""
    with tempfile.NamedTemporaryFile("w", suffix=".R", delete=False) as fh:
        fh.write(R_SCRIPT)
    try:
        res = subprocess.run(["Rscript", fh.name, str(csv), family, which], capture_output=True,
                             text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": {"message": f"R timed out after {timeout:.0f} s", "timeout": True}}
    finally:
        os.unlink(fh.name)
    if res.returncode != 0:
        return {"error": {"message": res.stderr.strip()[-300:]}}
    return json.loads(res.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="5k,100k,1M")
    ap.add_argument("--families", default="bernoulli,poisson")
    ap.add_argument("--reps", type=int, default=3, help="hierfit repetitions (best is kept)")
    ap.add_argument("--no-r", action="store_true", help="skip glmer / glmmTMB")
    ap.add_argument("--r-timeout", type=float, default=7200.0, help="seconds per R run")
    args = ap.parse_args()
    use_r = not args.no_r and have_r()
    print(f"load average (1, 5, 15 min) at start: {os.getloadavg()}")
    if not use_r:
        print("glmer / glmmTMB columns skipped: " + ("--no-r given" if args.no_r else
              "Rscript with lme4, glmmTMB and jsonlite not found"))
    tmp = Path(tempfile.mkdtemp(prefix="glmm_bench_"))
    rows = []
    for size in args.sizes.split(","):
        markets, subs, n = SIZES[size]
        for family in args.families.split(","):
            d = simulate(markets, subs, n, family)
            csv = tmp / f"{family}_{size}.csv"
            np.savetxt(csv, np.column_stack([d["market"], d["submarket"], d["x1"], d["x2"], d["y"]]),
                       delimiter=",", header="market,submarket,x1,x2,y", comments="", fmt="%.17g")
            h = fit_hierfit(d, markets, subs, family, args.reps if n < 500_000 else 1)
            sol = h["sol"]
            r = fit_r(csv, family, "both", args.r_timeout) if use_r else {}
            row = {"size": size, "family": family, "n": n, "hierfit_s": h["seconds"],
                   "peak_x_input": h["peak_ratio"], "input_MB": h["input_mb"],
                   "loglik": sol.loglik, "converged": sol.converged}  # type: ignore[attr-defined]
            for eng in ("glmer", "glmmTMB"):
                if eng in r:
                    row[f"{eng}_s"] = r[eng]["seconds"]
                    row[f"{eng}_ratio"] = r[eng]["seconds"] / h["seconds"]
            if "glmer" in r:
                g = r["glmer"]
                row["dlogLik_vs_glmer"] = sol.loglik - g["logLik"]  # type: ignore[attr-defined]
                row["dfixef_vs_glmer"] = float(np.max(np.abs(sol.beta - np.array(list(g["fixef"].values())))))  # type: ignore[attr-defined]
                ours = np.concatenate([sol.sds[0], sol.sds[1]])  # type: ignore[attr-defined]
                row["dsd_vs_glmer"] = float(np.max(np.abs(ours - np.array(g["sd"]))))
                row["glmer_messages"] = g.get("messages")
            if "glmmTMB" in r:
                row["dlogLik_vs_glmmTMB"] = sol.loglik - r["glmmTMB"]["logLik"]  # type: ignore[attr-defined]
            if "error" in r:
                row["r_error"] = r["error"]["message"]
            rows.append(row)
            print(json.dumps(row, default=float), flush=True)
    print(f"load average (1, 5, 15 min) at end: {os.getloadavg()}")
    _table(rows)
    shutil.rmtree(tmp, ignore_errors=True)


def _table(rows: list[dict[str, object]]) -> None:
    cols = ["size", "family", "hierfit_s", "glmer_s", "glmmTMB_s", "glmer_ratio", "glmmTMB_ratio",
            "peak_x_input", "dlogLik_vs_glmer", "dfixef_vs_glmer", "dsd_vs_glmer",
            "dlogLik_vs_glmmTMB"]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for row in rows:
        vals = []
        for c in cols:
            v = row.get(c, "-")
            vals.append(f"{v:.3g}" if isinstance(v, float) else str(v))
        print("| " + " | ".join(vals) + " |")


if __name__ == "__main__":
    main()
