"""Outcome families as a data table: name -> link, inverse link, outcome check.

Engines read this table instead of branching on names; adding a family adds a row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import special

from hierfit.exceptions import DataError, SpecError


@dataclass(frozen=True)
class Family:
    """An outcome distribution with its link function.

    Examples
    --------
    >>> import numpy as np
    >>> FAMILIES["bernoulli"].inverse_link(np.array([0.0]))
    array([0.5])
    """

    name: str
    link: str
    inverse_link: Callable[[np.ndarray], np.ndarray]
    has_dispersion: bool
    outcome: str  # words for error messages

    def check_outcome(self, y: np.ndarray, column: str) -> None:
        """Raise :class:`DataError` when ``y`` is outside this family's support."""
        if self.name == "bernoulli":
            bad = ~np.isin(y, (0.0, 1.0))
        elif self.name == "poisson":
            bad = (y < 0) | (y != np.round(y))
        else:
            bad = ~np.isfinite(y)
        if bad.any():
            examples = ", ".join(repr(float(v)) for v in np.unique(y[bad])[:5])
            raise DataError(
                f"Family '{self.name}' needs {self.outcome}; column '{column}' has {int(bad.sum())} "
                f"other values (e.g. {examples}). Recode the outcome or choose another family."
            )


FAMILIES: dict[str, Family] = {
    "gaussian": Family("gaussian", "identity", lambda eta: eta, True, "finite real numbers"),
    "bernoulli": Family("bernoulli", "logit", special.expit, False, "0/1 outcomes"),
    "poisson": Family("poisson", "log", np.exp, False, "non-negative integer counts"),
}


def get_family(name: str) -> Family:
    """Look up a family by name, with an error listing the allowed names."""
    try:
        return FAMILIES[name]
    except (KeyError, TypeError):
        raise SpecError(
            f"The 'family' argument must be one of: {', '.join(sorted(FAMILIES))}. Got {name!r}."
        ) from None
