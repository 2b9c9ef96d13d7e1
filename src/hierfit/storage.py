"""Sealed save folders, replaced atomically: the file layer under every hierfit save.

A *save* is a folder of plain files, ``hierfit.json`` (the manifest) and ``SHA256SUMS`` among
them (the layout of a fit is documented in :mod:`hierfit.results.persistence`):

* :func:`seal` finishes a folder: the manifest gets the size and SHA-256 of every other file,
  and ``SHA256SUMS`` lists the SHA-256 of every file but itself, manifest included, in the
  format of ``sha256sum`` (``cd DIR && sha256sum -c SHA256SUMS`` checks a save by hand).
  An edit to any one file -- payload, manifest or ``SHA256SUMS`` -- is detected: the two lists
  must agree, and each vouches for the other.
* :func:`read_save` reads every listed file into memory and checks its size and SHA-256
  *before* anything is parsed: the parsers (NumPy, Parquet, LightGBM, HDF5) only ever see
  the bytes that were verified, never the file again (no window to swap it), and a missing,
  truncated or altered file is a :class:`~hierfit.exceptions.PersistenceError` naming it.
* :func:`atomic_save` writes a save into a temporary sibling folder and renames it into place.

Concurrent saves and readers
----------------------------
Replacing a folder takes two renames on every platform (POSIX cannot rename a directory over
a non-empty one): the old save moves to a hidden sibling ``.NAME.hierfit-old-*``, the new one
moves from ``.NAME.hierfit-new-*`` to ``NAME``, and the old one is deleted. Each rename is
atomic, so ``NAME`` always holds one *complete* save or, for the instant between the two
renames, nothing. The scheme is:

* writers: a writer whose second rename fails because another writer's save arrived in that
  instant goes round again and replaces it, so the save that completes last wins;
* readers: :func:`read_save` compares ``SHA256SUMS`` before and after a failed read. If it
  changed (or the folder was briefly missing while a hidden sibling showed a swap in
  progress), another process replaced the save mid-read and the read starts again, for up to
  :data:`RETRY_SECONDS`. A reader therefore returns a whole old save or a whole new one --
  every byte it returns was checked against one ``SHA256SUMS`` -- and never a mix.

A writer killed between its two renames leaves the previous save in ``.NAME.hierfit-old-*``
(and an unfinished one in ``.NAME.hierfit-new-*``): nothing is lost, but nothing is cleaned up
automatically either, since another process may be using those folders.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hierfit._version import __version__
from hierfit.exceptions import PersistenceError

FORMAT = "hierfit"
FORMAT_VERSION = 2
MANIFEST = "hierfit.json"
CHECKSUMS = "SHA256SUMS"
#: what a save holds -> how to load one
KINDS: dict[str, str] = {"fit": "hierfit.load(path)", "comparison": "hierfit.Comparison.load(path)"}
#: seconds a reader keeps retrying while other processes replace the save it reads
RETRY_SECONDS = 10.0
NEW_TAG = ".hierfit-new-"
OLD_TAG = ".hierfit-old-"
#: file names inside a save: portable, and printable verbatim in SHA256SUMS
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
_SUM_LINE = re.compile(r"^([0-9a-f]{64}) [ *](\S+)$")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class SavedFiles:
    """The verified bytes of a save (or of a folder inside one), by relative path.

    Parsers read from here, never from the disk again: what they parse is what was checked.

    Examples
    --------
    >>> files = SavedFiles("fit", {"engine/state.json": b"{}"})
    >>> files.sub("engine").read("state.json")
    b'{}'
    >>> files.where("engine/arrays.npz")
    'fit/engine/arrays.npz'
    """

    root: str
    files: Mapping[str, bytes]

    def where(self, name: str) -> str:
        """The path of ``name`` for messages."""
        return f"{self.root.rstrip('/')}/{name}"

    def has(self, name: str) -> bool:
        return name in self.files

    def names(self) -> list[str]:
        return sorted(self.files)

    def read(self, name: str) -> bytes:
        """The bytes of ``name``; a :class:`PersistenceError` naming it if the save has none."""
        try:
            return self.files[name]
        except KeyError:
            raise PersistenceError(
                f"{self.where(name)} is missing from the save: it was written by a different version of its "
                "engine, or the save is incomplete. Refit and save again."
            ) from None

    def sub(self, prefix: str) -> SavedFiles:
        """The files under folder ``prefix``, named relative to it."""
        head = prefix.rstrip("/") + "/"
        return SavedFiles(self.where(prefix.rstrip("/")), {k[len(head):]: v for k, v in self.files.items() if k.startswith(head)})


# ----------------------------------------------------------------------------- writing
def sha256_file(path: Path) -> tuple[str, int]:
    """SHA-256 hex digest and size of a file, read in chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def new_manifest(kind: str, **fields: Any) -> dict[str, Any]:
    """The fields every manifest starts with (format, versions, a unique save id)."""
    if kind not in KINDS:
        raise ValueError(f"unknown save kind {kind!r}")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "hierfit_version": __version__,
        # unique per save: a reader tells two saves apart even when their content is identical
        "save_id": uuid.uuid4().hex,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **fields,
    }


