"""Save a FitResult to a directory and load it back.

Layout::

    DIR/hierfit.json   format version, engine, formula, family, national (human-readable)
    DIR/result.pkl     the FitResult without its engine part (spec, encoding, diagnostics)
    DIR/engine/        written by the engine's own ``save`` (pickle, netCDF, torch weights, ...)

Only load fits you trust: like every pickle-based format, loading runs code from the file.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from pathlib import Path

from hierfit.exceptions import PersistenceError
from hierfit.results.fit_result import FORMAT_VERSION, FitResult


def save_fit(result: FitResult, path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "engine").mkdir(exist_ok=True)
    result.engine_fit.save(path / "engine")
    meta = {
        "format_version": FORMAT_VERSION,
        "engine": result.engine,
        "engine_class": f"{type(result.engine_fit).__module__}:{type(result.engine_fit).__qualname__}",
        "formula": result.spec.text,
        "family": str(result.spec.family),
        "national": result.spec.national,
        "n_obs": result.n_obs,
    }
    (path / "hierfit.json").write_text(json.dumps(meta, indent=2))
    with open(path / "result.pkl", "wb") as fh:
        pickle.dump(replace(result, engine_fit=None), fh, protocol=pickle.HIGHEST_PROTOCOL)  # type: ignore[arg-type]
    return path


def load_fit(path: str | Path) -> FitResult:
    """Load a fit saved with :meth:`FitResult.save`.

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
    import importlib

    path = Path(path)
    meta_file = path / "hierfit.json"
    if not meta_file.exists():
        raise PersistenceError(f"{str(path)!r} is not a saved hierfit fit (no hierfit.json). Save one with fit.save(path).")
    meta = json.loads(meta_file.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise PersistenceError(
            f"{str(path)!r} was saved in format {meta.get('format_version')!r}; this hierfit reads format {FORMAT_VERSION}. Refit and save again."
        )
    module_name, _, cls_name = meta["engine_class"].partition(":")
    try:
        engine_cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as exc:
        raise PersistenceError(f"Cannot load engine {meta['engine']!r} saved in {str(path)!r}: {exc}. Install hierfit[{meta['engine']}].") from None
    with open(path / "result.pkl", "rb") as fh:
        result: FitResult = pickle.load(fh)
    return replace(result, engine_fit=engine_cls.load(path / "engine"))
