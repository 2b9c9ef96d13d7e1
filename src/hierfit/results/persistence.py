"""Save a FitResult to a folder and load it back: hierfit's save format 2, the reference.

Layout of a saved fit::

    DIR/hierfit.json        the manifest (JSON): format, format_version (2), kind ("fit"),
                            hierfit_version, save_id, created; engine (its registry name);
                            spec (formula text, family, link, national, hierarchy, priors,
                            offset and weights columns);
                            hierarchy (national root; per level: name, grouping columns,
                            parent, group labels); encoding (population formula and columns,
                            dropped collinear columns, formulaic's transform state -- spline
                            knots, centring constants -- and each factor's kind and
                            categories); n_obs, diagnostics, timings, engine options; and
                            files: the size and SHA-256 of every other file
    DIR/SHA256SUMS          SHA-256 of every file but itself, in sha256sum's format
                            (``cd DIR && sha256sum -c SHA256SUMS`` checks a save by hand)
    DIR/hierarchy.npz       per level: parent_index, sizes (int64 arrays)
    DIR/engine/state.json   the engine's values: parameter layout, variance table, statistics,
                            diagnostics, seed, options, and what else it needs (its schema is
                            the engine's ``save``; see :mod:`hierfit.engines.state`)
    DIR/engine/arrays.npz   the engine's arrays: estimates, covariances, draws that cannot be
                            regenerated, the mixed model's sufficient statistics
    DIR/engine/...          the engine library's own files where it has them:
                            ``booster.txt`` (LightGBM model text: lightgbm, boosted-mixed),
                            ``weights.npz`` (the torch ``state_dict``: neural),
                            ``posterior.nc`` (ArviZ InferenceData as netCDF: pymc, stan),
                            ``model.stan`` (the Stan program: stan), ``effects/`` (the
                            effects step of boosted-mixed, a nested engine folder)

Sizes follow the model, not the data: groups and parameters (the mixed engine stores the
per-group statistics of its PLS system and regenerates its joint draws from them and the
seed, exactly; posterior draws are stored once, in the netCDF). The InferenceData of a
Bayesian fit keeps its ``observed_data`` and ``log_likelihood`` groups, one value per row
(and per draw), because LOO needs them (``log_likelihood=False`` leaves the latter out).

Safety: nothing in a save is code, and loading never runs code from it. There is no pickle
(arrays are read with ``allow_pickle=False``); the engine's class is found through the
registry by the engine's name, never imported from a name in the file. Every file's size
and SHA-256 are checked before anything is parsed, so a truncated or edited file is a
:class:`~hierfit.exceptions.PersistenceError` naming it, and native loaders that can abort
the process on a damaged file (LightGBM) only ever see verified bytes. (Checksums detect
damage, not forgery: someone who rewrites a save and its checksums makes a valid save, of
a different model -- but still one that is only data.)

Saving is atomic (:func:`hierfit.storage.atomic_save`): the save is written into a hidden
sibling folder and renamed into place, so readers see the old save or the new one, never a
mix; replacing an existing save needs ``overwrite=True``; a folder that holds other files is
never written into. Format-1 saves (pickle files) are not read: the error says to refit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hierfit.design.sources import SourceInfo
from hierfit.engines.registry import ENGINES
from hierfit.engines.state import (
    LoadContext,
    StateReader,
    StateWriter,
    decode,
    diagnostics_from_json,
    diagnostics_to_json,
    encode,
    read_npz,
    write_npz,
)
from hierfit.exceptions import EngineError, HierfitError, PersistenceError
from hierfit.results.manifest import (
    HIERARCHY_FILE,
    encoding_from_json,
    encoding_to_json,
    hierarchy_from_json,
    hierarchy_to_json,
    spec_from_json,
    spec_to_json,
)
from hierfit.results.fit_result import FitResult
from hierfit.results.variance_partition import DesignMoments
from hierfit.storage import MANIFEST, SavedFiles, atomic_save, new_manifest, read_save, seal, verify_files

ENGINE_DIR = "engine"


def save_fit(result: FitResult, path: str | Path, *, overwrite: bool = False) -> Path:
    """Save ``result`` to folder ``path`` atomically (see the module docstring for the layout).

    Examples
    --------
    >>> import hierfit, tempfile
    >>> sim = hierfit.simulate(n_markets=3, n_submarkets=2, rows_per_submarket=10, seed=0)
    >>> fit = hierfit.fit("y ~ x1 + (1 | market)", sim.data, engine="ols")
    >>> path = save_fit(fit, tempfile.mkdtemp() + "/fit")
    >>> sorted(p.name for p in path.iterdir())
    ['SHA256SUMS', 'engine', 'hierarchy.npz', 'hierfit.json']
    """
    return atomic_save(path, lambda staging: write_fit(result, staging), overwrite=overwrite)


def write_fit(result: FitResult, directory: Path) -> None:
    """Write and seal a fit into an empty ``directory`` (not atomic: :func:`save_fit` is)."""
    directory.mkdir(parents=True, exist_ok=True)
    state = StateWriter(directory / ENGINE_DIR)
    result.engine_fit.save(state)
    state.close()
    tree, arrays = hierarchy_to_json(result.hierarchy)
    write_npz(directory / HIERARCHY_FILE, arrays, compress=True)
    manifest = new_manifest(
        "fit",
        engine=result.engine,
        n_obs=int(result.n_obs),
        spec=spec_to_json(result.spec),
        hierarchy=tree,
        encoding=encoding_to_json(result.encoding),
        diagnostics=diagnostics_to_json(result.diagnostics),
        timings=encode(dict(result.timings), "timings"),
        options=encode(dict(result.options), "the engine options"),
        moments=None if result.moments is None else result.moments.to_json(),
        source=None if result.source is None else result.source.to_json(),
    )
    seal(directory, manifest)


def load_fit(path: str | Path) -> FitResult:
    """Load a fit saved with :meth:`FitResult.save`, verifying every file first.

    Raises :class:`~hierfit.exceptions.PersistenceError` for anything that is not an intact
    format-2 fit (naming the file that is missing, truncated or altered), and for an engine
    that is not installed.

    Examples
    --------
    >>> import hierfit, tempfile
    >>> sim = hierfit.simulate(n_markets=3, n_submarkets=2, rows_per_submarket=10, seed=0)
    >>> fit = hierfit.fit("y ~ x1 + (1 | market)", sim.data, engine="ols")
    >>> d = tempfile.mkdtemp()
    >>> _ = fit.save(d)
    >>> hierfit.load(d).engine
    'ols'
    """
    manifest, files = read_save(path, "fit")
    return read_fit(manifest, files)


def load_fit_files(files: SavedFiles) -> FitResult:
    """A fit saved inside another save (a comparison's ``fits/ENGINE``), from verified bytes."""
    manifest, verified = verify_files(files, "fit")
    return read_fit(manifest, verified)


def read_fit(manifest: dict[str, Any], files: SavedFiles) -> FitResult:
    """The fit a verified manifest and its files describe."""
    where = files.where(MANIFEST)
    spec = spec_from_json(manifest.get("spec"), where)
    hierarchy = hierarchy_from_json(manifest.get("hierarchy"), read_npz(files, HIERARCHY_FILE), spec, files)
    encoding = encoding_from_json(manifest.get("encoding"), spec, hierarchy, where)
    name = manifest.get("engine")
    engine_fit = load_engine(name, StateReader(files.sub(ENGINE_DIR)), LoadContext(spec, hierarchy), where)
    try:
        n_obs = int(manifest["n_obs"])
        timings = {str(k): float(v) for k, v in decode(manifest["timings"], where).items()}
        options = dict(decode(manifest["options"], where))
        # saves from before the variance partition have no moments: load, but cannot partition
        moments = None if manifest.get("moments") is None else DesignMoments.from_json(manifest["moments"])
        # saves of in-memory fits (and older saves) have no source
        source = None if manifest.get("source") is None else SourceInfo.from_json(manifest["source"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PersistenceError(f"{where}: malformed fit fields ({type(exc).__name__}: {exc}).") from None
    diagnostics = diagnostics_from_json(manifest.get("diagnostics"), where)
    return FitResult(spec=spec, engine=str(name), engine_fit=engine_fit, encoding=encoding, n_obs=n_obs,
                     diagnostics=diagnostics, timings=timings, options=options, moments=moments, source=source)


def load_engine(name: Any, state: StateReader, context: LoadContext, where: str) -> Any:
    """The engine fit ``state`` holds, through the registry's module for engine ``name``.

    The engine's module is looked up by its registered name: nothing in a save names code
    to import. Errors of a malformed state become a :class:`PersistenceError` naming it.
    """
    entry = ENGINES.get(name) if isinstance(name, str) else None
    if entry is None:
        raise PersistenceError(
            f"{where} was saved by engine {name!r}, which is not registered in this hierfit "
            f"(engines: {', '.join(sorted(ENGINES))}). Install or register that engine to load it."
        )
    try:
        module = entry.load()
    except EngineError as exc:
        raise PersistenceError(f"Cannot load the {name!r} fit in {state.files.root}: {exc}") from None
    loader = getattr(module, "load", None)
    if not callable(loader):
        raise PersistenceError(f"Engine {name!r} cannot load saved fits: its module {entry.module} has no load(state, context).")
    try:
        fit = loader(state, context)
    except HierfitError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError, ArithmeticError) as exc:
        # a checksum-verified but inconsistent state (written by a different engine version)
        raise state.fail(f"the {name!r} engine cannot rebuild its fit ({type(exc).__name__}: {exc})") from None
    if getattr(fit, "engine", None) != name:
        raise state.fail(f"the state is that of engine {getattr(fit, 'engine', None)!r}, not {name!r}")
    return fit
