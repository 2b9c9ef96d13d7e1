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

A worker that dies mid-pass loses only its tasks: ``dask.distributed`` reruns them (and any
summary it held) on another worker, so the merged result is the one of every piece exactly
once. A task whose workers keep dying (``KilledWorker``) or a cluster that goes away fails
the fold with an :class:`~hierfit.exceptions.EngineError`: a fold never returns a partial sum.

Progress: :func:`observe_folds` hands every fold in its block to an observer (the command
line draws it with rich): the pass's name and piece count, then batches and pieces as they
finish (batches only for the local runner; a Dask task reports its piece when it is done).
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from hierfit.exceptions import DataError, EngineError, HierfitError
from hierfit.threads import thread_budget

from .base import Batch, FramePiece, located

__all__ = ["FAN_IN", "SILENT", "DaskRunner", "dask_failures", "FoldObserver", "LocalRunner", "Runner", "observe_folds"]

S = TypeVar("S")

#: summaries merged by one task of the tree reduction
FAN_IN = 8


class FoldObserver(Protocol):
    """What is told of each fold's progress (see :func:`observe_folds`)."""

    def start(self, what: str, pieces: int) -> None:
        """A fold named ``what`` (``"design pass"``) begins over ``pieces`` pieces."""

    def advance(self, *, batches: int = 0, pieces: int = 0) -> None:
        """``batches`` more batches, ``pieces`` more whole pieces are summarised."""

    def finish(self) -> None:
        """The fold is done (or failed)."""


class _Silent:
    """The observer of a fold nobody watches."""

    def start(self, what: str, pieces: int) -> None:
        pass

    def advance(self, *, batches: int = 0, pieces: int = 0) -> None:
        pass

    def finish(self) -> None:
        pass


SILENT: FoldObserver = _Silent()
_OBSERVER: contextvars.ContextVar[FoldObserver | None] = contextvars.ContextVar("hierfit_fold_observer", default=None)


@contextlib.contextmanager
def observe_folds(observer: FoldObserver) -> Iterator[None]:
    """Report the progress of every fold run inside the block to ``observer``.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from hierfit.design.sources import open_source
    >>> class Log:
    ...     def start(self, what, pieces): print("start", what, pieces)
    ...     def advance(self, *, batches=0, pieces=0): print("batches", batches, "pieces", pieces)
    ...     def finish(self): print("done")
    >>> with observe_folds(Log()), open_source(pa.table({"y": [1.0, 2.0, 3.0]}), batch_size=2) as source:
    ...     source.fold(lambda b: len(b.frame), sum, ["y"], what="count")
    start count 1
    batches 1 pieces 0
    batches 1 pieces 0
    batches 0 pieces 1
    done
    3
    """
    token = _OBSERVER.set(observer)
    try:
        yield
    finally:
        _OBSERVER.reset(token)


def current_observer() -> FoldObserver:
    """The observer of :func:`observe_folds` around this call, or one that ignores everything."""
    return _OBSERVER.get() or SILENT


def _summarise_batch(summarise: Callable[[Batch], S], batch: Batch) -> S:
    try:
        return summarise(batch)
    except HierfitError as exc:
        raise located(exc, batch.where) from None


def summarise_piece(piece: Any, index: int, summarise: Callable[[Batch], S], merge: Callable[[list[S]], S],
                    columns: Sequence[str], batch_size: int, observer: FoldObserver | None = None,
                    threads: int | None = None) -> S | None:
    """The merged summary of one piece's batches (``None`` for a piece without rows).

    ``piece`` is a :class:`~.base.Piece` or, for a Dask partition computed on its worker, a
    pandas frame. ``threads``: batches summarised at once (``None``: :func:`batch_threads`).
    """
    import pandas as pd

    if isinstance(piece, pd.DataFrame):
        piece = FramePiece(piece, f"partition {index}")
    # grouping columns the summary only compares and counts (DesignPass.labels, StatisticsPass.labels)
    labels = tuple(getattr(summarise, "labels", ()))
    # summaries merged at once: one merge of several costs little more than one of two (a
    # DesignPass's cells are aligned once per merge); 1 keeps memory at one summary
    buffer = max(int(getattr(summarise, "merge_buffer", 1)), 1)
    pending: list[S] = []
    batches = _read(piece, piece.batches(columns, batch_size, index, labels))
    for summary in _summaries(batches, summarise, batch_threads(summarise) if threads is None else threads):
        pending.append(summary)
        if len(pending) > buffer:
            pending = [merge(pending)]
        if observer is not None:
            observer.advance(batches=1)
    return merge_optional(merge, pending)


