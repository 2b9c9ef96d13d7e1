"""RowKFold and LeaveGroupsOut: compare()'s folds in scikit-learn's splitter protocol."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import hierfit
from hierfit.evaluate import CVScheme, LeaveGroupsOut, RowKFold, parse_cv
from hierfit.exceptions import SpecError


def _folds_of(splitter, X) -> np.ndarray:
    """The fold number of every row, from the splits (checking they partition the rows)."""
    fold = np.full(len(X), -1)
    for k, (train, test) in enumerate(splitter.split(X)):
        assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(len(X)))
        assert (fold[test] == -1).all()
        fold[test] = k
    assert k + 1 == splitter.get_n_splits()
    return fold


@pytest.mark.parametrize("cv", ["kfold", "kfold:7", "submarket:3", "market:4", 3])
@pytest.mark.parametrize("seed", [0, 11])
def test_splits_are_exactly_the_folds_cvscheme_assigns(sim, cv, seed) -> None:
    scheme = parse_cv(cv, seed=seed)
    spec = hierfit.make_spec(sim.formula, national="United_state")
    splitter = scheme.splitter(sim.formula)
    X = sim.data.drop(columns="y")
    np.testing.assert_array_equal(_folds_of(splitter, X), scheme.assign(spec, sim.data))
    assert splitter.scheme == scheme


def test_leave_groups_out_reads_an_array_by_x0_x1_names(sim) -> None:
    X = sim.data[["market", "submarket"]].to_numpy()
    splitter = LeaveGroupsOut("x1", "y ~ 1 + (1 | x0) + (1 | x0:x1)", folds=3, seed=2)
    expected = LeaveGroupsOut("submarket", sim.formula, folds=3, seed=2)
    np.testing.assert_array_equal(_folds_of(splitter, X), _folds_of(expected, sim.data))


def test_held_out_submarkets_keep_their_market_known(sim) -> None:
    X = sim.data
    for train, test in LeaveGroupsOut("submarket", sim.formula, folds=4).split(X):
        held, kept = X.iloc[test], X.iloc[train]
        assert set(held.market) <= set(kept.market)
        assert not set(zip(held.market, held.submarket)) & set(zip(kept.market, kept.submarket))


def test_splitters_are_accepted_by_check_cv(sim) -> None:
    model_selection = pytest.importorskip("sklearn.model_selection")
    splitter = LeaveGroupsOut("market", sim.formula, folds=3)
    assert model_selection.check_cv(splitter) is splitter
    assert model_selection.check_cv(RowKFold(4)).get_n_splits() == 4


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: LeaveGroupsOut("region", "y ~ x1 + (1 | market)"), "level 'region' is not a level of the formula"),
        (lambda: LeaveGroupsOut("market", "y ~ x1 + (1 | market)", folds=1), "at least 2 folds"),
        (lambda: RowKFold(folds=1), "at least 2 folds"),
        (lambda: parse_cv("market:3").splitter(), "needs the formula"),
        (lambda: list(RowKFold(3).split(np.zeros((4, 1)), groups=[1, 2, 3, 4])), "takes no 'groups' argument"),
        (lambda: list(RowKFold(5).split(np.zeros((4, 1)))), "needs at least 5 rows"),
    ],
)
def test_splitter_errors_say_what_to_do(make, match) -> None:
    with pytest.raises(SpecError, match=match):
        make()


def test_too_few_groups_for_the_folds(sim) -> None:
    with pytest.raises(SpecError, match="needs at least 9 market groups; the data have 6"):
        list(LeaveGroupsOut("market", sim.formula, folds=9).split(sim.data))


def test_repr_and_scheme() -> None:
    assert repr(RowKFold(3, seed=1)) == "RowKFold(folds=3, seed=1)"
    assert CVScheme(None, 3, 1).splitter() == RowKFold(3, seed=1)


def test_neither_hierfit_nor_its_splitters_import_sklearn() -> None:
    code = "import hierfit, hierfit.evaluate, sys; print('sklearn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
