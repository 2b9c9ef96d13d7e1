"""The HTML report: self-contained, every section present, built from objects or directories."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser

import pytest

import hierfit
from hierfit.exceptions import DataError
from hierfit.report import build_report

SECTIONS = ["Model", "Data", "Engine comparison", "Recovery of the truth", "Hierarchy", "Group effects by level", "Predictive checks", "Decomposition", "Variance partition", "Effects tables", "Diagnostics and warnings"]


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: list[dict] = []
        self.h2: list[str] = []
        self.links: list[str] = []
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a)
        if tag in ("script", "link", "iframe") and (a.get("src") or a.get("href", "")).startswith("http"):
            self.links.append(a.get("src") or a.get("href"))
        self._in_h2 = tag == "h2"

    def handle_data(self, data):
        if self._in_h2:
            self.h2.append(data)
            self._in_h2 = False


def _parse(html: str) -> _Collect:
    p = _Collect()
    p.feed(html)
    return p


def test_comparison_report_is_self_contained_with_every_section(report_file, report_comparison):
    html = report_file.read_text()
    page = _parse(html)
    assert set(SECTIONS) <= set(page.h2)
    assert not page.links and "http://" not in html.replace("http://www.w3.org", "")
    assert len(page.images) >= 8
    for img in page.images:
        src = img["src"]
        assert src.startswith("data:image/png;base64,")
        raw = base64.b64decode(src.split(",", 1)[1])
        assert raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) > 2000
        assert img.get("alt")
    assert "could not be drawn" not in html
    for name in report_comparison.engines:
        assert f"<td>{name}</td>" in html
    assert report_comparison.spec.text in html


def test_shrinkage_section_when_ols_and_a_partial_engine_are_compared(report_file, report_comparison):
    html = report_file.read_text()
    has_partial = "mixed" in report_comparison.fits
    assert ("<h2>Shrinkage</h2>" in html) == has_partial
    if has_partial:
        # ols is the no-pooling reference whenever it was fitted, even beside another
        # no-pooling engine (lightgbm) that comes first in the comparison
        assert "no pooling (ols) against partial pooling" in html


def test_shrinkage_reference_is_ols_whatever_the_order_of_the_fits(report_comparison):
    from hierfit.report.build import _no_pooling_reference

    fits = report_comparison.fits
    assert _no_pooling_reference(dict(reversed(list(fits.items())))) == "ols"
    others = {n: r for n, r in fits.items() if n != "ols"}
    assert _no_pooling_reference(others) == ("lightgbm" if "lightgbm" in others else None)


def test_every_id_on_the_page_is_unique(report_file):
    """Inline SVG figures each bring matplotlib's ids (patch_1, text_1, ...): they are prefixed."""
    ids = re.findall(r'\bid="([^"]+)"', report_file.read_text())
    assert len(ids) > 20
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})[:5]


def test_report_source_can_be_a_saved_comparison_directory(report_comparison, tmp_path):
    from hierfit.evaluate import Comparison
    from hierfit.report.build import _load

    report_comparison.save(tmp_path / "cmp")
    loaded = _load(tmp_path / "cmp")
    assert isinstance(loaded, Comparison)
    assert loaded.summary().equals(report_comparison.summary())


def test_fit_report_from_a_saved_fit_directory_and_with_data(report_sim, tmp_path):
    sim = hierfit.simulate(n_markets=4, n_submarkets=2, rows_per_submarket=15, seed=1)
    fit = hierfit.fit("y ~ x1 + (1 | market/submarket)", sim.data, engine="ols")
    fit.save(tmp_path / "fit")
    bare = build_report(tmp_path / "fit", tmp_path / "a.html")
    assert (tmp_path / "a.html").read_text(encoding="utf-8") == bare
    assert "<h2>Hierarchy</h2>" in bare and "<h2>Predictive checks</h2>" not in bare
    assert "Pass the data (--data)" in bare
    full = build_report(fit, data=sim.data, truth=sim.truth)
    assert "<h2>Predictive checks</h2>" in full and "<h2>Recovery of the truth</h2>" in full


