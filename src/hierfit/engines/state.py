"""The typed writer and reader engines save and load their state with: data only, never code.

An engine's part of a save is one folder (``engine/`` in a fit)::

    state.json    values (strings, numbers -- NaN and infinities included --, booleans, lists,
                  tuples, dicts), tables, and the name, dtype and shape of every array
    arrays.npz    the arrays: numbers, booleans and fixed-width strings (read with
                  ``allow_pickle=False``: an object array cannot even be written)
    <native>      files in the engine library's own format: LightGBM model text, an ``.npz`` of
                  a torch ``state_dict``, ArviZ netCDF, Stan program text
    <child>/      a nested engine's state (boosted-mixed's effects step)

Adding an engine means two small functions against this API: the fit class's
``save(self, state: StateWriter)`` and the engine module's
``load(state: StateReader, context: LoadContext) -> EngineFit``, found through the registry
by engine name (``ENGINES[name].load().load``). Readers only see bytes whose SHA-256 was
checked (:class:`hierfit.storage.SavedFiles`), and every accessor checks the type of what it
returns: a value that is missing or of the wrong type is a
:class:`~hierfit.exceptions.PersistenceError` naming the file and the key.

Examples
--------
>>> import tempfile, numpy as np
>>> from pathlib import Path
>>> from hierfit.storage import SavedFiles
>>> d = Path(tempfile.mkdtemp())
>>> w = StateWriter(d)
>>> w.put("seed", 3)
>>> w.put_array("beta", np.array([1.0, np.nan]))
>>> w.close()
>>> r = StateReader(SavedFiles(str(d), {p.name: p.read_bytes() for p in d.iterdir()}))
>>> r.get_int("seed"), r.get_array("beta", ndim=1).tolist()
(3, [1.0, nan])
>>> r.get_str("seed")
Traceback (most recent call last):
...
hierfit.exceptions.PersistenceError: .../state.json: 'seed' should be a string, not 3. ...
"""

from __future__ import annotations

import io
import json
import math
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from hierfit.checks import CHECKS, Diagnostic
from hierfit.design.hierarchy import Hierarchy
from hierfit.exceptions import PersistenceError
from hierfit.model import ModelSpec
from hierfit.storage import NAME_RE, SavedFiles

STATE_FILE = "state.json"
ARRAYS_FILE = "arrays.npz"
#: array names: npz member names, portable
_ARRAY_KEY = re.compile(r"^[A-Za-z0-9_.:-]+(/[A-Za-z0-9_.:-]+)*$")
#: dtype kinds an array may have: bool, signed/unsigned int, float, complex, fixed-width str
_ARRAY_KINDS = "biufcU"


@dataclass(frozen=True, eq=False)
class LoadContext:
    """What an engine's ``load`` gets besides its own state: the fit's spec and its tree of groups.

    Engines reference this ``hierarchy`` (the one the fit's encoding owns) rather than a copy.
    """

    spec: ModelSpec
    hierarchy: Hierarchy


