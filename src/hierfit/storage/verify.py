"""Reading a save: every file verified before anything is parsed, retried while it is replaced."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from hierfit._version import __version__
from hierfit.exceptions import PersistenceError
from hierfit.storage.files import (
    _SUM_LINE,
    CHECKSUMS,
    FORMAT,
    FORMAT_VERSION,
    KINDS,
    MANIFEST,
    NAME_RE,
    NEW_TAG,
    OLD_TAG,
    SavedFiles,
)

#: seconds a reader keeps retrying while other processes replace the save it reads
RETRY_SECONDS = 10.0


def read_save(path: str | Path, kind: str) -> tuple[dict[str, Any], SavedFiles]:
    """Verify and read a save of ``kind`` (``"fit"``, ``"comparison"``): its manifest and every file's bytes.

    A failed read is retried when ``SHA256SUMS`` changed meanwhile (another process replaced
    the save) or the folder is missing while a writer's hidden siblings show a swap in
    progress, for up to :data:`RETRY_SECONDS`; otherwise the error is the save's own.

    Examples
    --------
    >>> import tempfile
    >>> from hierfit.storage import atomic_save, new_manifest, seal
    >>> target = Path(tempfile.mkdtemp()) / "save"
    >>> _ = atomic_save(target, lambda d: seal(d, new_manifest("fit", engine="ols")))
    >>> manifest, files = read_save(target, "fit")
    >>> manifest["engine"], files.names()
    ('ols', ['hierfit.json'])
    >>> read_save(target, "comparison")
    Traceback (most recent call last):
    ...
    hierfit.exceptions.PersistenceError: ... holds a saved fit, not a comparison: load it with hierfit.load(path).
    """
    path = Path(path)
    deadline = time.monotonic() + RETRY_SECONDS
    while True:
        if not _folder_ready(path, deadline):
            continue  # between a writer's two renames: look again
        before = _read_or_none(path / CHECKSUMS)
        try:
            return _verify(_DiskFiles(path), str(path), kind)
        except PersistenceError:
            after = _read_or_none(path / CHECKSUMS)
            replaced = after != before or (after is None and _swap_in_progress(path))
            if not replaced or time.monotonic() > deadline:
                raise  # the save itself is damaged (or keeps changing for too long)
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
        if _swap_in_progress(path):
            if time.monotonic() < deadline:
                time.sleep(0.002)
                return False
            old = sorted(n for n in os.listdir(path.parent) if n.startswith(f".{path.name}{OLD_TAG}"))
            if old:
                raise PersistenceError(
                    f"{path} does not exist: a save to it was interrupted between moving the previous save away and "
                    f"putting the new one in place. The previous save is {path.parent / old[-1]}; rename it to {path.name}."
                ) from None
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


