"""``build_report()``: one HTML page for a fit or a comparison of engines.

Sections: spec, data summary, engine comparison (CV metrics), recovery against the truth,
hierarchy tree, caterpillar plots per level, shrinkage, predictive checks, decomposition of
a few rows, effects tables, and diagnostics and warnings. A plot that fails to draw is
replaced by a visible note, so one engine's oddity never costs the whole report.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from hierfit.exceptions import DataError
from hierfit.storage import atomic_file, saved_kind
from hierfit.report.html import (
    Page,
    data_summary,
    details,
    failed_plot,
    h3,
    img,
    pre,
    svg_figure,
    table_html,
    text,
)

MAX_EFFECT_ROWS = 400
#: levels of a boosted tree drawn at page width; the whole tree opens below at natural size
TREE_TOP_LEVELS = 4


def build_report(
    source: Any,
    out: str | Path | None = None,
    *,
    data: pd.DataFrame | None = None,
    truth: Any = None,
    title: str | None = None,
) -> str:
    """Render a self-contained HTML report of a fit or a comparison.

    Parameters
    ----------
    source
        A ``FitResult``, a :class:`~hierfit.evaluate.Comparison`, or the directory of a saved
        fit (``fit.save``) or comparison (``Comparison.save``).
    out
        File to write (parent folders are created); the HTML is also returned.
    data
        The data of a single fit, for the data summary, predictive check and decomposition
        (a comparison carries its own data).
    truth
        ``sim.truth`` for a single fit, to overlay the true effects (a comparison carries its own).
    title
        Page title.

    Examples
    --------
    >>> import hierfit, tempfile, os
    >>> from hierfit.report import build_report
    >>> sim = hierfit.simulate(n_markets=4, n_submarkets=3, rows_per_submarket=20, seed=1)
    >>> fit = hierfit.fit(sim.formula, sim.data, engine="ols")
    >>> page = build_report(fit, os.path.join(tempfile.mkdtemp(), "r.html"), data=sim.data)
    >>> page.startswith("<!DOCTYPE html>") and "data:image/png;base64" in page
    True
    """
    source = _load(source)
    from hierfit.evaluate.comparison import Comparison

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # diagnostics are shown in their own section
        if isinstance(source, Comparison):
            page = _comparison_page(source, title)
        else:
            page = _fit_page(source, data, truth, title)
    document = page.render()
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(out) as tmp:  # a reader never sees half a page
            tmp.write_text(document, encoding="utf-8")
    return document


def _load(source: Any) -> Any:
    if isinstance(source, (str, Path)):
        from hierfit.evaluate.comparison import Comparison, is_comparison_dir
        from hierfit.results import load_fit

        path = Path(source)
        if not path.is_dir():
            raise DataError(f"{str(path)!r} is not a directory; give the directory of a saved fit or comparison.")
        if is_comparison_dir(path):
            return Comparison.load(path)
        if saved_kind(path) == "fit":
            return load_fit(path)
        raise DataError(
            f"{str(path)!r} is neither a saved fit (a folder with hierfit.json and SHA256SUMS) nor a saved comparison. "
            "Write one with `hierfit fit ... --out DIR` or `hierfit compare ... --out DIR`."
        )
    return source


# -- pages -------------------------------------------------------------------------------------
def _comparison_page(comp, title: str | None) -> Page:
    from hierfit.evaluate.comparison import SUMMARY_COLUMNS
    from hierfit.evaluate.metrics import METRICS

    fits = comp.fits
    page = Page(title or "hierfit engine comparison", f"{comp.spec.text} · {comp.cv.describe()}")
    s = page.section("Model")
    s.append(_spec_html(comp.spec, extra={"engines compared": ", ".join(comp.engines), "cross-validation": comp.cv.describe(), "interval level": f"{comp.level:.0%}"}))
    first = next(iter(fits.values()), None)
    if first is not None:
        page.section("Data").append(data_summary(comp.data, comp.spec.response, first.hierarchy))
    s = page.section("Engine comparison")
    summary = comp.summary()
    s.append(text("Scores of held-out rows, pooled over folds. MLPD is the mean log predictive density (higher is better; NaN where the engine has no predictive distribution); coverage should be near the interval level. Engines are called better or worse than another only when their paired difference over the same folds exceeds twice its standard error; otherwise indistinguishable."))
    s.append(_verdict(comp, summary))
    shown = comp.shown_summary()
    s.append(table_html(shown[[c for c in SUMMARY_COLUMNS if c in shown.columns]]))  # recovery has its own section below
    paired = _paired_table(comp)
    if len(paired):
        label = METRICS[comp.primary_metric][0]
        s.append(details(f"paired differences over folds against {paired['reference'].iloc[0]} ({label}, MLPD)", table_html(paired)))
    if len(comp.folds):
        s.append(_plot(lambda: _comparison_display().from_comparison(comp).figure_, "engine comparison chart"))
        s.append(details("scores per fold", table_html(comp.folds)))
    for note in comp.notes:
        s.append(text(note, "warn"))
    for name, msg in comp.failures.items():
        s.append(text(f"{name} failed: {msg}", "warn"))
    if len(comp.recovery):
        s = page.section("Recovery of the truth")
        s.append(text("RMSE of each level's estimated effects against the simulated truth (total = national + deviations down to the group), and how often the intervals cover the truth."))
        rec = comp.recovery
        wide = rec[rec["kind"] == "total"].pivot_table(index=["level", "term"], columns="engine", values="rmse", sort=False).reset_index()
        s.append(h3("RMSE of total effects"))
        s.append(table_html(wide))
        s.append(details("all recovery rows (deviations, coverage)", table_html(rec)))
    if fits:
        main = _preferred(comp)
        _effects_sections(page, fits, main, comp.data, comp.truth)
    _diagnostics_section(page, fits, comp.fold_diagnostics)
    return page


def _fit_page(fit, data: pd.DataFrame | None, truth: Any, title: str | None) -> Page:
    page = Page(title or f"hierfit fit — engine {fit.engine}", fit.spec.text)
    page.section("Model").append(_spec_html(fit.spec, extra={"engine": fit.engine, "rows fitted": str(fit.n_obs)}))
    s = page.section("Data")
    if data is not None:
        s.append(data_summary(data, fit.spec.response, fit.hierarchy))
    else:
        s.append(pre(fit.hierarchy.describe()))
        s.append(text("Pass the data (--data) for the data summary, predictive check and decomposition.", "note"))
    true = None
    if truth is not None:
        from hierfit.evaluate.metrics import recovery, truth_effects

        true = truth_effects(truth)
        s = page.section("Recovery of the truth")
        s.append(table_html(recovery(fit, truth)))
    _effects_sections(page, {fit.engine: fit}, fit.engine, data, true)
    _diagnostics_section(page, {fit.engine: fit}, [])
    return page


# -- shared sections ---------------------------------------------------------------------------
def _effects_sections(page: Page, fits: dict, main: str, data: pd.DataFrame | None, truth: pd.DataFrame | None) -> None:
    from hierfit.engines import ENGINES
    from hierfit.plots import (
        CaterpillarDisplay,
        DecompositionDisplay,
        HierarchyTreeDisplay,
        PredictiveCheckDisplay,
        ShrinkageDisplay,
    )

    fit = fits[main]
    s = page.section("Hierarchy")
    s.append(text(f"Estimated total effects of {main} (national → each level), coloured by effect; the right panel repeats the deepest rows with their intervals."))
    s.append(_plot(lambda: HierarchyTreeDisplay.from_result(fit).figure_, "hierarchy tree"))
    slopes = sorted({t for t in fit.group_effects("total")["term"].unique() if t != "Intercept"})
    for term in slopes:
        s.append(_plot(lambda term=term: HierarchyTreeDisplay.from_result(fit, term=term).figure_, f"hierarchy tree of {term}"))
    s = page.section("Group effects by level")
    for lv in fit.hierarchy.levels:
        terms = fit.group_effects("total").query("level == @lv.name")["term"].unique()
        for term in terms:
            s.append(h3(f"{lv.name}: {term}"))
            s.append(_plot(lambda lv=lv, term=term: CaterpillarDisplay.from_result(fits, level=lv.name, term=term, truth=truth).figure_, f"caterpillar {lv.name} {term}"))
    no_pool = _no_pooling_reference(fits)
    partial = [n for n in fits if ENGINES.get(n) and ENGINES[n].capabilities.pooling == "partial"]
    if no_pool is not None and partial:
        s = page.section("Shrinkage")
        p = main if main in partial else partial[0]
        s.append(text(f"Deviations of each group from its parent: no pooling ({no_pool}) against partial pooling ({p})."))
        for lv in fit.hierarchy.levels:
            s.append(_plot(lambda lv=lv: ShrinkageDisplay.from_results(fits[no_pool], fits[p], level=lv.name).figure_, f"shrinkage {lv.name}"))
    if data is not None and fit.spec.response in data.columns:
        s = page.section("Predictive checks")
        s.append(text("Observed outcomes against data replicated from each fit, on the fitted rows; the PIT histogram is flat when the predictive distribution is calibrated."))
        for name, r in fits.items():
            s.append(_plot(lambda r=r: PredictiveCheckDisplay.from_result(r, data).figure_, f"predictive check {name}"))
        s = page.section("Decomposition")
        s.append(text(f"Additive parts of {main}'s prediction for 8 rows drawn at random: national + market + submarket + slopes (+ population predictors)."))
        s.append(_plot(lambda: DecompositionDisplay.from_result(fit, data).figure_, "decomposition"))
    _trees_section(page, fits)
    _variance_section(page, fits)
    s = page.section("Effects tables")
    for name, r in fits.items():
        s.append(h3(name))
        s.append(table_html(r.fixed_effects()))
        vc = r.variance_components()
        if len(vc):
            s.append(table_html(vc))
        s.append(details(f"{name}: group effects (deviation and total)", table_html(r.group_effects(), max_rows=MAX_EFFECT_ROWS)))


def _variance_section(page: Page, fits: dict) -> None:
    """Each engine's variance partition side by side (shares, ICC per level, Nakagawa's R²)."""
    from hierfit.exceptions import HierfitError

    columns, reasons = {}, []
    for name, r in fits.items():
        try:
            vp = r.variance_partition()
        except HierfitError as exc:
            reasons.append(f"{name}: {exc}")
            continue
        keep = vp[vp["quantity"].isin(["share", "ICC_adjusted", "R2_marginal", "R2_conditional"])]
        columns[name] = keep.set_index(["quantity", "level"])["estimate"]
    if not columns and not reasons:
        return
    s = page.section("Variance partition")
    s.append(text("How much of the variation each part explains, as R's performance defines it: each component's share "
                  "of the total (population-level predictors, each level, residual; binomial outcomes on the latent scale), "
                  "the adjusted ICC of each level and of all levels together, and Nakagawa's marginal and conditional R²."))
    if columns:
        s.append(table_html(pd.DataFrame(columns).reset_index()))
    for reason in reasons:
        s.append(text(reason, "note"))


def _no_pooling_reference(fits: dict) -> str | None:
    """The no-pooling fit to measure shrinkage against: ``ols`` (one dummy per group, exactly
    no pooling) whenever it was fitted, else the first engine that declares no pooling."""
    from hierfit.engines import ENGINES

    if "ols" in fits:
        return "ols"
    return next((n for n in fits if ENGINES.get(n) and ENGINES[n].capabilities.pooling == "none"), None)


def _trees_section(page: Page, fits: dict) -> None:
    """The first tree of each boosting fit, nodes coloured by kind (group level, slope, predictor).

    Trees are inline SVG at natural size, so labels stay legible: the top levels fit the page,
    and the whole tree (often thousands of pixels wide) opens below in a box that scrolls.
    """
    from hierfit.plots.trees import TreeDisplay

    boosted = {n: r for n, r in fits.items() if hasattr(r.engine_fit, "booster") and hasattr(r.engine_fit, "num_iteration")}
    if not boosted:
        return
    s = page.section("Boosted trees")
    s.append(text("The first tree of each boosting engine; nodes are coloured by what they split on: a group level, a "
                  "varying-slope column, or a population predictor. boosted-mixed's trees never split on a group. "
                  "Trees are numbered from 1 (LightGBM's tree_index counts from 0)."))
    for name, r in boosted.items():
        s.append(h3(name))
        n_trees = int(r.engine_fit.num_iteration)
        if n_trees == 0:
            s.append(text(f"{name} kept no trees: on the validation rows they did not beat the mixed model alone beyond "
                          "noise, so this fit is the mixed model.", "note"))
            continue
        try:
            tree = TreeDisplay.read(r, 0)
        except Exception as exc:  # shown in the report instead of losing the page
            s.append(failed_plot(f"{name} tree 1", exc))
            continue
        slug = "".join(c if c.isalnum() else "-" for c in name)
        n_nodes, levels = len(tree.nodes), tree.depth + 1
        if levels > TREE_TOP_LEVELS:
            s.append(text(f"Tree 1 of {n_trees} ({n_nodes} nodes in {levels} levels): the top {TREE_TOP_LEVELS} levels; "
                          "a dashed node says how many leaves hang below it."))
            s.append(_svg(lambda: tree.plot(max_depth=TREE_TOP_LEVELS - 1).figure_, f"{name} tree 1, top levels", f"{slug}-top"))
            s.append(details(f"{name}: the whole of tree 1, at full size (scroll sideways)",
                             _svg(lambda: tree.plot().figure_, f"{name} tree 1", f"{slug}-all")))
        else:
            s.append(text(f"Tree 1 of {n_trees} ({n_nodes} nodes in {levels} levels)."))
            s.append(_svg(lambda: tree.plot().figure_, f"{name} tree 1", f"{slug}-all"))
        s.append(details(f"{name}: tree 1 as text", pre(tree.text())))


def _diagnostics_section(page: Page, fits: dict, fold_diagnostics: list[dict]) -> None:
    s = page.section("Diagnostics and warnings")
    any_found = False
    for name, r in fits.items():
        stats = {k: v for k, v in r.statistics.items() if isinstance(v, float)}
        if stats:
            s.append(text(f"{name}: " + ", ".join(f"{k} = {v:.4g}" for k, v in stats.items()), "note"))
        for d in r.diagnostics:
            any_found = True
            s.append(text(f"{name} [{d.check}] {d.message}", "warn"))
    if fold_diagnostics:
        any_found = True
        table = pd.DataFrame(fold_diagnostics).groupby(["engine", "check"]).size().reset_index(name="folds with it")
        s.append(h3("in cross-validation fits"))
        s.append(table_html(table))
    if not any_found:
        s.append(text("No diagnostics: every check passed on the full-data fits.", "ok"))


def _spec_html(spec, extra: dict[str, str]) -> str:
    rows = {"formula": spec.text, "family": str(spec.family), "national root": spec.national, "levels": ", ".join(spec.levels)}
    if spec.priors:
        rows["priors"] = ", ".join(f"{k}: {v}" for k, v in spec.priors.items())
    rows.update(extra)
    return table_html(pd.DataFrame({"": list(rows), "value": list(rows.values())}), classes="data kv")


def _verdict(comp, summary: pd.DataFrame) -> str:
    """The best held-out score (the family's: RMSE, log loss or Poisson deviance), and each
    partial-pooling engine against ``ols`` (no pooling): every "better than" comes from the paired
    comparison over folds, with its standard error (``Comparison.paired``); within 2 SE the
    engines are called indistinguishable."""
    from hierfit.evaluate.metrics import METRICS
    from hierfit.evaluate.paired import describe

    metric = comp.primary_metric
    label = METRICS[metric][0]
    larger = METRICS[metric][1]
    s = summary.dropna(subset=[metric]).sort_values(metric, ascending=not larger, kind="stable")
    if s.empty:
        return text("No engine was cross-validated.", "warn")
    best = s.iloc[0]
    parts = [f"{'Highest' if larger else 'Lowest'} held-out {label}: {best.engine} ({best[metric]:.4f})."]
    if len(s) > 1:
        nxt = s.iloc[1]
        row = comp.paired(str(nxt.engine), metric).set_index("engine").loc[best.engine]
        parts[0] = parts[0][:-1] + f", {describe(row, f'the next, {nxt.engine} ({nxt[metric]:.4f})')}."
    if "ols" in set(s["engine"]):
        ref = float(s.set_index("engine").loc["ols", metric])
        paired = comp.paired("ols", metric).set_index("engine")
        for r in s[s["pooling"] == "partial"].itertuples():
            value = getattr(r, metric)
            parts.append(f"{r.engine} ({value:.4f}) is {describe(paired.loc[r.engine], f'no pooling (ols, {ref:.4f})')}.")
    return text(" ".join(parts), "note")


def _paired_table(comp) -> pd.DataFrame:
    """Every engine against ``ols`` (else the first engine with folds) on the family's score and MLPD."""
    engines = list(dict.fromkeys(comp.folds["engine"]))
    if len(engines) < 2:
        return pd.DataFrame()
    reference = "ols" if "ols" in engines else engines[0]
    return pd.concat([comp.paired(reference, m) for m in (comp.primary_metric, "mlpd")], ignore_index=True)


def _preferred(comp) -> str:
    """The engine whose effects the single-engine plots show: best held-out score (the family's)
    among partial-pooling engines, else best overall, else the first fitted."""
    from hierfit.engines import ENGINES
    from hierfit.evaluate.metrics import METRICS

    metric = comp.primary_metric
    sign = -1.0 if METRICS[metric][1] else 1.0  # rank so that smaller is better
    s = comp.summary().dropna(subset=[metric])
    s = s[s["engine"].isin(list(comp.fits))]
    partial = s[[ENGINES.get(e) is not None and ENGINES[e].capabilities.pooling == "partial" for e in s["engine"]]]
    for table in (partial, s):
        if len(table):
            # Ties (to 4 decimals) go to the simpler model: no nonlinear part, then the faster.
            ranked = table.assign(
                key=(sign * table[metric]).round(4),
                nonlinear=[bool(ENGINES.get(e) is not None and ENGINES[e].capabilities.nonlinear) for e in table["engine"]],
            ).sort_values(["key", "nonlinear", "full_fit_seconds"])
            return str(ranked["engine"].iloc[0])
    return next(iter(comp.fits))


def _plot(draw, what: str, render=img) -> str:
    """``render(draw(), what)``: a figure as HTML (a PNG by default), or a note if it fails."""
    try:
        return render(draw(), what)
    except Exception as exc:  # shown in the report instead of losing the page
        import matplotlib.pyplot as plt

        plt.close("all")
        return failed_plot(what, exc)


def _svg(draw, what: str, prefix: str) -> str:
    """Like :func:`_plot`, as inline SVG at natural size (ids prefixed with ``prefix``)."""
    return _plot(draw, what, lambda fig, alt: svg_figure(fig, alt, prefix))


def _comparison_display():
    from hierfit.plots import ComparisonDisplay

    return ComparisonDisplay