def batch_threads(summarise: Callable[[Batch], Any]) -> int:
    """Batches summarised at once: what the summary allows (``summarise.batch_threads``: one
    whose work releases the GIL, as :class:`~hierfit.design.passes.DesignPass`'s compiled
    kernels do), at most the threads the work around this pass grants
    (:func:`hierfit.threads.thread_budget`: every core of this process, or its share where
    ``compare`` fits several folds at once)."""
    return max(1, min(int(getattr(summarise, "batch_threads", 1)), thread_budget()))


def _read(piece: Any, batches: Iterator[Batch]) -> Iterator[Batch]:
    """The piece's batches, a reader's own error (a damaged file, a bad cast) as a DataError."""
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except HierfitError:
            raise
        except (OSError, ValueError, TypeError, KeyError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"Cannot read {piece.label}: {first}. Check that it is an intact Parquet file.") from exc
        yield batch


def _summaries(batches: Iterator[Batch], summarise: Callable[[Batch], S], threads: int) -> Iterator[S]:
    """Each batch's summary, in the batches' order, ``threads`` of them computed at once.

    The order of the summaries (and so of every merge) is the batches' order whatever the
    threads do, so the result is the same number for number as one thread's; at most
    ``threads`` batches are summarised while the next one is read.
    """
    if threads <= 1:
        for batch in batches:
            yield _summarise_batch(summarise, batch)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="hierfit-batch") as pool:
        running: collections.deque[Future[S]] = collections.deque()
        try:
            for batch in batches:
                running.append(pool.submit(_summarise_batch, summarise, batch))
                if len(running) >= threads:
                    yield running.popleft().result()
            while running:
                yield running.popleft().result()
        finally:
            for future in running:
                future.cancel()


def merge_optional(merge: Callable[[list[S]], S], summaries: Sequence[S | None]) -> S | None:
    """Merge the summaries that exist (pieces without rows have none)."""
    present = [s for s in summaries if s is not None]
    if not present:
        return None
    return present[0] if len(present) == 1 else merge(present)


class Runner(ABC):
    """How a source's pieces are summarised and merged (here, or on a Dask cluster)."""

    def fold(self, pieces: Sequence[Any], summarise: Callable[[Batch], S], merge: Callable[[list[S]], S],
             columns: Sequence[str], batch_size: int, what: str = "pass") -> S | None:
        """The merged summary of every piece (``None``: no rows), reported to the current observer."""
        observer = current_observer()
        observer.start(what, len(pieces))
        try:
            return self._fold(pieces, summarise, merge, columns, batch_size, observer)
        finally:
            observer.finish()

    @abstractmethod
    def _fold(self, pieces: Sequence[Any], summarise: Callable[[Batch], S], merge: Callable[[list[S]], S],
              columns: Sequence[str], batch_size: int, observer: FoldObserver) -> S | None:
        """Summarise every piece and merge the summaries (``None``: no rows)."""


@dataclass(frozen=True)
class LocalRunner(Runner):
    """Every piece in this process, one batch at a time."""

    def _fold(self, pieces: Sequence[Any], summarise: Callable[[Batch], S], merge: Callable[[list[S]], S],
              columns: Sequence[str], batch_size: int, observer: FoldObserver) -> S | None:
        total: S | None = None
        for i, piece in enumerate(pieces):
            s = summarise_piece(piece, i, summarise, merge, columns, batch_size, observer)
            total = merge_optional(merge, [total, s])
            observer.advance(pieces=1)
        return total


