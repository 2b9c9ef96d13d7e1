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

from hierfit.storage.files import (
    CHECKSUMS,
    FORMAT,
    FORMAT_VERSION,
    KINDS,
    MANIFEST,
    NAME_RE,
    NEW_TAG,
    OLD_TAG,
    SavedFiles,
    new_manifest,
    saved_kind,
    seal,
    sha256_file,
)
from hierfit.storage.replace import atomic_file, atomic_save, check_target
from hierfit.storage.verify import read_save, verify_files

__all__ = [
    "CHECKSUMS",
    "FORMAT",
    "FORMAT_VERSION",
    "KINDS",
    "MANIFEST",
    "NAME_RE",
    "NEW_TAG",
    "OLD_TAG",
    "SavedFiles",
    "atomic_file",
    "atomic_save",
    "check_target",
    "new_manifest",
    "read_save",
    "saved_kind",
    "seal",
    "sha256_file",
    "verify_files",
]
