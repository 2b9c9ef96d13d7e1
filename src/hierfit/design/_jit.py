"""Compiled loops where numba is installed (``hierfit[pymc]`` and ``[all]`` bring it, through PyMC),
else ``None`` and numpy instead.

Every kernel here has a numpy twin that computes the same numbers in the same order, so a
result never depends on whether numba is installed (tests compare the two bit for bit). The
kernels release the GIL: two batches can be summarised on two cores at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

try:
    import numba as _nb
except ImportError:  # pragma: no cover - exercised only without numba
    _nb = None

__all__ = ["compiled"]

F = TypeVar("F", bound=Callable[..., Any])


def compiled(fn: F) -> F | None:
    """``fn`` compiled by numba (cached on disk, without the GIL), or ``None`` without numba."""
    if _nb is None:
        return None
    return _nb.njit(cache=True, nogil=True)(fn)  # type: ignore[no-any-return]
