"""The music demo end to end: files written, every output labelled, real-data path."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from hierfit.engines import ENGINES
from hierfit.examples.music import synthetic_catalogue
from hierfit.examples.music.demo import run_music_demo

pytestmark = pytest.mark.skipif("mixed" not in ENGINES, reason="the 'mixed' engine is not registered")


def test_synthetic_demo_writes_a_labelled_self_contained_report(tmp_path):
    lines: list[str] = []
    demo = run_music_demo(tmp_path, seed=2, echo=lines.append, engines=("mixed",), n_artists=200)
    assert demo.primary == "mixed" and set(demo.fits) == {("mixed", "genre"), ("mixed", "subgenre")}
    assert demo.report_path.exists() and demo.ranking_path.exists() and demo.figure_path.exists()
    page = demo.report_path.read_text(encoding="utf-8")
    assert page.count("[SYNTHETIC]") >= 5 and "SYNTHETIC catalogue generated" in page
    assert "data:image/png;base64," in page
    assert not re.search(r"""(src|href)=["']https?:""", page)  # nothing loaded from outside
    csv = pd.read_csv(demo.ranking_path)
    assert (csv["catalogue"] == "SYNTHETIC").all() and len(csv) == len(demo.ranking)
    printed = "\n".join(lines)
    assert printed.startswith("[SYNTHETIC]")
    assert all(line.startswith(("[SYNTHETIC]", "\n[SYNTHETIC]", " ")) for line in lines if line.strip())
    assert demo.recovery is not None and "RMSE against the true artist totals" in printed
    assert demo.engine_table["engine"].tolist() == ["mixed"]


def test_demo_on_a_file_in_the_public_layout(tmp_path):
    raw = synthetic_catalogue(n_artists=150, seed=9).raw
    path = tmp_path / "spotify_songs.csv"
    raw.to_csv(path, index=False)
    lines: list[str] = []
    demo = run_music_demo(tmp_path / "out" / "songs-report.html", data=path, echo=lines.append,
                          engines=("nonexistent", "mixed", "pymc"), variants=("genre",), max_bayes_groups=10)
    # read from a file the catalogue is not known to be synthetic: no truth, labelled as data
    assert demo.catalogue.label == "real data" and demo.recovery is None
    assert demo.catalogue.duplicates_dropped == len(raw) - len(demo.data)
    assert any("nonexistent: skipped (not registered" in line for line in lines)
    assert any(re.search(r"pymc: skipped \(\d+ artist groups > max_bayes_groups=10", line) for line in lines)
    assert set(demo.fits) == {("mixed", "genre")}
    assert "[real data]" in demo.report_path.read_text(encoding="utf-8")
    # an .html path names the report; the CSV and figure go beside it
    assert demo.report_path == tmp_path / "out" / "songs-report.html"
    assert demo.ranking_path.parent == demo.figure_path.parent == tmp_path / "out"
