"""Engine-neutral priors: ``hierfit.priors.normal(0, 2.5)``, ``half_normal(1)``, ``lkj(2)``.

See :mod:`hierfit.model.priors` for the targets a prior can be set on.
"""

from hierfit.model.priors import Prior, exponential, half_normal, lkj, normal, student_t

__all__ = ["Prior", "exponential", "half_normal", "lkj", "normal", "student_t"]
