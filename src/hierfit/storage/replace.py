"""Writing a save atomically: a sibling folder renamed into place (see :mod:`hierfit.storage`)."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from hierfit.exceptions import PersistenceError
from hierfit.storage.files import CHECKSUMS, NEW_TAG, OLD_TAG, saved_kind

def atomic_save(path: str | Path, write: Callable[[Path], None], *, overwrite: bool = False) -> Path:
    """Let ``write`` fill a fresh sibling folder, then rename it to ``path`` (see the module docstring).

    ``path`` may be absent or an empty folder; an existing hierfit save is replaced whole when
    ``overwrite`` is true; any other existing folder or file is an error (hierfit never mixes its
    files with others, nor leaves pieces of an earlier save behind). ``write`` must
    :func:`seal` the folder it gets.

    Examples
    --------
    >>> import tempfile
    >>> from hierfit.storage import new_manifest, seal
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
    """Refuse targets hierfit must not replace; True when ``path`` is a non-empty hierfit save.

    False when it is absent or empty, or was just swapped by another saver (look again).
    """
    for parent in path.parents:
        if saved_kind(parent) is not None:
            raise PersistenceError(
                f"{path} is inside the hierfit save {parent}; saving there would break that save's checksums. "
                "Choose a folder outside it."
            )
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
        if _swapped_meanwhile(path, entries):
            return False  # another saver's swap: the caller tries its rename again
        shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
        raise PersistenceError(
            f"{path} is a folder with other files ({shown}), not a hierfit save. A save replaces its whole "
            "folder, so choose a new or empty folder."
        )
    if not overwrite:
        raise PersistenceError(f"{path} already holds a hierfit save; pass overwrite=True (command line: --overwrite) to replace it.")
    return True


def _swapped_meanwhile(path: Path, entries: list[str]) -> bool:
    """Whether another process replaced ``path`` between its listing and the manifest peek.

    A concurrent saver renames the folder away and a fresh save into place; a reader of that
    moment lists a save but finds no manifest. Looking a few more times tells that race (the
    folder vanished, or is a save again) from a folder of other files, which stays as it is.
    """
    for _ in range(3):
        try:
            now = sorted(os.listdir(path))
        except (FileNotFoundError, NotADirectoryError):
            return True
        if saved_kind(path) is not None or now != entries:
            return True
        time.sleep(0.001)
    return False


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder of ``root`` to disk (a crash leaves no half-written save in place)."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb+") as fh:  # writable: Windows cannot flush a read-only handle
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


