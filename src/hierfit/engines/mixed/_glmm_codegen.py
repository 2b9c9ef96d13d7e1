"""Row-pass kernels generated for one random-effects structure and compiled with numba.

A generic loop over a row's entries reads its per-entry tables through small arrays that
the compiler cannot keep in registers (they might alias the output), which made every
pass ~10x slower than hand-written code (measured: 44 vs 4 ns per row for the system of
``(1 + x | market) + (1 | market:submarket)``).  So the passes are written out as
straight-line Python for the structure at hand -- which factor and column each entry is,
whether it is a column of ones, whether it sits in the dense root -- with every numeric
coefficient hoisted into a local, then compiled.  The source goes to a cache directory
(``HIERFIT_KERNEL_DIR``, default: the system temp directory) under a name derived from
its text, so numba's on-disk cache makes later fits with the same structure compile-free (a
directory only its user can write: see :func:`_cache_dir`).

Kernels (``E``, ``C`` as in :mod:`._glmm_kernels`):

* ``linpred(out, base, bvec, E, C, gidx, zc)``: ``out = base + Z_t b``;
* ``acc0(out, w, r, X, xc, xs, Fr, Fg, E, C, gidx, zc)``: weighted system rows with the
  working response (``acc`` with ``p`` fixed-effects columns: :func:`kernels_x`, its own
  module so that a new ``p`` recompiles only it);
* ``scat1(out1, c1, E, C, gidx, zc)``, ``scat2(out1, out2, c1, c2, ...)``: grouped sums;
* ``xparts(outx, fixed, w, r, X, xc, xs, E, C, gidx, zc)``: the fixed-effects columns of a
  system -- ``Z_t' W X_t`` as ``(q, p)`` (vector layout by column) and
  ``[X_t r]' W [X_t r]``;
* ``quad(out, sig, tmat, E, C, gidx, zc)``: leverages ``z~' S z~`` with ``z~ = T' z_t``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["Structure", "kernels"]

#: (factor, src, is_root) per entry, and the columns per factor.
Structure = tuple[tuple[tuple[int, int, int], ...], tuple[int, ...]]

_LOADED: dict[str, ModuleType] = {}
#: Rows per chunk of the dense fixed-effects product in ``xparts``.
_XCHUNK = 2048


def _prelude(ents: tuple[tuple[int, int, int], ...], factors: list[int], rows: bool) -> list[str]:
    """Hoist per-entry coefficients into locals (``rows``: system-row ones too), and each
    factor's codes and each raw column into a name of its own (``gidx`` and ``zc`` are tuples
    of the caller's row arrays, not copies)."""
    out = [f"    gi{f} = gidx[{f}]" for f in factors]
    out += [f"    zr{src} = zc[{src}]" for src in sorted({s for _, s, _ in ents if s >= 0})]
    for e, (_, src, root) in enumerate(ents):
        out.append(f"    cn{e} = C[{e}, 0]; sc{e} = 1.0 / C[{e}, 1]")
        out.append(f"    va{e} = E[{e}, 6]; vb{e} = E[{e}, 7]")
        if src < 0:
            out.append(f"    one{e} = (1.0 - cn{e}) * sc{e}")
        if rows:
            out.append(f"    ra{e} = E[{e}, 2]; rb{e} = E[{e}, 3]; ga{e} = E[{e}, 4]; gb{e} = E[{e}, 5]")
    return out


def _row_values(ents: tuple[tuple[int, int, int], ...], factors: list[int]) -> list[str]:
    out = [f"        g{f} = gi{f}[i]" for f in factors]
    for e, (f, src, _) in enumerate(ents):
        out.append(f"        v{e} = one{e}" if src < 0 else f"        v{e} = (zr{src}[i] - cn{e}) * sc{e}")
    return out


def _row_locs(ents: tuple[tuple[int, int, int], ...]) -> list[str]:
    out = []
    for e, (f, _, root) in enumerate(ents):
        out.append(f"        R{e} = ra{e} * g{f} + rb{e}")
        out.append(f"        G{e} = ga{e} * g{f} + gb{e}" if root else f"        G{e} = gb{e}")
    return out


def system_prelude(p: int) -> list[str]:
    """Locals of the fixed-effects part of a system update with ``p`` columns."""
    L = [f"    R{{r}} = Fr[{p}]; G{{r}} = Fg[{p}]"]
    for j in range(p):
        L += [f"    RX{j} = Fr[{j}]; GX{j} = Fg[{j}]; xm{j} = xc[{j}]; xi{j} = 1.0 / xs[{j}]"]
    return [x.replace("{r}", "r") for x in L]


def x_values(p: int, ind: str) -> list[str]:
    """Standardised fixed-effects values ``x0..`` of row ``i``."""
    return [f"{ind}x{j} = (X[i, {j}] - xm{j}) * xi{j}" for j in range(p)]


def system_update(ne: int, p: int, ind: str, wt: str, resp: str) -> list[str]:
    """Add one row's ``wt * v v'`` (entries ``v0..``, fixed values ``x0..``, response) to
    ``out``, every pair written out (a loop over the fixed columns was 5x slower)."""
    names = [(f"v{k}", f"R{k}", f"G{k}") for k in range(ne)]
    names += [(f"x{j}", f"RX{j}", f"GX{j}") for j in range(p)] + [("rv", "Rr", "Gr")]
    L = [f"{ind}rv = {resp}"]
    for k, (vk, rk, _) in enumerate(names):
        L += [f"{ind}tw = {wt} * {vk}"]
        L += [f"{ind}out[{rk} + {g2}] += tw * {v2}" for v2, _, g2 in names[k:]]
    return L


