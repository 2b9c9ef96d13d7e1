"""Saving and loading fits; errors for things that are not fits."""

from __future__ import annotations

import pytest

import hierfit
from hierfit.exceptions import PersistenceError


def test_load_rejects_a_plain_directory(tmp_path) -> None:
    with pytest.raises(PersistenceError, match="is not a saved hierfit fit"):
        hierfit.load(tmp_path)


def test_saved_directory_is_described(small_sim, tmp_path) -> None:
    fit = hierfit.fit(small_sim.formula, small_sim.data, engine="ols", national="United_state")
    path = fit.save(tmp_path / "f")
    meta = (path / "hierfit.json").read_text()
    assert '"engine": "ols"' in meta and '"national": "United_state"' in meta


def test_future_format_is_refused(small_sim, tmp_path) -> None:
    fit = hierfit.fit(small_sim.formula, small_sim.data, engine="ols")
    path = fit.save(tmp_path / "f")
    text = (path / "hierfit.json").read_text().replace('"format_version": 1', '"format_version": 99')
    (path / "hierfit.json").write_text(text)
    with pytest.raises(PersistenceError, match="format 99"):
        hierfit.load(path)