# ----------------------------------------------------------------------------- JSON values
def encode(value: Any, where: str = "value") -> Any:
    """A JSON-ready form of ``value`` that :func:`decode` turns back into an equal value.

    Tuples, non-finite floats, NumPy arrays and scalars, and dicts with non-string keys are
    tagged (``{"$tuple": [...]}``, ``{"$float": "nan"}``, ...); other types are refused.

    Examples
    --------
    >>> encode({"a": (1, float("inf")), 2: np.float64(0.5)})
    {'$dict': [['a', {'$tuple': [1, {'$float': 'inf'}]}], [2, 0.5]]}
    >>> decode(encode({1: np.arange(2)}))
    {1: array([0, 1])}
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else {"$float": repr(v)}
    if isinstance(value, list):
        return [encode(v, where) for v in value]
    if isinstance(value, tuple):
        return {"$tuple": [encode(v, where) for v in value]}
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in _ARRAY_KINDS:
            raise PersistenceError(f"Cannot save {where}: arrays of dtype {value.dtype} are not data a save may hold.")
        return {"$array": {"dtype": value.dtype.str, "shape": list(value.shape), "data": [encode(v, where) for v in value.ravel().tolist()]}}
    if isinstance(value, Mapping):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: encode(v, f"{where}[{k!r}]") for k, v in value.items()}
        return {"$dict": [[encode(k, where), encode(v, f"{where}[{k!r}]")] for k, v in value.items()]}
    raise PersistenceError(
        f"Cannot save {where}: a {type(value).__name__} is not plain data (strings, numbers, booleans, lists, "
        "tuples, dicts, NumPy arrays)."
    )


def decode(value: Any, where: str = "value") -> Any:
    """The value :func:`encode` was given; a :class:`PersistenceError` for malformed input."""
    if isinstance(value, list):
        return [decode(v, where) for v in value]
    if not isinstance(value, dict):
        return value
    tags = [k for k in value if k.startswith("$")]
    if not tags:
        return {k: decode(v, where) for k, v in value.items()}
    if len(value) != 1:
        raise PersistenceError(f"{where}: malformed tagged value {sorted(value)!r}.")
    tag, body = next(iter(value.items()))
    try:
        if tag == "$float" and body in ("nan", "inf", "-inf"):
            return float(body)
        if tag == "$tuple" and isinstance(body, list):
            return tuple(decode(v, where) for v in body)
        if tag == "$dict" and isinstance(body, list):
            return {decode(k, where): decode(v, where) for k, v in body}
        if tag == "$array" and isinstance(body, dict):
            dtype = np.dtype(str(body["dtype"]))
            if dtype.kind not in _ARRAY_KINDS:
                raise ValueError(f"dtype {dtype}")
            return np.array([decode(v, where) for v in body["data"]], dtype=dtype).reshape([int(n) for n in body["shape"]])
    except (TypeError, ValueError, KeyError) as exc:
        raise PersistenceError(f"{where}: malformed {tag} value ({exc}).") from None
    raise PersistenceError(f"{where}: unknown or malformed tag {tag!r}.")


def diagnostics_to_json(diagnostics: Sequence[Diagnostic]) -> list[list[str]]:
    """Diagnostics as ``[check, message, severity]`` lists."""
    return [[d.check, d.message, d.severity] for d in diagnostics]


def diagnostics_from_json(value: Any, where: str) -> list[Diagnostic]:
    """The inverse of :func:`diagnostics_to_json`, checking every field."""
    out = []
    if not isinstance(value, list):
        raise PersistenceError(f"{where}: diagnostics should be a list.")
    for item in value:
        ok = isinstance(item, list) and len(item) == 3 and all(isinstance(s, str) for s in item)
        if not ok or item[0] not in CHECKS or item[2] not in ("ignore", "warn", "error"):
            raise PersistenceError(f"{where}: malformed diagnostic {item!r}.")
        out.append(Diagnostic(item[0], item[1], item[2]))
    return out


# ----------------------------------------------------------------------------- writer
class StateWriter:
    """Collects one engine's state and writes it into ``directory`` on :meth:`close`.

    Keys are unique per writer; :meth:`put_text` and :meth:`native_path` name files of the
    folder (letters, digits and ``_.-``).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._values: dict[str, Any] = {}
        self._arrays: dict[str, np.ndarray] = {}
        self._lists: dict[str, int] = {}
        self._tables: dict[str, Any] = {}
        self._files: set[str] = {STATE_FILE, ARRAYS_FILE}
        self._children: list[StateWriter] = []

    def _claim(self, key: str) -> None:
        if not isinstance(key, str) or not key:
            raise PersistenceError(f"State keys are non-empty strings; got {key!r}.")
        if key in self._values or key in self._lists or key in self._tables or key in self._arrays:
            raise PersistenceError(f"State key {key!r} is written twice in {self.directory}.")

    def put(self, key: str, value: Any) -> None:
        """A value: strings, numbers, booleans, None, lists, tuples, dicts (see :func:`encode`)."""
        self._claim(key)
        self._values[key] = encode(value, f"{self.directory.name}/{STATE_FILE}[{key!r}]")

    def put_array(self, key: str, value: Any) -> None:
        """A NumPy array of numbers, booleans or fixed-width strings."""
        self._claim(key)
        if not _ARRAY_KEY.match(key):
            raise PersistenceError(f"Array names use letters, digits and '_.:-/'; got {key!r}.")
        arr = np.asarray(value)
        if arr.dtype.kind not in _ARRAY_KINDS:
            raise PersistenceError(f"Cannot save array {key!r} of dtype {arr.dtype}: only numbers, booleans and strings.")
        self._arrays[key] = np.ascontiguousarray(arr)

    def put_arrays(self, key: str, values: Sequence[Any]) -> None:
        """A list of arrays (e.g. one per term)."""
        self._claim(key)
        for i, v in enumerate(values):
            self.put_array(f"{key}/{i}", v)
        self._lists[key] = len(values)

    def put_sparse(self, key: str, matrix: sparse.spmatrix) -> None:
        """A sparse matrix, stored as CSR arrays."""
        csr = sparse.csr_matrix(matrix)
        self.put_arrays(key, [csr.data, csr.indices.astype(np.int64), csr.indptr.astype(np.int64), np.array(csr.shape, dtype=np.int64)])

    def put_table(self, key: str, frame: pd.DataFrame) -> None:
        """A data frame with a default index: numeric columns as arrays, text columns as JSON."""
        self._claim(key)
        index = frame.index
        if not (isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1):
            raise PersistenceError(f"Table {key!r} must have a default index (0, 1, ...) to be saved; reset_index() it first.")
        columns = []
        for i, (name, col) in enumerate(frame.items()):
            if not isinstance(name, str):
                raise PersistenceError(f"Table {key!r}: column names must be strings; got {name!r}.")
            entry: dict[str, Any] = {"name": name, "dtype": str(col.dtype)}
            if col.dtype.kind in "biuf" and not isinstance(col.dtype, pd.api.extensions.ExtensionDtype):
                self.put_array(f"{key}/{i}", col.to_numpy())
                entry["array"] = f"{key}/{i}"
            elif col.dtype == object or isinstance(col.dtype, pd.StringDtype):
                entry["values"] = encode([None if v is pd.NA else v for v in col.tolist()], f"table {key!r} column {name!r}")
            else:
                raise PersistenceError(f"Cannot save column {name!r} of table {key!r}: dtype {col.dtype} is not supported.")
            columns.append(entry)
        self._tables[key] = {"n_rows": len(frame), "columns": columns}

    def put_text(self, name: str, text: str) -> None:
        """A native text file of the engine's library (LightGBM model, Stan program)."""
        self.native_path(name).write_text(text, encoding="utf-8")

    def put_npz(self, name: str, arrays: Mapping[str, np.ndarray]) -> None:
        """A native ``.npz`` of named arrays (a torch ``state_dict``), read back with ``allow_pickle=False``."""
        if not name.endswith(".npz"):
            raise PersistenceError(f"Array files end in .npz; got {name!r}.")
        for key, arr in arrays.items():
            if not _ARRAY_KEY.match(key) or np.asarray(arr).dtype.kind not in _ARRAY_KINDS:
                raise PersistenceError(f"Cannot save array {key!r} in {name}: bad name or dtype.")
        write_npz(self.native_path(name), arrays, compress=False)

    def native_path(self, name: str) -> Path:
        """A path in the folder for a native writer (``idata.to_netcdf(path)``)."""
        if not NAME_RE.match(name) or "/" in name or name in self._files:
            raise PersistenceError(f"File name {name!r} is taken or not allowed in {self.directory}.")
        self._files.add(name)
        return self.directory / name

    def child(self, name: str) -> StateWriter:
        """A nested engine's state in sub-folder ``name`` (written when this writer closes)."""
        writer = StateWriter(self.native_path(name))
        self._children.append(writer)
        return writer

    def close(self) -> None:
        """Write ``state.json`` and ``arrays.npz`` (and those of the children)."""
        for child in self._children:
            child.close()
        arrays = {k: {"dtype": v.dtype.str, "shape": list(v.shape)} for k, v in self._arrays.items()}
        doc = {"values": self._values, "arrays": arrays, "lists": self._lists, "tables": self._tables}
        (self.directory / STATE_FILE).write_text(json.dumps(doc, indent=1, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
        # compressed: draws and sufficient statistics shrink well, and loading stays fast
        write_npz(self.directory / ARRAYS_FILE, self._arrays, compress=True)


# ----------------------------------------------------------------------------- reader
class StateReader:
    """Typed access to one engine's saved state (the mirror of :class:`StateWriter`)."""

    def __init__(self, files: SavedFiles) -> None:
        self.files = files
        where = files.where(STATE_FILE)
        try:
            doc = json.loads(files.read(STATE_FILE).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise PersistenceError(f"{where} is not valid JSON: the engine state is damaged. Refit and save again.") from None
        if not isinstance(doc, dict) or not all(isinstance(doc.get(k), dict) for k in ("values", "arrays", "lists", "tables")):
            raise PersistenceError(f"{where} is not an engine state (values, arrays, lists, tables). Refit and save again.")
        self._doc = doc
        self._arrays: dict[str, np.ndarray] | None = None

    def fail(self, message: str) -> PersistenceError:
        """An error naming this state's file, for an engine's own consistency checks."""
        return PersistenceError(f"{self.files.where(STATE_FILE)}: {message}. The save is inconsistent; refit and save again.")

    def has(self, key: str) -> bool:
        return key in self._doc["values"] or key in self._doc["lists"] or key in self._doc["tables"] or key in self._doc["arrays"]

    # -- values ---------------------------------------------------------------------------
    def get(self, key: str) -> Any:
        """A value as it was put (tuples, dicts and NaN restored)."""
        if key not in self._doc["values"]:
            raise self.fail(f"no value {key!r}")
        return decode(self._doc["values"][key], f"{self.files.where(STATE_FILE)}[{key!r}]")

    def _typed(self, key: str, ok: bool, value: Any, what: str) -> Any:
        if not ok:
            raise self.fail(f"{key!r} should be {what}, not {value!r}")
        return value

    def get_str(self, key: str) -> str:
        v = self.get(key)
        return self._typed(key, isinstance(v, str), v, "a string")

    def get_int(self, key: str) -> int:
        v = self.get(key)
        return self._typed(key, isinstance(v, int) and not isinstance(v, bool), v, "an integer")

    def get_float(self, key: str) -> float:
        v = self.get(key)
        return float(self._typed(key, isinstance(v, (int, float)) and not isinstance(v, bool), v, "a number"))

    def get_optional_float(self, key: str) -> float | None:
        v = self.get(key)
        return None if v is None else self.get_float(key)

    def get_bool(self, key: str) -> bool:
        v = self.get(key)
        return self._typed(key, isinstance(v, bool), v, "true or false")

    def get_str_list(self, key: str) -> list[str]:
        v = self.get(key)
        ok = isinstance(v, (list, tuple)) and all(isinstance(s, str) for s in v)
        return list(self._typed(key, ok, v, "a list of strings"))

    def get_int_list(self, key: str) -> list[int]:
        v = self.get(key)
        ok = isinstance(v, (list, tuple)) and all(isinstance(s, int) and not isinstance(s, bool) for s in v)
        return list(self._typed(key, ok, v, "a list of integers"))

    def get_float_dict(self, key: str) -> dict[str, float]:
        v = self.get(key)
        ok = isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, (int, float)) and not isinstance(x, bool) for k, x in v.items())
        return {k: float(x) for k, x in self._typed(key, ok, v, "a table of numbers").items()}

    def get_dict(self, key: str) -> dict[str, Any]:
        v = self.get(key)
        ok = isinstance(v, dict) and all(isinstance(k, str) for k in v)
        return dict(self._typed(key, ok, v, "a table of values"))

    def get_diagnostics(self, key: str) -> list[Diagnostic]:
        return diagnostics_from_json(self._doc["values"].get(key), f"{self.files.where(STATE_FILE)}[{key!r}]")

    # -- arrays ---------------------------------------------------------------------------
    def _load_arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = read_npz(self.files, ARRAYS_FILE)
            declared = self._doc["arrays"]
            for key, arr in self._arrays.items():
                spec = declared.get(key)
                if not isinstance(spec, dict) or spec.get("dtype") != arr.dtype.str or spec.get("shape") != list(arr.shape):
                    raise self.fail(f"array {key!r} in {ARRAYS_FILE} is not the one {STATE_FILE} describes")
            if set(declared) != set(self._arrays):
                raise self.fail(f"{ARRAYS_FILE} and {STATE_FILE} list different arrays")
        return self._arrays

    def get_array(self, key: str, *, kind: str = "f", ndim: int | None = None) -> np.ndarray:
        """An array whose dtype kind is in ``kind`` (``"f"`` float, ``"i"`` int, ``"b"`` bool, ...)."""
        arrays = self._load_arrays()
        if key not in arrays:
            raise self.fail(f"no array {key!r}")
        arr = arrays[key]
        if arr.dtype.kind not in kind or (ndim is not None and arr.ndim != ndim):
            raise self.fail(f"array {key!r} has dtype {arr.dtype} and {arr.ndim} dimensions; expected kind {kind!r}" + (f", {ndim} dimensions" if ndim is not None else ""))
        return arr

    def get_arrays(self, key: str, *, kind: str = "f", ndim: int | None = None) -> list[np.ndarray]:
        n = self._doc["lists"].get(key)
        if not isinstance(n, int):
            raise self.fail(f"no list of arrays {key!r}")
        return [self.get_array(f"{key}/{i}", kind=kind, ndim=ndim) for i in range(n)]

    def get_sparse(self, key: str) -> sparse.csr_matrix:
        parts = self.get_arrays(key, kind="fiub")
        if len(parts) != 4:
            raise self.fail(f"sparse matrix {key!r} should have 4 parts")
        data, indices, indptr, shape = parts
        try:
            return sparse.csr_matrix((data, indices, indptr), shape=tuple(int(s) for s in shape))
        except (ValueError, TypeError) as exc:
            raise self.fail(f"sparse matrix {key!r} is malformed ({exc})") from None

    def get_table(self, key: str) -> pd.DataFrame:
        spec = self._doc["tables"].get(key)
        if not isinstance(spec, dict) or not isinstance(spec.get("columns"), list) or not isinstance(spec.get("n_rows"), int):
            raise self.fail(f"no table {key!r}")
        cols: dict[str, pd.Series] = {}
        for c in spec["columns"]:
            try:
                name, dtype = str(c["name"]), str(c["dtype"])
                if "array" in c:
                    values: Any = self.get_array(str(c["array"]), kind="biuf", ndim=1)
                else:
                    values = decode(c["values"], f"table {key!r}")
                series = pd.Series(values, dtype=dtype)
            except (KeyError, TypeError, ValueError) as exc:
                raise self.fail(f"table {key!r} has a malformed column ({exc})") from None
            if len(series) != spec["n_rows"]:
                raise self.fail(f"table {key!r} column {name!r} has {len(series)} rows, not {spec['n_rows']}")
            cols[name] = series
        return pd.DataFrame(cols, index=pd.RangeIndex(spec["n_rows"]))

    # -- native files ---------------------------------------------------------------------
    def get_bytes(self, name: str) -> bytes:
        return self.files.read(name)

    def get_text(self, name: str) -> str:
        try:
            return self.files.read(name).decode("utf-8")
        except UnicodeDecodeError:
            raise PersistenceError(f"{self.files.where(name)} is not UTF-8 text. Refit and save again.") from None

    def get_npz(self, name: str) -> dict[str, np.ndarray]:
        """A native ``.npz`` written by :meth:`StateWriter.put_npz`."""
        return read_npz(self.files, name)

    def child(self, name: str) -> StateReader:
        return StateReader(self.files.sub(name))


def write_npz(path: Path, arrays: Mapping[str, np.ndarray], *, compress: bool) -> None:
    """An ``.npz`` as NumPy writes one, with pickling refused (``allow_pickle=False``).

    Written here rather than by ``np.savez(**arrays)`` so that any array name works (a
    keyword such as ``file`` would collide with savez's own parameters).
    """
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=method, allowZip64=True) as zf:
        for key, arr in arrays.items():
            with zf.open(f"{key}.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.ascontiguousarray(arr), allow_pickle=False)


def read_npz(files: SavedFiles, name: str) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` in ``files``, read with ``allow_pickle=False``."""
    try:
        with np.load(io.BytesIO(files.read(name)), allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise PersistenceError(f"{files.where(name)} is not a readable array file ({exc}). Refit and save again.") from None
