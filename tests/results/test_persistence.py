"""Saving and loading fits: the layout, checksums, atomic replacement, encodings, clear errors.

Damaged saves loaded in a separate process are in ``test_persistence_safety.py``; concurrent
writers and readers in ``test_persistence_concurrency.py``.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import hierfit
from hierfit.exceptions import DataError, PersistenceError
from hierfit.priors import half_normal, normal
from hierfit.results.manifest import encoding_from_json, encoding_to_json, spec_from_json, spec_to_json
from hierfit.storage import CHECKSUMS, MANIFEST

from .helpers import reseal

SRC = Path(__file__).resolve().parents[2] / "src" / "hierfit"


@pytest.fixture(scope="module")
def ols_fit(small_sim):
    return hierfit.fit(small_sim.formula, small_sim.data, engine="ols", national="United_state")


@pytest.fixture(scope="module")
def mixed_fit(small_sim):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hierfit.HierfitWarning)
        return hierfit.fit(small_sim.formula, small_sim.data, engine="mixed", national="United_state", n_draws=100)


# ----------------------------------------------------------------------------- no pickle
LOADS_CODE = re.compile(
    r"\bpickle\s*\.\s*(load|loads|Unpickler)\b|^\s*(import|from)\s+(pickle|cPickle|dill|cloudpickle|joblib|shelve|marshal)\b"
    r"|allow_pickle\s*=\s*True|torch\s*\.\s*load\s*\(|read_pickle|\.Unpickler\b"
)


def test_no_code_in_src_loads_pickle() -> None:
    """``grep -r pickle src/`` finds nothing that loads data: only mentions, and allow_pickle=False."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if LOADS_CODE.search(line):
                found.append(f"{path.relative_to(SRC)}:{number}: {line.strip()}")
            elif "pickle" in line and re.search(r"\b(load|import)\b", line.split("#")[0]) and "allow_pickle=False" not in line:
                found.append(f"{path.relative_to(SRC)}:{number}: {line.strip()}")
    assert not found, "code that may unpickle data:\n" + "\n".join(found)


def test_the_pickle_check_can_fail() -> None:
    for bad in ("import pickle", "obj = pickle.load(fh)", "np.load(f, allow_pickle=True)", "torch.load(p, weights_only=True)", "from joblib import load"):
        assert LOADS_CODE.search(bad), bad
    for fine in ("np.load(buf, allow_pickle=False)", "# no pickle here", 'f"format 1 (pickle files)"'):
        assert not LOADS_CODE.search(fine), fine


# ----------------------------------------------------------------------------- layout
def test_layout_manifest_and_checksums(ols_fit, tmp_path) -> None:
    path = ols_fit.save(tmp_path / "fit")
    files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    assert files == [CHECKSUMS, "engine/arrays.npz", "engine/state.json", "hierarchy.npz", MANIFEST]
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["format"] == "hierfit" and manifest["format_version"] == 2 and manifest["kind"] == "fit"
    assert manifest["hierfit_version"] == hierfit.__version__ and manifest["engine"] == "ols"
    assert manifest["spec"]["formula"] == ols_fit.spec.text and manifest["spec"]["national"] == "United_state"
    assert [lv["name"] for lv in manifest["hierarchy"]["levels"]] == ["market", "submarket"]
    assert manifest["encoding"]["columns"] == ["Intercept", "x1", "x2"]
    # SHA256SUMS checks every file but itself, as `sha256sum -c SHA256SUMS` would
    sums = dict(reversed(line.split("  ")) for line in (path / CHECKSUMS).read_text().splitlines())
    assert sorted(sums) == sorted(set(files) - {CHECKSUMS})
    for name, digest in sums.items():
        assert hashlib.sha256((path / name).read_bytes()).hexdigest() == digest
    assert set(manifest["files"]) == set(sums) - {MANIFEST}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary folder is left behind"


def test_npz_files_load_without_pickle(mixed_fit, tmp_path) -> None:
    path = mixed_fit.save(tmp_path / "fit")
    for npz in path.rglob("*.npz"):
        with np.load(npz, allow_pickle=False) as arrays:
            assert all(arrays[k].dtype != object for k in arrays.files)


