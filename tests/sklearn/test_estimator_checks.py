"""scikit-learn's own estimator checks, run on the mixed engine over grouped data.

How the checks are made to apply to grouped data, honestly:

* ``groups=[0]``: column 0 of the plain float arrays the checks feed is a grouping factor, so
  every check fits ``y ~ x1 + ... + (1 | x0)`` with ``engine="mixed"`` (a random intercept per
  group, REML) -- the engine is never switched, and a formula without a group term would be
  refused by it.
* The estimators declare ``input_tags.categorical`` (true: grouping columns are categorical),
  so the checks feed integer-coded columns: column 0 then has a few groups with several rows
  each, as group labels do, instead of one group per row. Every check test records the fits it
  made and asserts exactly that.
* ``checks={"rank_deficient": "warn"}``: rounding the tight blobs of three checks to integers
  leaves population-level columns that are exact copies of each other plus a constant; lme4
  drops such columns (with a message), and that is what ``"warn"`` does (the default,
  ``"error"``, refuses them). :func:`test_rank_deficient_warn_is_needed_only_for_collinear_check_data`
  shows those checks fail without it, and only for that reason.

No check is expected to fail: ``EXPECTED_FAILED`` is empty, and ``xfail_strict`` would turn any
entry added to it that passes into a failure.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest

pytest.importorskip("sklearn")

from sklearn.utils.estimator_checks import (
    check_estimators_pickle,
    check_pipeline_consistency,
    parametrize_with_checks,
)

import hierfit.sklearn._base as base
from hierfit.exceptions import DataError
from hierfit.sklearn import HierarchicalClassifier, HierarchicalRegressor

CHECKED = {"rank_deficient": "warn"}

#: check name -> why it cannot apply to grouped data (none so far)
EXPECTED_FAILED: dict[str, str] = {}


def _estimators() -> list:
    return [HierarchicalRegressor(groups=[0], checks=CHECKED), HierarchicalClassifier(groups=[0], checks=CHECKED)]


@pytest.fixture
def recorded_fits(monkeypatch) -> Iterator[list[tuple[str, str, int, int, int]]]:
    """``(engine, formula, rows, groups, largest group)`` of every fit made while the test runs."""
    fits: list[tuple[str, str, int, int, int]] = []
    real = base.hierfit_fit

    def spy(formula, frame, **kwargs):
        result = real(formula, frame, **kwargs)
        level = result.hierarchy.levels[0]
        fits.append((kwargs["engine"], formula, len(frame), level.n_groups, int(level.sizes.max())))
        return result

    monkeypatch.setattr(base, "hierfit_fit", spy)
    yield fits


@parametrize_with_checks(_estimators(), expected_failed_checks=lambda est: EXPECTED_FAILED, xfail_strict=True)
def test_sklearn_estimator_checks(estimator, check, recorded_fits) -> None:
    with warnings.catch_warnings():
        # data checks (few groups, singular fits) on the checks' tiny data sets are expected
        warnings.simplefilter("ignore", UserWarning)
        check(estimator)
    # every fit the check made is a mixed-model fit with real groups: fewer groups than rows,
    # and at least one group of several rows
    for engine, formula, rows, groups, largest in recorded_fits:
        assert engine == "mixed" and formula.endswith("(1 | x0)"), formula
        assert 2 <= groups < rows and largest >= 2, (formula, rows, groups, largest)


@pytest.mark.parametrize("check", [check_pipeline_consistency, check_estimators_pickle], ids=lambda c: c.__name__)
def test_rank_deficient_warn_is_needed_only_for_collinear_check_data(check) -> None:
    """Without ``rank_deficient="warn"`` these checks fail, and only on the collinear columns of their data."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(DataError, match=r"\[rank_deficient\] The population-level columns are collinear"):
            check("HierarchicalRegressor", HierarchicalRegressor(groups=[0]))
        check("HierarchicalRegressor", HierarchicalRegressor(groups=[0], checks=CHECKED))
