"""build_design(): arrays, indices, encoding for new data, and data errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import hierfit
from hierfit.design import build_design
from hierfit.exceptions import DataError
from hierfit.model import make_spec


def test_design_arrays(small_sim) -> None:
    spec = make_spec(small_sim.formula)
    d = build_design(spec, small_sim.data)
    assert d.x_names == ("Intercept", "x1", "x2")
    assert d.X.shape == (len(small_sim.data), 3)
    assert [t.level for t in d.terms] == ["market", "submarket"]
    np.testing.assert_array_equal(d.terms[0].Z[:, 1], small_sim.data["x1"].to_numpy())
    assert set(d.group_index) == {"market", "submarket"}
    assert d.contribution_columns() == ["national", "market[Intercept]", "market[x1]", "submarket[Intercept]", "population"]


def test_categorical_predictors_and_interactions() -> None:
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"y": rng.normal(size=60), "kind": rng.choice(["a", "b", "c"], 60), "x": rng.normal(size=60), "g": rng.choice(["G1", "G2", "G3"], 60)})
    d = build_design(make_spec("y ~ C(kind) * x + (1 | g)"), df)
    assert d.x_names == ("Intercept", "C(kind)[T.b]", "C(kind)[T.c]", "x", "C(kind)[T.b]:x", "C(kind)[T.c]:x")
    new = d.encoding.apply(df.head(5))
    np.testing.assert_array_equal(new.X, d.X[:5])


def test_unseen_groups_get_minus_one_and_fall_back(small_sim) -> None:
    d = build_design(make_spec(small_sim.formula), small_sim.data)
    new = small_sim.data.head(3).copy()
    new.loc[new.index[0], "submarket"] = "Sub_99"  # new submarket in a known market
    new.loc[new.index[1], "market"] = "Market_99"  # new market (so a new submarket too)
    nd = d.encoding.apply(new)
    assert nd.group_index["submarket"][:2].tolist() == [-1, -1]
    assert nd.group_index["market"][:2].tolist()[1] == -1
    assert nd.level_used().tolist() == ["market", "national", "submarket"]
    assert nd.unseen["submarket"] == {"Market_01:Sub_99": 1, "Market_99:Sub_1": 1}


def test_missing_values_are_an_error_with_counts(small_sim) -> None:
    df = small_sim.data.copy()
    df.loc[df.index[:3], "x1"] = np.nan
    df.loc[df.index[5], "y"] = np.nan
    with pytest.raises(DataError) as info:
        build_design(make_spec(small_sim.formula), df)
    msg = str(info.value)
    assert "4 of 450 rows have missing values" in msg
    assert "x1 (3), y (1)" in msg
    assert "dropna" in msg


def test_unused_columns_may_have_missing_values(small_sim) -> None:
    df = small_sim.data.copy()
    df["unused"] = np.nan
    build_design(make_spec(small_sim.formula), df)


@pytest.mark.parametrize(
    ("formula", "match"),
    [
        ("yy ~ x1 + (1 | market)", "response column 'yy' is not in the data"),
        ("y ~ x9 + (1 | market)", "predictor column 'x9' is not in the data"),
        ("y ~ x1 + (1 + x9 | market)", "slope column 'x9' is not in the data"),
        ("y ~ x1 + (1 + market | market)", "Slope column 'market' .* must be numeric"),
    ],
)
def test_missing_or_wrong_columns(small_sim, formula: str, match: str) -> None:
    with pytest.raises(DataError, match=match):
        build_design(make_spec(formula), small_sim.data)


def test_family_checks_outcome(small_sim) -> None:
    with pytest.raises(DataError, match="Family 'bernoulli' needs 0/1 outcomes"):
        build_design(make_spec(small_sim.formula, family="bernoulli"), small_sim.data)


def test_new_category_in_new_data_is_an_error() -> None:
    df = pd.DataFrame({"y": [1.0, 2, 3, 4], "kind": ["a", "b", "a", "b"], "g": ["G1", "G1", "G2", "G2"]})
    d = build_design(make_spec("y ~ C(kind) + (1 | g)"), df)
    with pytest.raises(DataError, match="categories the model never saw"):
        d.encoding.apply(pd.DataFrame({"kind": ["z"], "g": ["G1"]}))


def test_not_a_dataframe() -> None:
    with pytest.raises(DataError, match="must be a pandas DataFrame"):
        hierfit.build_design(make_spec("y ~ 1"), {"y": [1.0]})