def active_client() -> Any:
    """The ``dask.distributed`` client current in this context (``None``: none, or no distributed)."""
    if "distributed" not in sys.modules:  # no client can exist; and importing it costs a second
        return None
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

    def _fold(self, pieces: Sequence[Any], summarise: Callable[[Batch], S], merge: Callable[[list[S]], S],
              columns: Sequence[str], batch_size: int, observer: FoldObserver) -> S | None:
        import dask

        # the summarising function carries the encoding and the tree of groups: one task holds
        # it, so it travels to each worker once instead of once per piece
        shared = dask.delayed(_identity, pure=True)(summarise)
        merger = dask.delayed(_identity, pure=True)(merge)
        # one batch at a time in a task: a Dask worker runs as many tasks at once as it has
        # threads, and the workers on a machine share its cores between them
        leaves = [dask.delayed(summarise_piece, pure=False)(piece, i, shared, merger, list(columns), batch_size, threads=1)
                  for i, piece in enumerate(pieces)]
        level = leaves
        while len(level) > 1:
            level = [dask.delayed(merge_optional, pure=False)(merger, level[i:i + FAN_IN]) for i in range(0, len(level), FAN_IN)]
        try:
            client = active_client()
            if client is not None:
                return _on_client(client, leaves, level[0], observer)
            return _on_local_scheduler(level[0], observer)
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


def _on_client(client: Any, leaves: list[Any], root: Any, observer: FoldObserver) -> Any:
    """Compute the tree on a distributed client, reporting each piece as its task finishes.

    One ``compute`` of the leaves and the root shares their tasks: the pieces are summarised
    once. A lost worker's tasks are rerun by the scheduler; only when that keeps failing, or
    the cluster goes away, does the fold fail -- with an EngineError, never a partial sum.
    """
    from distributed import as_completed

    futures = client.compute([*leaves, root])
    try:
        with dask_failures("while summarising a piece of the source", "during a pass over the source", "result"):
            for _ in as_completed(futures[:-1]):
                observer.advance(pieces=1)
            return futures[-1].result()
    finally:
        for f in futures:
            f.release()


@contextlib.contextmanager
def dask_failures(died: str, lost: str, result: str) -> Iterator[None]:
    """Turn a Dask failure inside the block into a clear :class:`EngineError`: workers that kept
    dying after the scheduler's retries (``KilledWorker``: "Dask workers died {died}"), or a
    scheduler or connection that is gone ("The Dask cluster was lost {lost}"). Either way no
    ``result`` was computed: a pass fails whole, never with a partial sum."""
    from concurrent.futures import CancelledError

    from distributed import KilledWorker

    try:
        yield
    except KilledWorker as exc:
        raise EngineError(
            f"Dask workers died {died} ({exc.args[0] if exc.args else exc}); the scheduler gave up after retrying it "
            f"on other workers, so no {result} was computed. Give the workers more memory or use a smaller "
            "batch_size, and check the workers' logs."
        ) from None
    except (OSError, TimeoutError, CancelledError) as exc:
        # the scheduler or the connection to it is gone
        raise EngineError(f"The Dask cluster was lost {lost} ({type(exc).__name__}: {exc}); no {result} was computed. "
                          "Check the scheduler and fit again.") from None


def _on_local_scheduler(root: Any, observer: FoldObserver) -> Any:
    """Compute the tree on Dask's default (threaded) scheduler, counting finished piece tasks."""
    import dask
    from dask.callbacks import Callback
    from dask.utils import key_split

    def posttask(key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if key_split(key) == "summarise_piece":
            observer.advance(pieces=1)

    with Callback(posttask=posttask):
        (result,) = dask.compute(root)
    return result


def _compact(text: str) -> str:
    return " ".join(line.strip(" |+-") for line in text.splitlines() if line.strip(" |+-"))
