"""Helpers shared by the persistence tests."""

from __future__ import annotations

import json
from pathlib import Path

from hierfit.storage import CHECKSUMS, MANIFEST, seal


def reseal(path: Path, edit=None) -> None:
    """Re-seal a save after changing its manifest with ``edit(manifest)`` (a consistent, new save)."""
    manifest = json.loads((path / MANIFEST).read_text())
    manifest.pop("files")
    if edit is not None:
        edit(manifest)
    (path / MANIFEST).unlink()
    (path / CHECKSUMS).unlink()
    seal(path, manifest)