def _source(struct: Structure) -> str:
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
    # ---- weighted system rows without fixed-effects columns (the u-only PIRLS step)
    L += _acc_source(ents, factors, 0, "acc0")
    # ---- the fixed-effects columns of a system: Z_t'W X_t per group and [X_t r]'W[X_t r]
    # (the dense block by BLAS on chunks, the scatter with w x precomputed: 23 vs 53 ms for
    # 1M rows and p = 3 against one row loop accumulating both)
    L += ["@_jit", "def xparts(outx, fixed, w, r, X, xc, xs, E, C, gidx, zc):"]
    L += _prelude(ents, factors, rows=False)
    L += ["    p = xc.size", "    xi = 1.0 / xs", f"    xt = np.zeros(({_XCHUNK}, p + 1))",
          f"    wxt = np.zeros(({_XCHUNK}, p + 1))",
          f"    for s in range(0, w.size, {_XCHUNK}):", f"        m = min({_XCHUNK}, w.size - s)",
          "        for j in range(m):", "            i = s + j", "            wi = w[i]",
          "            for jx in range(p):", "                v = (X[i, jx] - xc[jx]) * xi[jx]",
          "                xt[j, jx] = v", "                wxt[j, jx] = wi * v",
          "            xt[j, p] = r[i]", "            wxt[j, p] = wi * r[i]",
          f"        for j in range(m, {_XCHUNK}):", "            for jx in range(p + 1):",
          "                xt[j, jx] = 0.0", "                wxt[j, jx] = 0.0",
          "        fixed += wxt.T @ xt", "        for j in range(m):", "            i = s + j"]
    L += ["    " + x for x in _row_values(ents, factors)]
    L += [f"            q{e} = va{e} * g{f} + vb{e}" for e, (f, _, _) in enumerate(ents)]
    L += ["            for jx in range(p):", "                a = wxt[j, jx]"]
    L += [f"                outx[q{e}, jx] += a * v{e}" for e in range(ne)]
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


def _acc_source(ents: tuple[tuple[int, int, int], ...], factors: list[int], p: int,
                name: str) -> list[str]:
    ne = len(ents)
    L = ["@_jit", f"def {name}(out, w, r, X, xc, xs, Fr, Fg, E, C, gidx, zc):"]
    L += _prelude(ents, factors, rows=True) + system_prelude(p)
    L += ["    for i in range(w.size):", "        wi = w[i]", "        if wi == 0.0:",
          "            continue"]
    L += _row_values(ents, factors) + _row_locs(ents) + x_values(p, "        ")
    return L + system_update(ne, p, "        ", "wi", "r[i]") + [""]


def _header() -> list[str]:
    return ["import numpy as np", "import numba", "", "_jit = numba.njit(cache=True, nogil=True)", ""]


_PRIVATE: list[Path] = []


def _cache_dir() -> Path:
    """Directory of the generated sources and their numba caches.

    ``HIERFIT_KERNEL_DIR`` if set, else a per-user directory in the temp dir, created
    private (0700); if it exists but belongs to someone else, a fresh private directory
    is used instead (compiled code must not come from a directory others can write).
    """
    env = os.environ.get("HIERFIT_KERNEL_DIR")
    if env:
        path = Path(env)
        path.mkdir(parents=True, exist_ok=True)
        return path
    getuid = getattr(os, "getuid", None)
    path = Path(tempfile.gettempdir()) / f"hierfit-kernels-{getuid() if getuid else 'user'}"
    path.mkdir(mode=0o700, exist_ok=True)
    st = path.stat()
    if getuid is not None and (st.st_uid != getuid() or st.st_mode & 0o022):
        if not _PRIVATE:
            _PRIVATE.append(Path(tempfile.mkdtemp(prefix="hierfit-kernels-")))
        return _PRIVATE[0]
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


class GeneratedModule:
    """A generated kernel module, made by ``make(*args)``, that pickles as that recipe.

    A module pickles by its name, and a generated module's name exists only in the process
    that generated it: a shard of a streamed GLMM holding one could not move to another Dask
    worker (after the worker that built it died, say) -- the receiving worker failed to
    unpickle it and the pass hung. Unpickled, this makes the module again (from the kernel
    cache, or by writing and compiling it once). Attributes are the module's.
    """

    def __init__(self, make: Callable[..., ModuleType], *args: Any) -> None:
        self._make, self._args = make, args
        self._module = make(*args)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # not the module's: never recurse while being built
            raise AttributeError(name)
        return getattr(self._module, name)

    def __reduce__(self) -> tuple[Any, ...]:
        return (GeneratedModule, (self._make, *self._args))


def kernels(struct: Structure) -> ModuleType:
    """The compiled kernels of a random-effects structure (systems without fixed columns)."""
    return load(_source(struct), "glmm_rows")


def kernels_x(struct: Structure, p: int) -> ModuleType:
    """``acc(out, w, r, X, xc, xs, Fr, Fg, E, C, gidx, zc)`` with ``p`` fixed-effects columns.

    A module of its own: the structure's other kernels do not recompile for a new ``p``.
    """
    ents, _ = struct
    factors = sorted({f for f, _, _ in ents})
    return load("\n".join(_header() + _acc_source(ents, factors, p, "acc")), "glmm_acc")
