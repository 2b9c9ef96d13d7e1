"""Errors and warnings raised by hierfit.

Every error a user can cause derives from :class:`HierfitError`, so ``except HierfitError``
catches all of them; every warning derives from :class:`HierfitWarning`::

    HierfitError (ValueError)
    ├── FormulaError            the formula text cannot be read (quotes it, marks the span)
    ├── SpecError               a valid formula asks for something unsupported
    ├── DataError               the data do not fit the spec (missing column, NA, bad labels)
    │   ├── HierarchyError      groups do not form a tree (a child with two parents)
    │   └── TrainingRowsUnavailableError  per-row arrays asked of a fit streamed from Parquet / Dask
    ├── EngineError             unknown engine, bad engine option, missing optional dependency
    ├── ConvergenceError        an optimiser or sampler failed and no result can be trusted
    └── PersistenceError        a save cannot be written (occupied folder) or read back (damaged, foreign, old)

    HierfitWarning (UserWarning)
    ├── UnseenGroupsWarning     prediction met groups not seen in fitting (fell back to a parent)
    ├── DataCheckWarning        a data check flagged trouble (one row per group, few groups)
    └── FitWarning              statistical trouble in a fit (singular fit, divergences, R-hat)

Messages follow one pattern: what is wrong, the offending value, what is allowed, what to do.
"""

from __future__ import annotations

__all__ = [
    "ConvergenceError",
    "DataCheckWarning",
    "DataError",
    "EngineError",
    "FitWarning",
    "FormulaError",
    "HierarchyError",
    "HierfitError",
    "HierfitWarning",
    "PersistenceError",
    "SpecError",
    "TrainingRowsUnavailableError",
    "UnseenGroupsWarning",
]


class HierfitError(ValueError):
    """Root of every error hierfit raises on purpose."""


class FormulaError(HierfitError):
    """The formula text cannot be parsed.

    Parameters
    ----------
    message
        What is wrong and how to fix it.
    formula
        The full formula text.
    span
        ``(start, end)`` character offsets of the offending part, marked as ``⟨...⟩``.
    """

    def __init__(self, message: str, formula: str, span: tuple[int, int] | None = None) -> None:
        self.formula = formula
        self.span = span
        self.reason = message
        super().__init__(f"{message}\n  {mark_span(formula, span)}")


def mark_span(text: str, span: tuple[int, int] | None) -> str:
    """Return ``text`` with the characters in ``span`` wrapped in ``⟨ ⟩``.

    Examples
    --------
    >>> mark_span("y ~ x + | g", (8, 9))
    'y ~ x + ⟨|⟩ g'
    """
    if span is None:
        return text
    start, end = span
    return f"{text[:start]}⟨{text[start:end]}⟩{text[end:]}"


class SpecError(HierfitError):
    """The model spec is well formed but asks for something unsupported."""


class DataError(HierfitError):
    """The data do not fit the spec."""


class HierarchyError(DataError):
    """The grouping columns do not form a tree."""


class TrainingRowsUnavailableError(DataError):
    """Per-row arrays of the training rows were asked of a fit or design made from a streamed
    source (Parquet files, a Dask DataFrame), whose rows were never held in memory."""


class EngineError(HierfitError):
    """Unknown engine, invalid engine option, or missing optional dependency."""


class ConvergenceError(HierfitError):
    """An optimiser or sampler failed; no result is returned."""


class PersistenceError(HierfitError):
    """A save cannot be written where asked, or read back: the message names the file and says what to do."""


class HierfitWarning(UserWarning):
    """Root of every warning hierfit emits."""


class UnseenGroupsWarning(HierfitWarning):
    """Prediction met groups absent from the fitting data; their parent's effect was used."""


class DataCheckWarning(HierfitWarning):
    """A named data check flagged possible trouble."""


class FitWarning(HierfitWarning):
    """A fit finished but shows statistical trouble (singular fit, divergences, R-hat)."""
