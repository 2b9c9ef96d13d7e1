"""Engine-neutral priors: ``hierfit.priors.normal(0, 2.5)``, ``half_normal(1)``, ``lkj(2)``.

See :mod:`hierfit.spec.priors` for the targets a prior can be set on.
"""

from hierfit.spec.priors import Prior, exponential, half_normal, lkj, normal, student_t

__all__ = ["Prior", "exponential", "half_normal", "lkj", "normal", "student_t"]
