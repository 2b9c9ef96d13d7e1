"""The hierarchy: built from the data's grouping columns, validated as a tree."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from hierfit.design.hierarchy import build_hierarchy
from hierfit.exceptions import DataError, HierarchyError, SpecError
from hierfit.model import make_spec


def frame(markets: list[str], subs: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"y": np.arange(len(markets), dtype=float), "market": markets, "submarket": subs})


def test_reused_child_label_under_two_parents_is_two_groups() -> None:
    df = frame(["M1", "M1", "M2", "M2"], ["Sub0", "Sub1", "Sub0", "Sub0"])
    h, idx = build_hierarchy(make_spec("y ~ 1 + (1 | market/submarket)"), df)
    sub = h.level("submarket")
    assert sub.groups == ("M1:Sub0", "M1:Sub1", "M2:Sub0")
    assert [h.parent_label("submarket", g) for g in sub.groups] == ["M1", "M1", "M2"]
    assert idx["submarket"].tolist() == [0, 1, 2, 2]
    assert sub.sizes.tolist() == [1, 1, 2]


def test_explicit_hierarchy_requires_one_parent_per_child() -> None:
    df = frame(["M1", "M4", "M1", "M2"], ["Sub_3", "Sub_3", "Sub_1", "Sub_2"])
    spec = make_spec("y ~ 1 + (1 | market) + (1 | submarket)", hierarchy=["market", "submarket"])
    with pytest.raises(HierarchyError) as info:
        build_hierarchy(spec, df)
    msg = str(info.value)
    assert "Submarket 'Sub_3' appears under 2 market groups (M1, M4)" in msg
    assert "each child needs exactly one parent" in msg
    assert "(1 | market/submarket)" in msg


def test_explicit_hierarchy_with_unique_labels() -> None:
    df = frame(["M1", "M1", "M2"], ["S1", "S2", "S3"])
    spec = make_spec("y ~ 1 + (1 | market) + (1 | submarket)", hierarchy=["market", "submarket"])
    h, _ = build_hierarchy(spec, df)
    assert h.level("submarket").parent == "market"
    assert h.level("submarket").groups == ("S1", "S2", "S3")


def test_unique_ids_are_inferred_as_nested() -> None:
    df = frame(["M1", "M1", "M2", "M2"], ["S1", "S2", "S3", "S3"])
    h, _ = build_hierarchy(make_spec("y ~ 1 + (1 | market) + (1 | submarket)"), df)
    assert h.level("submarket").parent == "market"
    assert h.ancestors("submarket") == ["market"]


def test_repeating_labels_without_path_are_crossed_and_said_so() -> None:
    df = frame(["M1", "M1", "M2", "M2"], ["Sub0", "Sub1", "Sub0", "Sub1"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # separate terms are lme4's crossed syntax: no warning
        h, _ = build_hierarchy(make_spec("y ~ 1 + (1 | market) + (1 | submarket)"), df)
    assert h.level("submarket").parent is None
    assert h.crossed == (("market", "submarket"), ("submarket", "market"))
    assert "submarket: 2 groups under national, crossed with market;" in h.describe()


def test_missing_labels_are_counted() -> None:
    df = frame(["M1", None, None, "M2"], ["S1", "S2", "S3", "S4"])
    with pytest.raises(DataError, match="'market' has 2 missing labels \\(of 4 rows\\)"):
        build_hierarchy(make_spec("y ~ 1 + (1 | market/submarket)"), df)


def test_missing_grouping_column() -> None:
    df = frame(["M1"], ["S1"])
    with pytest.raises(DataError, match="Grouping column 'store' is not in the data"):
        build_hierarchy(make_spec("y ~ 1 + (1 | market/store)"), df)


def test_four_levels_parent_map_and_sizes() -> None:
    rng = np.random.default_rng(0)
    n = 200
    df = pd.DataFrame(
        {
            "y": rng.normal(size=n),
            "region": rng.choice(["N", "S"], n),
            "market": rng.choice(["a", "b"], n),
            "submarket": rng.choice(["s1", "s2"], n),
            "store": rng.choice(["t1", "t2", "t3"], n),
        }
    )
    h, idx = build_hierarchy(make_spec("y ~ 1 + (1 | region/market/submarket/store)"), df)
    assert h.names == ("region", "market", "submarket", "store")
    store = h.level("store")
    assert store.sizes.sum() == n
    # every store's ancestor at 'region' is the region in its own label
    anc = h.ancestor_index("store", "region")
    assert all(h.level("region").groups[a] == g.split(":")[0] for a, g in zip(anc, store.groups))
    assert idx["store"].max() == store.n_groups - 1


def test_hierarchy_argument_must_name_formula_levels() -> None:
    with pytest.raises(SpecError, match="formula's levels are"):
        make_spec("y ~ 1 + (1 | market)", hierarchy=["region", "market"])


def test_national_name_cannot_be_a_level() -> None:
    with pytest.raises(SpecError, match="also a level name"):
        make_spec("y ~ 1 + (1 | market)", national="market")
