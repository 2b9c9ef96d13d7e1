"""Does an engine's flexible part (an MLP, boosted trees) earn its place on held-out rows?

Both ``neural`` and ``boosted-mixed`` fit a linear hierarchical model plus a flexible part,
and both keep the flexible part only when, on their validation rows, it beats the linear model
alone by more than :data:`KEEP_Z` standard errors of the per-row difference in loss: a one-sided
test at about 2.5% that keeps a part fitted to noise out and lets a real signal through.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KEEP_Z = 2.0


@dataclass(frozen=True)
class HeldoutGain:
    """Mean per-row gain on the held-out rows (positive: the flexible part helps) and its SE."""

    gain: float
    std_error: float
    n_rows: int

    @classmethod
    def from_rows(cls, per_row: np.ndarray) -> HeldoutGain:
        """From each held-out row's gain (e.g. its drop in squared error, or its rise in log density).

        Examples
        --------
        >>> g = HeldoutGain.from_rows(np.array([0.1, 0.3, 0.2, 0.4]))
        >>> round(g.gain, 3), round(g.std_error, 4), g.n_rows
        (0.25, 0.0645, 4)
        """
        per_row = np.asarray(per_row, dtype=float)
        se = float(per_row.std(ddof=1) / np.sqrt(len(per_row))) if len(per_row) > 1 else float("inf")
        return cls(float(per_row.mean()), se, int(len(per_row)))

    @property
    def keep(self) -> bool:
        """Whether the gain is more than :data:`KEEP_Z` standard errors above zero.

        Examples
        --------
        >>> HeldoutGain(0.05, 0.01, 1000).keep, HeldoutGain(0.001, 0.002, 1000).keep
        (True, False)
        """
        return self.gain > KEEP_Z * self.std_error
