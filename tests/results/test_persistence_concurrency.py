"""Two processes save different fits to one folder over and over while a third loads it.

Every load must return one whole fit (predictions exactly those of A or of B), never a mix and
never an error: the reader retries when the save is replaced mid-read (see hierfit.storage).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import hierfit

LOADS = 40  # the reader's loads while both writers keep replacing the save
MAX_SAVES = 400  # per writer: the loop is bounded even if the reader never finishes

SCRIPT = r"""
import json, sys, time, warnings
from pathlib import Path
import numpy as np
import pandas as pd
import hierfit

role, target, template, sync = sys.argv[1], Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
warnings.simplefilter("ignore")
deadline = time.monotonic() + 120
fit = hierfit.load(template)  # warm: imports done before the timed part starts
if role == "writer":
    while not (sync / "reader_ready").exists() and time.monotonic() < deadline:
        time.sleep(0.001)
    saves = 0
    while saves < int(sys.argv[5]) and not (sync / "reader_done").exists() and time.monotonic() < deadline:
        fit.save(target, overwrite=True)
        saves += 1
    print(json.dumps({"saves": saves}))
else:
    rows = pd.read_parquet(sync / "rows.parquet")
    expected = {name: np.load(sync / f"expected_{name}.npy") for name in ("A", "B")}
    out = {"loads": 0, "torn": 0, "errors": [], "seen": {"A": 0, "B": 0}}
    (sync / "reader_ready").touch()
    while not target.exists() and time.monotonic() < deadline:
        time.sleep(0.001)
    while out["loads"] + len(out["errors"]) < int(sys.argv[5]) and time.monotonic() < deadline:
        try:
            fit = hierfit.load(target)
            pred = fit.predict(rows, interval="prediction")[["prediction", "lower", "upper"]].to_numpy()
        except Exception as exc:
            out["errors"].append(f"{type(exc).__name__}: {exc}")
            continue
        out["loads"] += 1
        match = [name for name, e in expected.items() if e.shape == pred.shape and np.array_equal(e, pred)]
        if match:
            out["seen"][match[0]] += 1
        else:
            out["torn"] += 1
    (sync / "reader_done").touch()
    print(json.dumps(out))
"""


def _spawn(*args: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SCRIPT, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_writers_and_a_reader_never_see_a_torn_fit(small_sim, tmp_path) -> None:
    rows = small_sim.data.head(40).reset_index(drop=True)
    fit_a = hierfit.fit(small_sim.formula, small_sim.data, engine="ols", national="United_state")
    fit_b = hierfit.fit("y ~ x2 + (1 | market)", small_sim.data, engine="ols")
    rows.to_parquet(tmp_path / "rows.parquet")
    for name, fit in (("A", fit_a), ("B", fit_b)):
        fit.save(tmp_path / f"template_{name}")
        np.save(tmp_path / f"expected_{name}.npy", fit.predict(rows, interval="prediction")[["prediction", "lower", "upper"]].to_numpy())
    target = tmp_path / "shared" / "fit"
    reader = _spawn("reader", target, tmp_path / "template_A", tmp_path, LOADS)
    writers = [_spawn("writer", target, tmp_path / f"template_{name}", tmp_path, MAX_SAVES) for name in ("A", "B")]
    try:
        out, err = reader.communicate(timeout=240)
        assert reader.returncode == 0, err[-3000:]
        saves = []
        for w in writers:
            w_out, w_err = w.communicate(timeout=240)
            assert w.returncode == 0, w_err[-3000:]
            saves.append(json.loads(w_out.strip().splitlines()[-1])["saves"])
    finally:
        for p in (*writers, reader):
            if p.poll() is None:
                p.kill()
    result = json.loads(out.strip().splitlines()[-1])
    assert result["errors"] == [] and result["torn"] == 0, result
    assert result["loads"] == LOADS and min(result["seen"].values()) >= 1, (result, saves)  # both fits read while replaced
    assert min(saves) >= 1, saves
    # the folder holds one complete save, and no writer left anything beside it
    final = hierfit.load(target)
    assert final.spec.text in (fit_a.spec.text, fit_b.spec.text)
    assert sorted(p.name for p in target.parent.iterdir()) == ["fit"]


def test_a_reader_waits_out_the_instant_between_the_two_renames(small_sim, tmp_path, monkeypatch) -> None:
    """While the old save is moved away and the new one not yet in place, a load retries."""
    import threading

    import hierfit.storage.replace as replace

    fit = hierfit.fit("y ~ x2 + (1 | market)", small_sim.data, engine="ols")
    target = tmp_path / "fit"
    fit.save(target)
    real_rename = replace.os.rename
    gap = threading.Event()

    def slow_rename(src, dst):
        real_rename(src, dst)
        if replace.OLD_TAG in str(dst):  # the old save was just moved away: hold the gap open
            gap.set()
            time.sleep(0.3)

    monkeypatch.setattr(replace.os, "rename", slow_rename)
    saver = threading.Thread(target=lambda: fit.save(target, overwrite=True))
    saver.start()
    assert gap.wait(10)
    assert not target.exists()
    loaded = hierfit.load(target)  # waits for the new save instead of failing
    saver.join()
    assert loaded.spec == fit.spec


def test_a_save_that_finds_another_in_place_needs_overwrite(small_sim, tmp_path, monkeypatch) -> None:
    """Without overwrite, a save that finds another process's save arrived meanwhile is refused."""
    first = hierfit.fit(small_sim.formula, small_sim.data, engine="ols")
    second = hierfit.fit("y ~ x2 + (1 | market)", small_sim.data, engine="ols")
    target = tmp_path / "fit"
    real_save = second.engine_fit.save

    def racing(state):
        first.save(target)  # another writer completes while this one is still writing
        real_save(state)

    monkeypatch.setattr(second.engine_fit, "save", racing)
    with pytest.raises(hierfit.HierfitError, match="already holds a hierfit save; pass overwrite=True"):
        second.save(target)
    assert hierfit.load(target).spec == first.spec
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit"]


def test_an_interrupted_swap_says_where_the_previous_save_is(small_sim, tmp_path, monkeypatch) -> None:
    import hierfit.storage.verify as verify

    fit = hierfit.fit("y ~ x2 + (1 | market)", small_sim.data, engine="ols")
    target = fit.save(tmp_path / "fit")
    moved = tmp_path / f".fit{verify.OLD_TAG}0123456789ab"
    target.rename(moved)  # a writer killed right after moving the old save away
    monkeypatch.setattr(verify, "RETRY_SECONDS", 0.05)
    with pytest.raises(hierfit.HierfitError, match=r"a save to it was interrupted.*\.fit\.hierfit-old-0123456789ab; rename it to fit"):
        hierfit.load(target)
    moved.rename(target)
    assert hierfit.load(target).engine == "ols"
