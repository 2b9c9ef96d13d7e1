"""Fold assignment: K-fold by row and leave-groups-out keeping parents known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import hierfit
from hierfit.evaluate import CVScheme, parse_cv
from hierfit.exceptions import SpecError


def _spec(sim):
    return hierfit.make_spec(sim.formula, national="United_state")


def test_kfold_puts_every_row_in_one_fold_of_balanced_size(small_sim):
    folds = CVScheme(None, 7, seed=3).assign(_spec(small_sim), small_sim.data)
    counts = np.bincount(folds, minlength=7)
    assert len(folds) == len(small_sim.data)
    assert counts.sum() == len(small_sim.data) and counts.max() - counts.min() <= 1
    again = CVScheme(None, 7, seed=3).assign(_spec(small_sim), small_sim.data)
    other = CVScheme(None, 7, seed=4).assign(_spec(small_sim), small_sim.data)
    assert np.array_equal(folds, again) and not np.array_equal(folds, other)


def test_leave_submarket_out_keeps_groups_whole_and_parents_known(small_sim):
    data = small_sim.data
    folds = parse_cv("submarket:3", seed=5).assign(_spec(small_sim), data)
    frame = data.assign(fold=folds)
    # a submarket is never split across folds
    assert (frame.groupby(["market", "submarket"])["fold"].nunique() == 1).all()
    for k in range(3):
        held = frame[frame.fold == k]
        train = frame[frame.fold != k]
        assert len(held) > 0
        # every market of a held-out submarket keeps other submarkets in training
        assert set(held.market) <= set(train.market)
        # and no held-out submarket appears in training
        pairs_train = set(zip(train.market, train.submarket))
        assert not pairs_train & set(zip(held.market, held.submarket))


def test_leave_market_out_holds_out_whole_markets(small_sim):
    folds = parse_cv("market:3").assign(_spec(small_sim), small_sim.data)
    frame = small_sim.data.assign(fold=folds)
    per_market = frame.groupby("market")["fold"].nunique()
    assert (per_market == 1).all()
    assert frame.groupby("fold")["market"].nunique().tolist() == [2, 2, 2]


@pytest.mark.parametrize(
    ("cv", "expected"),
    [
        ("kfold", CVScheme(None, 5, 0)),
        ("kfold:10", CVScheme(None, 10, 0)),
        ("submarket", CVScheme("submarket", 5, 0)),
        ("market:4", CVScheme("market", 4, 0)),
        (3, CVScheme(None, 3, 0)),
        (None, CVScheme(None, 5, 0)),
    ],
)
def test_parse_cv(cv, expected):
    assert parse_cv(cv) == expected


def test_cv_errors_name_the_problem(small_sim):
    spec = _spec(small_sim)
    with pytest.raises(SpecError, match=r"cv level 'store' is not a level .* choose one of: market, submarket, or 'kfold'"):
        parse_cv("store").assign(spec, small_sim.data)
    with pytest.raises(SpecError, match=r"needs at least 9 market groups; the data have 6"):
        parse_cv("market:9").assign(spec, small_sim.data)
    with pytest.raises(SpecError, match="at least 2 folds"):
        parse_cv("kfold:1")
    with pytest.raises(SpecError, match="must be an integer"):
        parse_cv("market:x")
    with pytest.raises(SpecError, match="'cv' must be"):
        parse_cv(2.5)
    tiny = pd.DataFrame({"y": [1.0, 2.0], "x1": [0.0, 1.0], "market": ["a", "b"], "submarket": ["s", "s"]})
    with pytest.raises(SpecError, match="at least 5 rows"):
        parse_cv("kfold").assign(spec, tiny)
