"""How many threads an engine's native library may use: set by the work around the fit.

A single :func:`hierfit.fit` has the machine to itself, so its engine may use every core it can
run on. :func:`hierfit.compare` with ``workers=W`` fits ``W`` folds at once, one per worker
process, and each of those fits gets ``cores // W`` threads (one each for 2 workers on 2
cores): native pools sized for the whole machine would otherwise fight each other (LightGBM on
2 busy cores: 4.3 s per fold with its default threads, 1.9 s with one).

Engines ask :func:`threads_for` with their own option (LightGBM's ``num_threads``): a positive
value is the user's and is kept; ``0``/``None`` means "what the work around this fit allows",
:func:`thread_budget`. The budget is a context variable, set for the duration of a block by
:func:`limit_threads`, which also caps BLAS/OpenMP pools through threadpoolctl and records
what each engine was granted. The ``neural`` engine keeps one torch thread on CPU unless told
otherwise (its network is small: measured 6.9 s with one thread against 52.5 s with two on 2
busy cores), which is within every budget.

Examples
--------
>>> threads_for(None) == thread_budget() == available_cores()
True
>>> with limit_threads(1) as use:
...     threads_for(0), threads_for(3), use.budget, use.used
(1, 3, 1, 3)
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class ThreadUse:
    """A block's thread budget and the counts engines took inside it (:func:`threads_for`)."""

    budget: int
    granted: list[int] = field(default_factory=list)

    @property
    def used(self) -> int:
        """The most threads any engine took, or the budget when none asked (BLAS takes that)."""
        return max(self.granted, default=self.budget)


_USE: contextvars.ContextVar[ThreadUse | None] = contextvars.ContextVar("hierfit_thread_use", default=None)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def thread_budget() -> int:
    """Threads the current fit may use: every core, unless a caller set a smaller budget."""
    use = _USE.get()
    return available_cores() if use is None else use.budget


def threads_for(requested: int | None) -> int:
    """An engine's thread count: ``requested`` when positive, else :func:`thread_budget`."""
    threads = int(requested) if requested else thread_budget()
    use = _USE.get()
    if use is not None:
        use.granted.append(threads)
    return threads


def fold_budget(workers: int) -> int:
    """Threads for each of ``workers`` fits running at once: ``cores // workers``, at least 1."""
    return max(1, available_cores() // max(1, int(workers)))


@contextlib.contextmanager
def limit_threads(threads: int) -> Iterator[ThreadUse]:
    """Within the block, fits use ``threads`` threads (native pools and BLAS alike).

    Yields the block's :class:`ThreadUse`, whose ``used`` says what the engines took.
    """
    from threadpoolctl import threadpool_limits

    use = ThreadUse(max(1, int(threads)))
    token = _USE.set(use)
    try:
        with threadpool_limits(use.budget):
            yield use
    finally:
        _USE.reset(token)
