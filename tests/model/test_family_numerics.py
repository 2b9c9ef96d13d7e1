"""The family table's densities against references computed another way (seeded grids)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hierfit.model.family import get_family


def _nb_logpdf_reference(y: int, mu: float, theta: float) -> float:
    """log NB2(y; mu, theta) with lgamma(y + theta) - lgamma(theta) as a sum of y logarithms
    (exact for whole y, no cancellation) and the other terms through log1p."""
    log_rising = math.fsum(math.log(theta + k) for k in range(y))
    return math.fsum([log_rising, -math.lgamma(y + 1), -theta * math.log1p(mu / theta),
                      y * math.log(mu) if y else 0.0, -y * math.log(theta + mu) if y else 0.0])


@pytest.mark.parametrize("theta", [0.7, 5.0, 99.0, 100.0, 2.5e3, 1e6, 1e9, 1e13])
def test_negative_binomial_log_density_is_accurate_at_any_size(theta: float) -> None:
    # A size near infinity (a fit of counts without overdispersion) made the textbook form
    # cancel to ~1e-9 a row at theta = 1e6 and ~1e-6 at 1e9: noise that stalled PIRLS.
    fam = get_family("negative_binomial")
    ys = np.array([0, 1, 2, 7, 40, 250])
    for mu in (0.05, 1.0, 30.0, 400.0):
        got = fam.logpdf(ys.astype(float), np.full(ys.size, mu), None, np.asarray(theta))
        want = np.array([_nb_logpdf_reference(int(y), mu, theta) for y in ys])
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-11)


def test_negative_binomial_tends_to_the_poisson_and_its_deviance_is_finite() -> None:
    nb, pois = get_family("negative_binomial"), get_family("poisson")
    y, mu = np.array([0.0, 3.0, 12.0]), np.array([0.5, 2.5, 14.0])
    np.testing.assert_allclose(nb.logpdf(y, mu, None, np.asarray(1e13)), pois.logpdf(y, mu, None, None), atol=1e-9)
    np.testing.assert_allclose(nb.unit_deviance(y, mu, None, np.asarray(1e13)), pois.unit_deviance(y, mu, None, None),
                               atol=1e-9)