def seal(directory: Path, manifest: Mapping[str, Any]) -> None:
    """Write ``hierfit.json`` (``manifest`` plus the checksums of every other file) and ``SHA256SUMS``.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "a.txt").write_text("hello")
    >>> seal(d, new_manifest("fit"))
    >>> (d / "SHA256SUMS").read_text().split()[1::2]
    ['a.txt', 'hierfit.json']
    """
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory).as_posix()
        if rel in (MANIFEST, CHECKSUMS):
            continue
        mode = path.lstat().st_mode
        if stat.S_ISDIR(mode):
            continue
        if not stat.S_ISREG(mode):
            raise PersistenceError(f"{path} is not a plain file; a hierfit save holds only plain files.")
        if not NAME_RE.match(rel):
            raise PersistenceError(f"{path}: file names in a save may use only letters, digits and '_.-'; got {rel!r}.")
        digest, size = sha256_file(path)
        files[rel] = {"sha256": digest, "bytes": size}
    body = {**manifest, "files": files}
    text = json.dumps(body, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    raw = text.encode("utf-8")
    (directory / MANIFEST).write_bytes(raw)
    sums = {name: info["sha256"] for name, info in files.items()}
    sums[MANIFEST] = hashlib.sha256(raw).hexdigest()
    (directory / CHECKSUMS).write_text("".join(f"{sums[name]}  {name}\n" for name in sorted(sums)), encoding="ascii")


def atomic_save(path: str | Path, write: Callable[[Path], None], *, overwrite: bool = False) -> Path:
    """Let ``write`` fill a fresh sibling folder, then rename it to ``path`` (see the module docstring).

    ``path`` may be absent or an empty folder; an existing hierfit save is replaced whole when
    ``overwrite`` is true; any other existing folder or file is an error (hierfit never mixes its
    files with others, nor leaves pieces of an earlier save behind). ``write`` must
    :func:`seal` the folder it gets.

    Examples
    --------
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "save"
    >>> _ = atomic_save(target, lambda d: seal(d, new_manifest("fit")))
    >>> sorted(p.name for p in target.iterdir())
    ['SHA256SUMS', 'hierfit.json']
    >>> atomic_save(target, lambda d: seal(d, new_manifest("fit")))
    Traceback (most recent call last):
    ...
    hierfit.exceptions.PersistenceError: ... already holds a hierfit save; pass overwrite=True ...
    """
    path = Path(os.path.abspath(path))
    if not path.name:
        raise PersistenceError(f"Cannot save to {str(path)!r}: give a folder path with a name.")
    path.parent.mkdir(parents=True, exist_ok=True)
    _check_target(path, overwrite, remove_empty=False)  # before the (possibly long) write
    staging = path.parent / f".{path.name}{NEW_TAG}{uuid.uuid4().hex[:12]}"
    os.mkdir(staging)  # not mkdtemp: the save gets the user's usual permissions (umask), not 0700
    try:
        write(staging)
        if not (staging / CHECKSUMS).is_file():
            raise PersistenceError(f"Internal error: the writer for {path} did not seal its folder.")
        _fsync_tree(staging)
        _swap_into_place(staging, path, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _fsync_dir(path.parent)
    return path


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A temporary sibling path to write; on success it replaces ``path`` in one rename.

    Readers of ``path`` see the old file or the new one, never a partly written file.

    Examples
    --------
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "out.txt"
    >>> with atomic_file(target) as tmp:
    ...     _ = tmp.write_text("done")
    >>> target.read_text()
    'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.hierfit-tmp-{uuid.uuid4().hex[:12]}{path.suffix}"
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _swap_into_place(staging: Path, path: Path, overwrite: bool) -> None:
    for _ in range(1000):
        try:
            os.rename(staging, path)  # atomic; POSIX also replaces an empty folder this way
            return
        except FileNotFoundError:
            raise
        except OSError as exc:
            if exc.errno == errno.ENOTDIR:
                raise PersistenceError(f"{path} is a file, not a folder; choose a folder path to save to.") from None
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) and not os.path.lexists(path):
                raise PersistenceError(f"Cannot save to {path}: {exc.strerror}.") from None
        if not _check_target(path, overwrite):
            continue  # it vanished or is an empty folder now: rename again
        old = path.parent / f".{path.name}{OLD_TAG}{uuid.uuid4().hex[:12]}"
        try:
            os.rename(path, old)
        except FileNotFoundError:
            continue  # another writer moved it away first
        try:
            os.rename(staging, path)
        except OSError:
            # another writer's complete save arrived between our two renames; ours finished
            # later, so go round again and replace that one
            shutil.rmtree(old, ignore_errors=True)
            continue
        shutil.rmtree(old, ignore_errors=True)
        return
    raise PersistenceError(f"Could not replace {path}: other processes kept saving to it. Try again.")


def check_target(path: str | Path, overwrite: bool = False) -> None:
    """Raise the error :func:`atomic_save` would raise for ``path``, before any work is done.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "notes.txt").write_text("mine")
    >>> check_target(d)
    Traceback (most recent call last):
    ...
    hierfit.exceptions.PersistenceError: ... is a folder with other files (notes.txt), not a hierfit save. ...
    """
    _check_target(Path(os.path.abspath(path)), overwrite, remove_empty=False)


def _check_target(path: Path, overwrite: bool, *, remove_empty: bool = True) -> bool:
    """Refuse targets hierfit must not replace; True when ``path`` is a non-empty hierfit save."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(mode):
        raise PersistenceError(f"{path} is a symbolic link; save to the folder it points to instead.")
    if not stat.S_ISDIR(mode):
        raise PersistenceError(f"{path} is a file, not a folder; choose a folder path to save to.")
    try:
        entries = sorted(os.listdir(path))
    except FileNotFoundError:
        return False
    if not entries:
        if remove_empty:
            try:
                os.rmdir(path)  # portable: Windows cannot rename over an empty folder
            except OSError:
                pass
        return False
    if saved_kind(path) is None:
        shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
        raise PersistenceError(
            f"{path} is a folder with other files ({shown}), not a hierfit save. A save replaces its whole "
            "folder, so choose a new or empty folder."
        )
    if not overwrite:
        raise PersistenceError(f"{path} already holds a hierfit save; pass overwrite=True (command line: --overwrite) to replace it.")
    return True


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder of ``root`` to disk (a crash leaves no half-written save in place)."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":  # folders cannot be opened for fsync on Windows
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- reading
def saved_kind(path: str | Path) -> str | None:
    """``"fit"`` or ``"comparison"`` for a folder that looks like a hierfit save (any format), else None.

    Only for routing (which loader to call); nothing is verified here.
    """
    path = Path(path)
    meta = _peek_json(path / MANIFEST)
    if isinstance(meta, dict):
        if meta.get("format") == FORMAT and meta.get("kind") in KINDS:
            return str(meta["kind"])
        if "format_version" in meta and "engine" in meta:
            return "fit"  # format 1
    old = _peek_json(path / "comparison.json")
    if isinstance(old, dict) and old.get("kind") == "hierfit-comparison":
        return "comparison"  # format 1
    return None


def read_save(path: str | Path, kind: str) -> tuple[dict[str, Any], SavedFiles]:
    """Verify and read a save of ``kind`` from disk: its manifest and every file's bytes.

    Retries while another process replaces the save (see the module docstring).
    """
    path = Path(path)
    deadline = time.monotonic() + RETRY_SECONDS
    while True:
        if not _folder_ready(path, deadline):
            continue
        before = _read_or_none(path / CHECKSUMS)
        try:
            return _verify(_DiskFiles(path), str(path), kind)
        except PersistenceError:
            after = _read_or_none(path / CHECKSUMS)
            if (after == before and after is not None) or time.monotonic() > deadline:
                raise
            if after == before and not _swap_in_progress(path):
                raise
            time.sleep(0.002)  # replaced mid-read: read the new save from the start


def verify_files(files: SavedFiles, kind: str) -> tuple[dict[str, Any], SavedFiles]:
    """Verify a save nested in another one (a comparison's fits), from bytes already read."""
    return _verify(_MemoryFiles(files.files), files.root, kind)


def _verify(source: _Source, root: str, kind: str) -> tuple[dict[str, Any], SavedFiles]:
    """Check sizes and SHA-256 of every file against ``SHA256SUMS`` and the manifest."""
    where = lambda name: f"{root.rstrip('/')}/{name}"  # noqa: E731
    sums_raw = source.get(CHECKSUMS)
    if sums_raw is None:
        raise _not_a_save(source, root, kind)
    sums = _parse_checksums(sums_raw, where(CHECKSUMS))
    if MANIFEST not in sums:
        raise PersistenceError(f"{where(CHECKSUMS)} does not list {MANIFEST}: the save is damaged. Save it again.")
    raw = source.get(MANIFEST)
    if raw is None:
        raise PersistenceError(f"{where(MANIFEST)} is missing: the save is incomplete or damaged. Save it again.")
    if hashlib.sha256(raw).hexdigest() != sums[MANIFEST]:
        raise PersistenceError(
            f"{where(MANIFEST)} does not match its SHA-256 in {CHECKSUMS}: the manifest (or the checksum list) was "
            "altered or truncated after saving. Restore the original files, or refit and save again."
        )
    manifest = _parse_manifest(raw, where(MANIFEST))
    _check_format(manifest, where(MANIFEST), root, kind)
    listed = _listed_files(manifest, where(MANIFEST))
    for name in sorted(set(listed) | set(sums) - {MANIFEST}):
        if name not in listed or name not in sums or listed[name][0] != sums[name]:
            raise PersistenceError(
                f"{where(CHECKSUMS)} and {where(MANIFEST)} disagree about {name!r}: one of them was edited after "
                "saving. Restore the original files, or refit and save again."
            )
    out: dict[str, bytes] = {MANIFEST: raw}
    for name, (digest, size) in sorted(listed.items()):
        data = source.get(name)
        if data is None:
            raise PersistenceError(f"{where(name)} is missing: the save is incomplete (a file was deleted). Restore it, or refit and save again.")
        if len(data) != size:
            how = f"truncated ({len(data)} of {size} bytes)" if len(data) < size else f"{len(data)} bytes instead of {size}"
            raise PersistenceError(f"{where(name)} is {how}: the file was damaged after saving. Restore it, or refit and save again.")
        if hashlib.sha256(data).hexdigest() != digest:
            raise PersistenceError(
                f"{where(name)} does not match its SHA-256 in {CHECKSUMS}: the file was altered after saving. "
                "Restore it, or refit and save again."
            )
        out[name] = data
    return manifest, SavedFiles(root, out)


class _Source(Protocol):
    """Where :func:`verify` reads files from: a folder on disk, or bytes already read."""

    def get(self, name: str) -> bytes | None:
        """The bytes of ``name``, or None when there is no such file."""
        ...

    def listing(self) -> list[str]:
        """The top-level names (for messages)."""
        ...


class _DiskFiles:
    def __init__(self, root: Path) -> None:
        self.root = root

    def get(self, name: str) -> bytes | None:
        # no symlinks followed, and a FIFO cannot block the reader: only plain files are read
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
        try:
            fd = os.open(self.root / name, flags)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EMLINK):
                raise PersistenceError(f"{self.root / name} is a symbolic link; a hierfit save holds only plain files.") from None
            if exc.errno in (errno.ENOTDIR, errno.EISDIR):
                return None
            raise PersistenceError(f"Cannot read {self.root / name}: {exc.strerror}.") from None
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise PersistenceError(f"{self.root / name} is not a plain file; a hierfit save holds only plain files.")
            return fh.read()

    def listing(self) -> list[str]:
        try:
            return sorted(os.listdir(self.root))
        except OSError:
            return []


class _MemoryFiles:
    def __init__(self, files: Mapping[str, bytes]) -> None:
        self.files = files

    def get(self, name: str) -> bytes | None:
        return self.files.get(name)

    def listing(self) -> list[str]:
        return sorted({name.split("/")[0] for name in self.files})


def _parse_checksums(raw: bytes, where: str) -> dict[str, str]:
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise PersistenceError(f"{where} is not a checksum list (not ASCII text): the save is damaged. Save it again.") from None
    sums: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        m = _SUM_LINE.match(line)
        if m is None or not NAME_RE.match(m.group(2)) or ".." in m.group(2).split("/"):
            raise PersistenceError(f"{where} line {number} is not '<sha256>  <file>': the checksum list was damaged. Save it again.")
        if m.group(2) in sums:
            raise PersistenceError(f"{where} lists {m.group(2)!r} twice: the checksum list was edited. Save it again.")
        sums[m.group(2)] = m.group(1)
    return sums


def _parse_manifest(raw: bytes, where: str) -> dict[str, Any]:
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise PersistenceError(f"{where} is not valid JSON: the manifest is damaged. Save it again.") from None
    if not isinstance(value, dict):
        raise PersistenceError(f"{where} is not a hierfit manifest (a JSON object was expected).")
    return value


def _listed_files(manifest: Mapping[str, Any], where: str) -> dict[str, tuple[str, int]]:
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise PersistenceError(f"{where} has no 'files' table: the manifest is damaged. Save it again.")
    out: dict[str, tuple[str, int]] = {}
    for name, info in files.items():
        ok = (isinstance(name, str) and NAME_RE.match(name) and ".." not in name.split("/") and isinstance(info, dict)
              and isinstance(info.get("sha256"), str) and isinstance(info.get("bytes"), int))
        if not ok:
            raise PersistenceError(f"{where}: the entry for {name!r} in 'files' is malformed; the manifest is damaged. Save it again.")
        out[name] = (info["sha256"], info["bytes"])
    return out


def _check_format(manifest: Mapping[str, Any], where: str, root: str, kind: str) -> None:
    version = manifest.get("format_version")
    if manifest.get("format") != FORMAT:
        if version == 1:
            raise _format_one(root, kind)
        raise PersistenceError(f"{where} is not a hierfit manifest (no \"format\": \"hierfit\"): {root} was written by another tool.")
    if not isinstance(version, int) or isinstance(version, bool):
        raise PersistenceError(f"{where} has no valid format_version ({version!r}): the manifest is damaged. Save it again.")
    if version > FORMAT_VERSION:
        raise PersistenceError(
            f"{root} was saved in format {version} by hierfit {manifest.get('hierfit_version', '?')}; this hierfit "
            f"({__version__}) reads format {FORMAT_VERSION}. Upgrade hierfit to load it."
        )
    if version < FORMAT_VERSION:
        raise _format_one(root, kind)
    saved = manifest.get("kind")
    if saved != kind:
        how = KINDS.get(str(saved))
        raise PersistenceError(
            f"{root} holds a saved {saved}, not a {kind}" + (f": load it with {how}." if how else " (unknown kind).")
        )


def _format_one(root: str, kind: str) -> PersistenceError:
    redo = "refit the model and save it again" if kind == "fit" else "run the comparison again and save it"
    return PersistenceError(
        f"{root} was saved in hierfit's format 1 (pickle files), which this hierfit does not read: loading a "
        f"pickle can run any code it contains. To migrate, {redo} with this hierfit (format {FORMAT_VERSION}: "
        "JSON, NumPy and native engine files, with checksums)."
    )


def _not_a_save(source: _Source, root: str, kind: str) -> PersistenceError:
    """The most useful error for a folder without ``SHA256SUMS``."""
    raw = source.get(MANIFEST)
    if raw is not None:
        try:
            meta = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            meta = None
        if isinstance(meta, dict) and meta.get("format_version") == 1:
            return _format_one(root, kind)
        if isinstance(meta, dict) and isinstance(meta.get("format_version"), int) and meta["format_version"] > FORMAT_VERSION:
            return PersistenceError(
                f"{root} was saved in format {meta['format_version']}; this hierfit ({__version__}) reads format "
                f"{FORMAT_VERSION}. Upgrade hierfit to load it."
            )
        if isinstance(meta, dict) and meta.get("format") == FORMAT:
            return PersistenceError(f"{root.rstrip('/')}/{CHECKSUMS} is missing: the save is incomplete or damaged. Save it again.")
    if source.get("comparison.json") is not None:
        return _format_one(root, kind)
    listing = source.listing()
    what = "an empty folder" if not listing else "a folder with other files (" + ", ".join(listing[:5]) + (" ..." if len(listing) > 5 else "") + ")"
    make = "fit.save(path)" if kind == "fit" else "comparison.save(path)"
    return PersistenceError(f"{root} is not a saved hierfit {kind}: it is {what}, without {MANIFEST} and {CHECKSUMS}. Make one with {make}.")


def _folder_ready(path: Path, deadline: float) -> bool:
    """Whether ``path`` is a folder to read now; False (after a short wait) during another process's swap."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if _swap_in_progress(path) and time.monotonic() < deadline:
            time.sleep(0.002)
            return False
        raise PersistenceError(f"{path} does not exist. Give the folder of a save made with fit.save(path).") from None
    if not stat.S_ISDIR(mode):
        raise PersistenceError(f"{path} is a file, not a saved hierfit folder. Give the folder that fit.save(path) wrote.")
    return True


def _swap_in_progress(path: Path) -> bool:
    """Whether a writer is between its two renames (its hidden siblings exist)."""
    try:
        names = os.listdir(path.parent)
    except OSError:
        return False
    prefix = f".{path.name}"
    return any(n.startswith(prefix + OLD_TAG) or n.startswith(prefix + NEW_TAG) for n in names)


def _read_or_none(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:
        return None


def _peek_json(path: Path, limit: int = 64 << 20) -> Any:
    """A small JSON file's content, or None if absent, too large or not JSON (no verification)."""
    try:
        if not path.is_file() or path.stat().st_size > limit:
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