def test_text_is_escaped(report_sim, tmp_path):
    fit = hierfit.fit("y ~ x1 + (1 | market)", report_sim.data, engine="ols", national="<b>US</b>")
    html = build_report(fit, title="a <script>alert(1)</script> title")
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "&lt;b&gt;US&lt;/b&gt;" in html


def test_a_failing_plot_becomes_a_visible_note(report_sim, monkeypatch):
    from hierfit.plots import DecompositionDisplay

    def boom(*args, **kwargs):
        raise RuntimeError("kaput")

    monkeypatch.setattr(DecompositionDisplay, "from_result", boom)
    fit = hierfit.fit("y ~ x1 + (1 | market)", report_sim.data, engine="ols")
    html = build_report(fit, data=report_sim.data)
    assert re.search(r"decomposition could not be drawn: RuntimeError: kaput", html)


def test_bad_source_directory_says_what_it_needs(tmp_path):
    with pytest.raises(DataError, match="neither a saved fit .* nor a saved comparison"):
        build_report(tmp_path)


def test_boosting_fits_show_their_first_tree_or_say_they_kept_none(report_sim):
    pytest.importorskip("lightgbm")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lgb = hierfit.fit(report_sim.formula, report_sim.data, engine="lightgbm", num_threads=1, num_boost_round=20)
        bm = hierfit.fit(report_sim.formula, report_sim.data, engine="boosted-mixed", num_threads=1, max_rounds=5)
    html = build_report(lgb)
    page = _parse(html)
    assert "Boosted trees" in page.h2
    n_trees = lgb.engine_fit.num_iteration
    # one numbering, from 1, in the heading, the figure and the text dump
    assert f"Tree 1 of {n_trees} (" in html and f"tree 1 of {n_trees}" in html
    assert not re.search(r"[Tt]ree 0 of", html)
    # inline SVG at natural size, its text real text (found by the browser's search)
    figure = re.search(r'<div class="svg-plot" data-what="lightgbm tree 1[^"]*"><svg [^>]*width="([0-9.]+)pt"', html)
    assert figure and "<text " in html
    assert "could not be drawn" not in html
    assert bm.statistics["n_trees"] == 0  # linear data: the mixed model alone
    assert "boosted-mixed kept no trees" in build_report(bm)
    assert "Boosted trees" not in _parse(build_report(hierfit.fit(report_sim.formula, report_sim.data, engine="ols"))).h2


def test_better_than_claims_need_a_paired_difference_beyond_noise(report_comparison):
    """An RMSE ratio of 0.9994 is not 'better': the verdict comes from per-fold paired
    differences and their standard error, and says 'indistinguishable' within 2 SE."""
    import dataclasses

    import pandas as pd

    from hierfit.report.build import _verdict

    summary = pd.DataFrame({"engine": ["ols", "mixed"], "pooling": ["none", "partial"], "rmse": [1.0, 0.9994]})
    base = [1.0, 1.3, 0.8, 1.1, 0.9]
    jitter = [0.02, -0.03, 0.01, 0.02, -0.02]

    def verdict(shift: float) -> str:
        rows = [{"engine": "ols", "fold": k, "rmse": v} for k, v in enumerate(base)]
        rows += [{"engine": "mixed", "fold": k, "rmse": v + shift + j} for k, (v, j) in enumerate(zip(base, jitter))]
        return _verdict(dataclasses.replace(report_comparison, engines=["ols", "mixed"], fold_rows=rows), summary)

    noise = verdict(-0.0006)
    assert "mixed (0.9994) is indistinguishable from no pooling (ols, 1.0000): RMSE difference -0.0006 ± 0.0" in noise
    assert "better than" not in noise and "paired over 5 folds" in noise
    assert "mixed (0.9994) is better than no pooling (ols, 1.0000)" in verdict(-0.08)
    assert "worse than no pooling" in verdict(+0.08)