# ----------------------------------------------------------------------------- replacing
def test_overwrite_is_required_and_replaces_the_whole_save(ols_fit, mixed_fit, tmp_path) -> None:
    target = tmp_path / "fit"
    mixed_fit.save(target)
    assert (target / "engine" / "lmm").is_dir()
    with pytest.raises(PersistenceError, match="already holds a hierfit save; pass overwrite=True"):
        ols_fit.save(target)
    assert hierfit.load(target).engine == "mixed"  # a refused save leaves the old one alone
    ols_fit.save(target, overwrite=True)
    assert not (target / "engine" / "lmm").exists(), "nothing of the earlier save is left"
    assert hierfit.load(target).engine == "ols"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit"]


def test_refuses_folders_of_other_files_and_plain_files(ols_fit, tmp_path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(PersistenceError, match=r"folder with other files \(notes.txt\), not a hierfit save"):
        ols_fit.save(mine, overwrite=True)
    assert (mine / "notes.txt").read_text() == "keep me" and len(list(mine.iterdir())) == 1
    (tmp_path / "file").write_text("x")
    with pytest.raises(PersistenceError, match="is a file, not a folder"):
        ols_fit.save(tmp_path / "file")
    empty = tmp_path / "empty"
    empty.mkdir()
    ols_fit.save(empty)  # an empty folder is fine
    assert hierfit.load(empty).engine == "ols"


def test_a_failing_save_leaves_the_old_one_and_no_pieces(ols_fit, tmp_path, monkeypatch) -> None:
    target = tmp_path / "fit"
    ols_fit.save(target)
    before = {p: p.read_bytes() for p in target.rglob("*") if p.is_file()}

    def broken(state):
        state.put("half", 1)
        raise OSError("disk full")

    monkeypatch.setattr(ols_fit.engine_fit, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        ols_fit.save(target, overwrite=True)
    assert {p: p.read_bytes() for p in target.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit"]


def test_saving_replaces_a_format_one_save(ols_fit, tmp_path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    (old / MANIFEST).write_text(json.dumps({"format_version": 1, "engine": "ols"}))
    (old / "result.pkl").write_bytes(b"\x80\x04.")
    with pytest.raises(PersistenceError, match="already holds a hierfit save"):
        ols_fit.save(old)
    ols_fit.save(old, overwrite=True)
    assert not (old / "result.pkl").exists() and hierfit.load(old).engine == "ols"


# ----------------------------------------------------------------------------- errors
def test_load_errors_say_what_to_do(ols_fit, tmp_path) -> None:
    with pytest.raises(PersistenceError, match="does not exist"):
        hierfit.load(tmp_path / "nope")
    with pytest.raises(PersistenceError, match="is not a saved hierfit fit: it is an empty folder"):
        hierfit.load(tmp_path)
    path = ols_fit.save(tmp_path / "fit")
    reseal(path, lambda m: m.update(kind="comparison"))
    with pytest.raises(PersistenceError, match=r"holds a saved comparison, not a fit: load it with hierfit.Comparison.load"):
        hierfit.load(path)
    reseal(path, lambda m: m.update(kind="fit", format_version=3, hierfit_version="9.0"))
    with pytest.raises(PersistenceError, match="saved in format 3 by hierfit 9.0; this hierfit .* reads format 2. Upgrade hierfit"):
        hierfit.load(path)
    reseal(path, lambda m: m.update(format_version=2, engine="no-such-engine"))
    with pytest.raises(PersistenceError, match="engine 'no-such-engine', which is not registered"):
        hierfit.load(path)


def test_a_resealed_but_inconsistent_engine_state_is_a_persistence_error(ols_fit, tmp_path) -> None:
    """Checksums vouch for the bytes; the reader still checks what they say."""
    path = ols_fit.save(tmp_path / "fit")
    state = json.loads((path / "engine" / "state.json").read_text())
    state["values"]["seed"] = "zero"
    (path / "engine" / "state.json").write_text(json.dumps(state))
    reseal(path)
    with pytest.raises(PersistenceError, match=r"engine/state.json: 'seed' should be an integer, not 'zero'"):
        hierfit.load(path)


def test_missing_engine_dependency_is_a_persistence_error(ols_fit, tmp_path, monkeypatch) -> None:
    import dataclasses

    from hierfit.engines import ENGINES

    path = ols_fit.save(tmp_path / "fit")
    monkeypatch.setitem(ENGINES, "ols", dataclasses.replace(ENGINES["ols"], requires=("no_such_module_for_hierfit",)))
    with pytest.raises(PersistenceError, match=r"needs optional dependencies no_such_module_for_hierfit: pip install"):
        hierfit.load(path)


# ----------------------------------------------------------------------------- spec and encoding
def test_spec_round_trip_keeps_family_link_priors_and_hierarchy() -> None:
    spec = hierfit.make_spec("cbind(s, n - s) ~ x1 + (1 | market) + (1 | submarket)", family="binomial", link="cloglog", national="US",
                             hierarchy=("market", "submarket"), priors={"sd:market": half_normal(0.5), "b": normal(0, 2)})
    back = spec_from_json(json.loads(json.dumps(spec_to_json(spec))), "hierfit.json")
    assert back == spec and back.family.link.name == "cloglog" and back.priors["b"].param("sigma") == 2.0


def test_population_encoding_round_trip_keeps_categories_splines_and_transforms(small_sim) -> None:
    rng = np.random.default_rng(11)
    data = small_sim.data.assign(color=rng.choice(["red", "green", "blue"], len(small_sim.data)), size=rng.integers(1, 4, len(small_sim.data)),
                                 w=np.abs(small_sim.data.x2) + 1)
    formula = "y ~ x1 + C(color) + C(size, contr.sum) + bs(x2, df=4) + center(x1):C(color) + np.log(w) + poly(x1, 2) + (1 | market)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hierfit.HierfitWarning)
        design = hierfit.build_design(hierfit.make_spec(formula), data, checks={"rank_deficient": "ignore"})
    enc = design.encoding
    back = encoding_from_json(json.loads(json.dumps(encoding_to_json(enc))), enc.spec, enc.hierarchy, "hierfit.json")
    new = data.iloc[[0, 5, 9]].copy()  # a few rows: categories come from the encoding, not these rows
    lo, hi = data.x2.min(), data.x2.max()
    new["x2"] = [lo + 0.01, 0.0, hi - 0.01]  # knots from these three rows would differ: the saved ones must be used
    a, b = enc.apply(new), back.apply(new)
    assert a.x_names == b.x_names
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(enc.apply(data).X, back.apply(data).X)
    with pytest.raises(DataError, match="categories the model never saw"):
        back.apply(new.assign(color=["red", "purple", "blue"]))


def test_new_data_must_build_the_fitted_columns(small_sim) -> None:
    data = small_sim.data.assign(g=np.where(small_sim.data.x1 > 0, "a", "b"))
    fit = hierfit.fit("y ~ x1 + g + (1 | market)", data, engine="ols")
    with pytest.raises(DataError, match="categories the model never saw"):
        fit.predict(data.assign(g="c"))


def test_a_spline_only_formula_is_given_its_column(small_sim) -> None:
    """formulaic does not list the argument of bs() as required; the design still passes it on."""
    fit = hierfit.fit("y ~ bs(x2, df=3) + (1 | market)", small_sim.data, engine="ols")
    assert fit.fixed_effects().term.tolist() == ["Intercept", "bs(x2, df=3)[1]", "bs(x2, df=3)[2]", "bs(x2, df=3)[3]"]


def test_fit_with_categorical_predictors_round_trips(small_sim, tmp_path) -> None:
    data = small_sim.data.assign(g=np.where(small_sim.data.x1 > 0, "a", "b"))
    fit = hierfit.fit("y ~ C(g) + bs(x2, df=3) + (1 + x1 | market)", data, engine="mixed", n_draws=50)
    back = hierfit.load(fit.save(tmp_path / "fit"))
    pd.testing.assert_frame_equal(back.predict(data, interval="prediction"), fit.predict(data, interval="prediction"), check_exact=True)


def test_refuses_to_save_inside_another_save(ols_fit, tmp_path) -> None:
    outer = ols_fit.save(tmp_path / "fit")
    with pytest.raises(PersistenceError, match="is inside the hierfit save .*fit; saving there would break"):
        ols_fit.save(outer / "engine" / "again")


def test_offsets_and_the_spec_columns_round_trip(small_sim, tmp_path) -> None:
    data = small_sim.data.assign(exposure=np.linspace(0.5, 2.0, len(small_sim.data)))
    fit = hierfit.fit("y ~ x1 + offset(np.log(exposure)) + (1 | market)", data, engine="mixed", n_draws=50)
    back = hierfit.load(fit.save(tmp_path / "fit"))
    assert back.spec == fit.spec
    new = data.head(10).assign(exposure=3.0)  # the offset is read from the new rows
    pd.testing.assert_frame_equal(back.predict(new, interval="prediction"), fit.predict(new, interval="prediction"), check_exact=True)
    spec = hierfit.make_spec("y ~ x1 + (1 | market)", offset="exposure", weights="w")
    assert spec_from_json(json.loads(json.dumps(spec_to_json(spec))), "hierfit.json") == spec
