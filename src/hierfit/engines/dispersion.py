"""The negative binomial's size ``theta`` by maximum likelihood at given means (``MASS::theta.ml``),
for engines that fit the mean first (``ols``'s IRLS alternates with it; ``lightgbm`` fits the
mean by Poisson deviance and then the size).

Examples
--------
>>> import numpy as np
>>> from hierfit.model import get_family
>>> rng = np.random.default_rng(0)
>>> y = rng.negative_binomial(4.0, 4.0 / (4.0 + 3.0), 20000).astype(float)  # mean 3, size 4
>>> round(theta_ml(get_family("negative_binomial"), y, np.full(y.size, 3.0), np.ones(y.size)), 1)
4.0
"""

from __future__ import annotations

import numpy as np
from scipy import optimize

from hierfit.model import Family

#: the negative binomial's log theta is searched in this range (theta from 5e-5 to 5e8)
LOG_THETA_BOUNDS = (-10.0, 20.0)


def theta_ml(family: Family, y: np.ndarray, mu: np.ndarray, prior: np.ndarray) -> float:
    """The negative-binomial size maximising the weighted log-likelihood at means ``mu``."""

    def negative(log_theta: float) -> float:
        return -float(np.sum(prior * family.logpdf(y, mu, None, float(np.exp(log_theta)))))

    res = optimize.minimize_scalar(negative, bounds=LOG_THETA_BOUNDS, method="bounded", options={"xatol": 1e-12})
    return float(np.exp(res.x))
