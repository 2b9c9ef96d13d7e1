"""Folds over a source: summarise every batch, merge the summaries, locally or on Dask.

``fold(summarise, merge)`` is the one way hierfit reads a source. ``summarise(batch)`` maps
a :class:`~.base.Batch` to a summary; ``merge(summaries)`` combines a list of them and must be
associative and insensitive to order (sorted labels, compensated sums: :mod:`.sums`), so the
result does not depend on how the rows were split or in which order the pieces finished.

* :class:`LocalRunner` reads the pieces one after the other in this process, keeping one
  running summary: memory is one batch plus one summary.
* :class:`DaskRunner` summarises each piece where it lives -- a Dask partition on the worker
  that holds it, a Parquet file on any worker -- with ``dask.delayed``, and merges the piece
  summaries in a tree (``FAN_IN`` at a time), on the active ``dask.distributed`` client or
  Dask's default scheduler. Only summaries travel, never rows.

Errors raised while summarising a batch get the batch's place in front of their message
(``In file 'part-2.parquet' (rows 0-999): ...``), on whichever machine they happen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from hierfit.exceptions import DataError, HierfitError

from .base import Batch, FramePiece, located

__all__ = ["FAN_IN", "DaskRunner", "LocalRunner", "Runner"]

S = TypeVar("S")

#: summaries merged by one task of the tree reduction
FAN_IN = 8


def _summarise_batch(summarise: Callable[[Batch], S], batch: Batch) -> S:
    try:
        return summarise(batch)
    except HierfitError as exc:
        raise located(exc, batch.where) from None


def summarise_piece(piece: Any, index: int, summarise: Callable[[Batch], S], merge: Callable[[list[S]], S],
                    columns: Sequence[str], batch_size: int) -> S | None:
    """The merged summary of one piece's batches (``None`` for a piece without rows).

    ``piece`` is a :class:`~.base.Piece` or, for a Dask partition computed on its worker, a
    pandas frame.
    """
    import pandas as pd

    if isinstance(piece, pd.DataFrame):
        piece = FramePiece(piece, f"partition {index}")
    total: S | None = None
    batches = iter(piece.batches(columns, batch_size, index))
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return total
        except HierfitError:
            raise
        except (OSError, ValueError, TypeError, KeyError) as exc:  # the reader's own error (a damaged file, a bad cast)
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"Cannot read {piece.label}: {first}. Check that it is an intact Parquet file.") from exc
        s = _summarise_batch(summarise, batch)
        total = s if total is None else merge([total, s])


def merge_optional(merge: Callable[[list[S]], S], summaries: Sequence[S | None]) -> S | None:
    """Merge the summaries that exist (pieces without rows have none)."""
    present = [s for s in summaries if s is not None]
    if not present:
        return None
    return present[0] if len(present) == 1 else merge(present)


class Runner:
    """How a source's pieces are summarised and merged."""

    def fold(self, pieces: Sequence[Any], summarise: Callable[[Batch], S], merge: Callable[[list[S]], S],
             columns: Sequence[str], batch_size: int) -> S | None:
        raise NotImplementedError


@dataclass(frozen=True)
class LocalRunner(Runner):
    """Every piece in this process, one batch at a time."""

    def fold(self, pieces: Sequence[Any], summarise: Callable[[Batch], S], merge: Callable[[list[S]], S],
             columns: Sequence[str], batch_size: int) -> S | None:
        total: S | None = None
        for i, piece in enumerate(pieces):
            s = summarise_piece(piece, i, summarise, merge, columns, batch_size)
            total = merge_optional(merge, [total, s])
        return total


def active_client() -> Any:
    """The ``dask.distributed`` client current in this context (``None``: none, or no distributed)."""
    try:
        from distributed import get_client
    except ImportError:
        return None
    try:
        return get_client()
    except ValueError:  # no client in this process
        return None


def _identity(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class DaskRunner(Runner):
    """Each piece summarised by one Dask task where it lives; summaries merged in a tree."""

    def fold(self, pieces: Sequence[Any], summarise: Callable[[Batch], S], merge: Callable[[list[S]], S],
             columns: Sequence[str], batch_size: int) -> S | None:
        import dask

        # the summarising function carries the encoding and the tree of groups: one task holds
        # it, so it travels to each worker once instead of once per piece
        shared = dask.delayed(_identity, pure=True)(summarise)
        merger = dask.delayed(_identity, pure=True)(merge)
        level = [dask.delayed(summarise_piece, pure=False)(piece, i, shared, merger, list(columns), batch_size)
                 for i, piece in enumerate(pieces)]
        while len(level) > 1:
            level = [dask.delayed(merge_optional, pure=False)(merger, level[i:i + FAN_IN]) for i in range(0, len(level), FAN_IN)]
        client = active_client()
        try:
            if client is not None:
                result = client.compute(level[0]).result()
            else:
                (result,) = dask.compute(level[0])
        except HierfitError:
            raise
        except ValueError as exc:
            # Dask's own check of a partition against the frame's declared columns and dtypes
            if "mismatch" not in str(exc).lower():
                raise
            raise DataError(
                f"A partition of the Dask DataFrame does not match the frame's declared columns: {_compact(str(exc))}. "
                "Make every partition hold the same columns with the same dtypes."
            ) from exc
        return result


def _compact(text: str) -> str:
    return " ".join(line.strip(" |+-") for line in text.splitlines() if line.strip(" |+-"))
