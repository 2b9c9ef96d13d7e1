"""Names, constants and the sealing of a save: every file gets its size and SHA-256."""

from __future__ import annotations

import hashlib
import json
import re
import stat
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hierfit._version import __version__
from hierfit.exceptions import PersistenceError

FORMAT = "hierfit"
FORMAT_VERSION = 2
MANIFEST = "hierfit.json"
CHECKSUMS = "SHA256SUMS"
#: what a save holds -> how to load one
KINDS: dict[str, str] = {"fit": "hierfit.load(path)", "comparison": "hierfit.Comparison.load(path)"}
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


def _peek_json(path: Path, limit: int = 64 << 20) -> Any:
    """A small JSON file's content, or None if absent, too large or not JSON (no verification)."""
    try:
        if not path.is_file() or path.stat().st_size > limit:
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
