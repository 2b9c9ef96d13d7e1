"""Row-pass kernels generated for one random-effects structure and compiled with numba.

A generic loop over a row's entries reads its per-entry tables through small arrays that
the compiler cannot keep in registers (they might alias the output), which made every
pass ~10x slower than hand-written code (measured: 44 vs 4 ns per row for the system of
``(1 + x | market) + (1 | market:submarket)``).  So the passes are written out as
straight-line Python for the structure at hand -- which factor and column each entry is,
whether it is a column of ones, whether it sits in the dense root -- with every numeric
coefficient hoisted into a local, then compiled.  The source goes to a cache directory
(``HIERFIT_KERNEL_DIR``, default: the system temp directory) under a name derived from
its text, so numba's on-disk cache makes later fits with the same structure compile-free.

Kernels (``E``, ``C`` as in :mod:`._glmm_kernels`):

* ``linpred(out, base, bvec, E, C, gidx, zc)``: ``out = base + Z_t b``;
* ``acc<p>(out, w, r, X, xc, xs, Fr, Fg, E, C, gidx, zc)``: weighted system rows with
  ``p`` fixed-effects columns and the working response;
* ``scat1(out1, c1, E, C, gidx, zc)``, ``scat2(out1, out2, c1, c2, ...)``: grouped sums;
* ``quad(out, sig, tmat, E, C, gidx, zc)``: leverages ``z~' S z~`` with ``z~ = T' z_t``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

__all__ = ["Structure", "kernels"]

#: (factor, src, is_root) per entry, and the columns per factor.
Structure = tuple[tuple[tuple[int, int, int], ...], tuple[int, ...]]

_LOADED: dict[str, ModuleType] = {}


def _prelude(ents: tuple[tuple[int, int, int], ...], factors: list[int], rows: bool) -> list[str]:
    """Hoist per-entry coefficients into locals (``rows``: system-row ones too)."""
    out = []
    for e, (_, src, root) in enumerate(ents):
        out.append(f"    cn{e} = C[{e}, 0]; sc{e} = 1.0 / C[{e}, 1]")
        out.append(f"    va{e} = E[{e}, 6]; vb{e} = E[{e}, 7]")
        if src < 0:
            out.append(f"    one{e} = (1.0 - cn{e}) * sc{e}")
        if rows:
            out.append(f"    ra{e} = E[{e}, 2]; rb{e} = E[{e}, 3]; ga{e} = E[{e}, 4]; gb{e} = E[{e}, 5]")
    return out


def _row_values(ents: tuple[tuple[int, int, int], ...], factors: list[int]) -> list[str]:
    out = [f"        g{f} = gidx[{f}, i]" for f in factors]
    for e, (f, src, _) in enumerate(ents):
        out.append(f"        v{e} = one{e}" if src < 0 else f"        v{e} = (zc[{src}, i] - cn{e}) * sc{e}")
    return out


def _row_locs(ents: tuple[tuple[int, int, int], ...]) -> list[str]:
    out = []
    for e, (f, _, root) in enumerate(ents):
        out.append(f"        R{e} = ra{e} * g{f} + rb{e}")
        out.append(f"        G{e} = ga{e} * g{f} + gb{e}" if root else f"        G{e} = gb{e}")
    return out


def _source(struct: Structure, p_list: tuple[int, ...]) -> str:
    ents, fK = struct
    factors = sorted({f for f, _, _ in ents})
    ne = len(ents)
    L = ["import numpy as np", "import numba", "", "_jit = numba.njit(cache=True, nogil=True)", ""]
    # ---- linear predictor
    L += ["@_jit", "def linpred(out, base, bvec, E, C, gidx, zc):"]
    L += _prelude(ents, factors, rows=False)
    L += ["    for i in range(out.size):"] + _row_values(ents, factors)
    terms = " + ".join(f"v{e} * bvec[va{e} * g{f} + vb{e}]" for e, (f, _, _) in enumerate(ents))
    L += [f"        out[i] = base[i] + {terms}", ""]
    # ---- grouped sums
    for two in (False, True):
        name = "scat2" if two else "scat1"
        args = "out1, out2, c1, c2" if two else "out1, c1"
        L += ["@_jit", f"def {name}({args}, E, C, gidx, zc):"]
        L += _prelude(ents, factors, rows=False)
        L += ["    for i in range(c1.size):", "        a1 = c1[i]"]
        if two:
            L += ["        a2 = c2[i]"]
        L += _row_values(ents, factors)
        for e, (f, _, _) in enumerate(ents):
            L += [f"        q = va{e} * g{f} + vb{e}", f"        out1[q] += a1 * v{e}"]
            if two:
                L += [f"        out2[q] += a2 * v{e}"]
        L += [""]
    # ---- weighted system rows, for each number of fixed-effects columns
    for p in p_list:
        nk = ne + p + 1
        L += ["@_jit", f"def acc{p}(out, w, r, X, xc, xs, Fr, Fg, E, C, gidx, zc):"]
        L += _prelude(ents, factors, rows=True)
        for j in range(p + 1):
            L += [f"    R{ne + j} = Fr[{j}]; G{ne + j} = Fg[{j}]"]
        for j in range(p):
            L += [f"    xc{j} = xc[{j}]; xs{j} = 1.0 / xs[{j}]"]
        L += ["    for i in range(w.size):", "        wi = w[i]", "        if wi == 0.0:",
              "            continue"]
        L += _row_values(ents, factors) + _row_locs(ents)
        for j in range(p):
            L += [f"        v{ne + j} = (X[i, {j}] - xc{j}) * xs{j}"]
        L += [f"        v{nk - 1} = r[i]"]
        for k in range(nk):
            L += [f"        t = wi * v{k}"]
            for k2 in range(k, nk):
                L += [f"        out[R{k} + G{k2}] += t * v{k2}"]
        L += [""]
    # ---- leverages
    L += ["@_jit", "def quad(out, sig, tmat, E, C, gidx, zc):"]
    L += _prelude(ents, factors, rows=True)
    starts: dict[int, int] = {}
    tpos = 0
    for f, K in enumerate(fK):
        for b in range(K):
            for a in range(K):
                L += [f"    T{f}_{b}_{a} = tmat[{tpos + b * K + a}]"]
        tpos += K * K
    for e, (f, _, _) in enumerate(ents):
        starts.setdefault(f, e)
    L += ["    for i in range(out.size):"] + _row_values(ents, factors) + _row_locs(ents)
    for e, (f, _, _) in enumerate(ents):
        e0 = starts[f]
        a = e - e0
        s = " + ".join(f"T{f}_{b}_{a} * v{e0 + b}" for b in range(fK[f]))
        L += [f"        z{e} = {s}"]
    acc = []
    for k in range(ne):
        acc.append(f"z{k} * z{k} * sig[R{k} + G{k}]")
        acc += [f"2.0 * z{k} * z{k2} * sig[R{k} + G{k2}]" for k2 in range(k + 1, ne)]
    L += ["        out[i] = " + " + ".join(acc), ""]
    return "\n".join(L)


def _cache_dir() -> Path:
    base = os.environ.get("HIERFIT_KERNEL_DIR") or os.path.join(tempfile.gettempdir(),
                                                                 f"hierfit-kernels-{os.getuid()}")
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def load(src: str, prefix: str) -> ModuleType:
    """Write ``src`` to the cache directory (named by its hash), import and return it."""
    key = hashlib.sha1(src.encode()).hexdigest()[:16]
    if key in _LOADED:
        return _LOADED[key]
    path = _cache_dir() / f"{prefix}_{key}.py"
    if not path.exists() or path.read_text() != src:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(src)
        os.replace(tmp, path)  # atomic: concurrent fits never import a partial file
    spec = importlib.util.spec_from_file_location(f"_hierfit_{prefix}_{key}", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    # numba's cache re-imports a function's module by name when it loads the function.
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    _LOADED[key] = mod
    return mod


def kernels(struct: Structure, p: int) -> ModuleType:
    """The compiled kernels of a structure (``acc0`` and ``acc<p>`` for the systems)."""
    return load(_source(struct, tuple(sorted({0, int(p)}))), "glmm_rows")
