"""Engine ``stan``: the ``pymc`` engine's model as generated Stan code, compiled and sampled by PyStan.

PyStan (httpstan wheels) compiles offline; compiled models are cached on disk by httpstan
under a hash of the program text, so a second fit of the same spec -- even on other data,
since priors are passed as data -- does not recompile (``info["compiled"]`` says whether
this fit compiled). PyStan runs its own asyncio event loop; inside a running loop (Jupyter)
this engine runs it on a worker thread, so no ``nest_asyncio`` is needed.

A streamed design (a Parquet lake, a Dask DataFrame) runs the same marginal program on
statistics gathered in one pass over the source (:mod:`.stream`).

Families: gaussian (effects integrated out, :mod:`.marginal`), bernoulli, binomial (trials),
poisson and negative binomial (NB2), with offsets and prior weights; every non-gaussian family
(and ``likelihood="rows"``) runs the same generated per-row program with the family as data,
so one compilation serves all of them (see :mod:`.stancode` for the likelihoods). Bernoulli,
binomial and poisson rows that share covariates, groups, offset and weight are summed first
(``aggregate=True``, exact: :mod:`.aggregate`).

Examples
--------
>>> import hierfit
>>> sim = hierfit.simulate(n_markets=4, n_submarkets=3, rows_per_submarket=20, seed=1)
>>> fit = hierfit.fit(sim.formula, sim.data, engine="stan", draws=200, tune=200, chains=2,
...                   progressbar=False, checks={"few_groups": "ignore", "ess": "ignore"})
>>> sorted(fit.native().posterior.data_vars)[:3]
['beta', 'cor_market', 'r_market']
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib.metadata
import io
import sys
import tempfile
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import numpy as np

from hierfit.design import Design, StreamedDesign
from hierfit.engines.bayes.aggregate import aggregate_rows, drop_zero_weights
from hierfit.engines.bayes.cost import MAX_MARGINAL_SIZE, predicted_seconds, problem_size
from hierfit.engines.bayes.result import BayesFit, assemble_fit
from hierfit.engines.bayes.stancode import stan_code, stan_data
from hierfit.engines.bayes.stream import check_streamed_options, gather_statistics, scale_design
from hierfit.engines.bayes.structure import BayesStructure, SufficientStats, canonical_rows, make_structure
from hierfit.engines.options import option
from hierfit.engines.state import LoadContext, StateReader
from hierfit.exceptions import ConvergenceError, EngineError, SpecError
from hierfit.model import ModelSpec


@dataclass(frozen=True)
class OPTIONS:
    """Options of the ``stan`` engine (names as the ``pymc`` engine's).

    Attributes
    ----------
    draws, tune, chains
        Post-warm-up draws and warm-up iterations per chain, number of chains.
    target_accept
        Stan's ``adapt_delta``; raise toward 0.99 if divergences are reported.
    max_treedepth
        NUTS maximum tree depth.
    seed
        Stan's random seed: same seed, same draws.
    likelihood
        ``"marginal"`` (gaussian: effects integrated out, a dense algebra), ``"rows"`` (the
        per-row program), or ``"auto"``: the marginal program while the cost model predicts it
        cheaper, the per-row one beyond (:func:`choose_likelihood`; other families: rows).
    progressbar
        Show Stan's progress and console messages (build notices, stanc's warnings -- false
        alarms about priors, which are passed as data -- and the sampler's informational
        messages). ``False`` holds them back; hierfit's own checks (divergences, R-hat, ESS)
        report what matters either way.
    new_groups, log_likelihood, posterior_predictive, aggregate
        As for the ``pymc`` engine.
    """

    draws: int = option(1000, ge=1)
    tune: int = option(1000, ge=0)
    chains: int = option(4, ge=1)
    target_accept: float = option(0.9, gt=0, lt=1)
    max_treedepth: int = option(10, ge=1)
    seed: int = 0
    likelihood: Literal["auto", "marginal", "rows"] = "auto"
    progressbar: bool = True
    new_groups: Literal["parent", "sample"] = "sample"
    log_likelihood: bool | None = None
    posterior_predictive: bool = False
    aggregate: bool = True


FAST_OPTIONS: dict = {"draws": 300, "tune": 300, "chains": 2, "progressbar": False}


def _import_stan():
    """Import pystan; it still imports ``pkg_resources`` (gone from setuptools >= 81): shim it."""
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        shim = types.ModuleType("pkg_resources")
        shim.EntryPoint = importlib.metadata.EntryPoint  # type: ignore[attr-defined]
        shim.iter_entry_points = lambda group: iter(importlib.metadata.entry_points(group=group))  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = shim
    import stan

    _share_compiled_models()
    return stan


def model_name(program_code: str) -> str:
    """httpstan's cache key of a program, with the base interpreter in place of the venv's.

    httpstan hashes ``sys.executable`` into every model name, so each new virtual
    environment -- every fresh clone's ``make test`` and CI run -- recompiled every model
    (~90 s each, ~5 minutes of a clean clone's suite). The compiled module depends on the
    interpreter (its version and platform, both still hashed) and on httpstan's version, not
    on which venv of that interpreter loads it.
    """
    import base64
    import hashlib

    import httpstan

    digest = hashlib.blake2b(digest_size=5)  # httpstan.models.calculate_model_name's fields
    for part in (program_code, httpstan.__version__, sys.platform, str(sys.maxsize), sys.version,
                 getattr(sys, "_base_executable", sys.executable)):
        digest.update(part.encode())
    return f"models/{base64.b32encode(digest.digest()).decode().lower()}"


def _share_compiled_models() -> None:
    """Make httpstan (its server, pystan's client, the cache checks here) use :func:`model_name`."""
    import httpstan.models

    httpstan.models.calculate_model_name = model_name


def _release_workers() -> None:
    """Shut down httpstan's process pool after sampling (a fresh, idle one replaces it).

    The pool's manager and feeder threads outlive a fit; a later ``fork`` of this process --
    PyMC's chain workers -- then inherits their held locks and hangs forever. Without threads
    left behind, engines can be fitted in any order in one process.
    """
    import concurrent.futures
    import multiprocessing as mp

    from httpstan import services_stub

    services_stub.executor.shutdown(wait=True)
    services_stub.executor = concurrent.futures.ProcessPoolExecutor(mp_context=mp.get_context("fork"),
                                                                     initializer=services_stub.init_worker)


@contextlib.contextmanager
def _quiet(enabled: bool):
    """Hold back pystan's console chatter (build notices, stanc's prior warnings, sampler
    messages: ~90 lines per fit) when no progress display was asked for; the captured text
    is returned so that an error can quote it."""
    sink = io.StringIO()
    if not enabled:
        yield sink
        return
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield sink


def _tail(text: str, lines: int = 8) -> str:
    kept = [ln for ln in text.strip().splitlines() if ln.strip()][-lines:]
    return (" Stan's last messages: " + " | ".join(kept)) if kept else ""


def _run(fn, *args, **kwargs):
    """Call a pystan function, on a worker thread when an event loop already runs here (Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn(*args, **kwargs)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def is_compiled(code: str) -> bool:
    """Whether httpstan's cache holds this program completely (the next build will not compile)."""
    _import_stan()
    import httpstan.cache
    import httpstan.models

    name = httpstan.models.calculate_model_name(code)
    if name not in set(httpstan.cache.list_model_names()):
        return False
    # an interrupted compilation leaves the module without its compiler log, which httpstan then fails to read
    if not (httpstan.cache.model_directory(name) / "stderr.log").exists():
        return False
    # the cache is shared by every environment of this user, and a module links to the Stan
    # runtime (libtbb) of the environment that compiled it: where that environment is gone
    # (a deleted virtualenv or clone) the module no longer loads, and it must be compiled again
    try:
        httpstan.models.import_services_extension_module(name)
    except (ImportError, KeyError):  # KeyError: no module in the folder
        return False
    return True


def compile_program(code: str) -> bool:
    """Compile ``code`` into httpstan's cache unless it is there; return whether it compiled.

    Done here rather than through ``stan.build``: pystan's HTTP client gives up after 5
    minutes (easily reached on a busy machine) and leaves a half-written cache entry.
    """
    if is_compiled(code):
        return False
    import fcntl

    import httpstan.cache
    import httpstan.models

    name = httpstan.models.calculate_model_name(code)
    lock = httpstan.cache.cache_directory() / f"hierfit-{name.split('/')[-1]}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as fh:
        # one compilation per program at a time (parallel test workers, several sessions)
        fcntl.flock(fh, fcntl.LOCK_EX)
        if is_compiled(code):
            return False
        _compile_locked(code, name)
    return True


class BackgroundCompile:
    """A compilation of one program into httpstan's cache, running in a child process.

    A child, not a thread: the C++ compiler is a process anyway, and no thread of this
    process may be alive when a sampler later forks its chain workers. The fit that needs the
    program blocks on :func:`compile_program`'s lock until the child is done, and compiles
    itself if the child failed or was cancelled (a half-written cache entry is redone).
    """

    def __init__(self, code: str) -> None:
        import subprocess

        self._dir = tempfile.TemporaryDirectory(prefix="hierfit-stan-")
        source = Path(self._dir.name) / "model.stan"
        source.write_text(code)
        self._log = open(Path(self._dir.name) / "compile.log", "wb")  # noqa: SIM115 -- closed in _finish
        self._process = subprocess.Popen([sys.executable, "-m", "hierfit.engines.bayes.stan_engine", str(source)],
                                         stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def running(self) -> bool:
        if self._process.poll() is None:
            return True
        self._finish()
        return False

    def cancel(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            self._process.wait()
        self._finish()

    def _finish(self) -> None:
        if not self._log.closed:
            self._log.close()
            self._dir.cleanup()


def prepare(spec: ModelSpec, options: dict) -> BackgroundCompile | None:
    """Start compiling the program a fit of ``spec`` with ``options`` needs, unless cached
    (the engine-registry hook :meth:`hierfit.engines.registry.EngineEntry.prepare`)."""
    code = stan_code(spec, likelihood=options.get("likelihood", "auto"))
    _import_stan()
    return None if is_compiled(code) else BackgroundCompile(code)


def _compile_locked(code: str, name: str) -> None:
    import importlib.resources
    import subprocess

    import httpstan.cache
    import httpstan.models

    httpstan.cache.delete_model_directory(name)
    with importlib.resources.path("httpstan", "stanc") as stanc, tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.stan"
        path.write_text(code)
        done = subprocess.run([stanc, "--name", f"model_{name.split('/')[1]}", "--o", str(Path(tmp) / "m.hpp"), str(path)],
                              capture_output=True, timeout=600, check=False)
    if done.returncode != 0:
        raise EngineError(f"stanc rejected the generated program: {done.stderr.decode().strip()}. Print it with stan_code(spec) and report it.")
    httpstan.cache.dump_stanc_warnings(done.stderr.decode(), name)
    output = _run(lambda: asyncio.run(httpstan.models.build_services_extension_module(code)))
    httpstan.cache.dump_services_extension_module_compiler_output(output, name)


def build(code: str, data: dict, seed: int, quiet: bool = False):
    """Compile (or fetch from the cache) and bind data; returns ``(model, compiled, compile
    seconds, build seconds)``: the seconds spent compiling -- or waiting for a background
    compile (:func:`prepare`) -- and the whole build including them."""
    stan = _import_stan()
    t0 = time.perf_counter()
    compiled = compile_program(code)
    compile_seconds = time.perf_counter() - t0  # ~0 when the cache holds the program
    with _quiet(quiet) as log:
        try:
            model = _run(stan.build, code, data=data, random_seed=int(seed) + 1)
        except (ValueError, RuntimeError) as exc:
            raise EngineError(f"Stan could not build the generated program: {exc}. Print it with stan_code(spec) and report it."
                              + _tail(log.getvalue())) from None
    return model, compiled, compile_seconds, time.perf_counter() - t0


def _draws(fit, name: str, chains: int, draws: int) -> np.ndarray:
    """pystan's (dims..., draws*chains) with draw-major interleaving -> (chains*draws, dims...)."""
    x = np.asarray(fit[name])
    dims = x.shape[:-1]
    x = x.reshape(*dims, draws, chains)
    x = np.moveaxis(x, (-1, -2), (0, 1))
    return x.reshape(chains * draws, *dims)


def _sample_stats(fit, chains: int, draws: int):
    import xarray as xr

    names = {"divergent__": "diverging", "treedepth__": "tree_depth", "lp__": "lp", "accept_stat__": "acceptance_rate",
             "stepsize__": "step_size", "n_leapfrog__": "n_steps"}
    data = {}
    for raw, nice in names.items():
        v = _draws(fit, raw, chains, draws).reshape(chains, draws)
        data[nice] = (("chain", "draw"), v.astype(bool) if nice == "diverging" else v)
    return xr.Dataset(data, coords={"chain": np.arange(chains), "draw": np.arange(draws)})


def choose_likelihood(design: Design, spec: ModelSpec, requested: str) -> str:
    """``"marginal"`` or ``"rows"``: a forced choice as asked (``"marginal"`` only for the
    gaussian family, see :func:`.stancode.stan_code`); for ``"auto"`` the gaussian marginal
    program while :mod:`.cost` predicts its dense algebra cheaper than the per-row model, else
    the per-row program (other families: always rows).

    Stan's marginal program is the dense one (O(d_I³) per gradient, ``d_I`` the integrated
    coefficients), so above :data:`.cost.MAX_MARGINAL_SIZE` of them -- a 1,000 × 20 tree has
    41,000 -- it is never chosen. The constants are PyMC's (Stan's were not calibrated apart);
    the two candidates are far apart except near the crossover, where both are quick.
    """
    if requested != "auto" or not spec.family.normal_errors:
        return "marginal" if requested == "marginal" else "rows"
    structure = make_structure(design, marginal=True)
    size = problem_size(structure, design.n, None)  # no tree: Stan's program is dense
    seconds = predicted_seconds(size)
    dense = seconds.get("marginal/dense")
    return "marginal" if dense is not None and dense <= seconds["rows"] else "rows"


def _streamed_data(design: StreamedDesign, options: OPTIONS) -> tuple[BayesStructure, dict]:
    """The marginal program's data from one statistics pass over a streamed source (:mod:`.stream`)."""
    check_streamed_options(design, "stan", options.likelihood, options.log_likelihood, options.posterior_predictive)
    size = problem_size(make_structure(scale_design(design), marginal=True), design.n, None)
    if "marginal/dense" not in predicted_seconds(size):
        raise SpecError(
            f"Stan's marginal program is dense, and this model has {size.integrated} integrated coefficients (more than "
            f"{MAX_MARGINAL_SIZE}); a streamed fit cannot run the per-row program. Fit it with engine='pymc' (its marginal "
            "likelihood runs on the tree of nested groups at any size), or on a pandas DataFrame."
        )
    gathered = gather_statistics(design, None)
    scales = scale_design(design, gathered.outcome)
    structure = make_structure(scales, marginal=True)
    assert isinstance(gathered.stats, SufficientStats), "the dense statistics were gathered"
    return structure, stan_data(scales, likelihood="marginal", structure=structure, stats=gathered.stats)


def fit(design: Design | StreamedDesign, spec: ModelSpec, options: OPTIONS) -> BayesFit:
    """Generate, compile (cached), sample, and wrap the posterior in the result contract.

    A :class:`~hierfit.design.streamed.StreamedDesign` runs the marginal program on statistics
    gathered in one pass over the source (:mod:`.stream`): the same program as in memory.
    """
    cells = None
    if isinstance(design, StreamedDesign):
        likelihood = "marginal"
        code = stan_code(spec, likelihood=likelihood)
        structure, data = _streamed_data(design, options)
        streamed = {"streamed_from": design.source.description}
        design = cast(Design, design)  # the result reads its structure only (names, terms, tree)
    else:
        likelihood = choose_likelihood(design, spec, options.likelihood)
        code = stan_code(spec, likelihood=likelihood)
        structure = make_structure(design, marginal=likelihood == "marginal")  # priors scaled to the fitting rows
        streamed = {}
        if likelihood == "marginal":
            data = stan_data(canonical_rows(design), likelihood=likelihood)  # same draws whatever the row order
        else:
            # rows sharing eta summed (exact; cells come sorted, so the draws ignore the input order)
            cells = aggregate_rows(design) if options.aggregate else None
            sampled = cells.design if cells is not None else canonical_rows(drop_zero_weights(design))
            data = stan_data(sampled, likelihood=likelihood, structure=structure)
    marginal = likelihood == "marginal"
    quiet = not options.progressbar
    model, compiled, compile_seconds, build_seconds = build(code, data, options.seed, quiet=quiet)
    iters = options.tune + options.draws
    t0 = time.perf_counter()
    with _quiet(quiet) as log:
        try:
            fit_ = _run(
                model.sample,
                num_chains=options.chains,
                num_samples=options.draws,
                num_warmup=options.tune,
                delta=options.target_accept,
                max_depth=options.max_treedepth,
                refresh=max(1, iters // 10) if options.progressbar else iters + 1,
            )
        except RuntimeError as exc:
            raise ConvergenceError(f"Stan sampling failed: {exc}. Check the data for extreme values or set tighter priors."
                                   + _tail(log.getvalue())) from None
        finally:
            _release_workers()
    sampling_seconds = time.perf_counter() - t0
    C, S = options.chains, options.draws
    lambdas = []
    for t in structure.terms:
        sd = _draws(fit_, f"sd_{t.name}", C, S)
        L = _draws(fit_, f"L_{t.name}", C, S) if t.correlated else np.broadcast_to(np.eye(t.k), (C * S, t.k, t.k))
        lambdas.append(sd[:, :, None] * L)
    dispersion = spec.family.dispersion
    arrays = {
        "dispersion": _draws(fit_, dispersion, C, S).reshape(-1) if dispersion is not None else None,
        "lambdas": lambdas,
        "beta": _draws(fit_, "beta", C, S),
        "b": [_draws(fit_, f"r_{t.name}", C, S) for t in structure.terms],
    }
    result = assemble_fit(
        engine="stan",
        design=design,
        structure=structure,
        md=None,
        arrays=arrays,
        sample_stats=_sample_stats(fit_, C, S),
        shape=(C, S),
        seed=options.seed,
        new_groups=options.new_groups,
        log_likelihood=options.log_likelihood,
        posterior_predictive=options.posterior_predictive,
        info={
            "likelihood": "marginal" if marginal else "rows",
            **({} if cells is None else {"aggregated_rows": cells.rows, "aggregated_cells": cells.cells}),
            "sampler": "stan",
            "sampling_seconds": sampling_seconds,
            "compile_seconds": compile_seconds,
            "build_seconds": build_seconds,
            "compiled": compiled,
            "stan_code": code,
            **streamed,
        },
        max_treedepth=options.max_treedepth,
    )
    return result


def load(state: StateReader, context: LoadContext) -> BayesFit:
    """Rebuild a saved ``stan`` fit (InferenceData from its netCDF, no sampling)."""
    return BayesFit.load_state(state, context)


if __name__ == "__main__":  # the child process of BackgroundCompile: compile one program file
    _import_stan()
    compile_program(Path(sys.argv[1]).read_text())
