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

WRITES = 25  # per writer

SCRIPT = r"""
import json, sys, time, warnings
from pathlib import Path
import numpy as np
import pandas as pd
import hierfit

role, target = sys.argv[1], Path(sys.argv[2])
warnings.simplefilter("ignore")
if role == "writer":
    fit = hierfit.load(sys.argv[3])
    for _ in range(int(sys.argv[4])):
        fit.save(target, overwrite=True)
    print(json.dumps({"done": True}))
else:
    rows = pd.read_parquet(sys.argv[3])
    expected = {name: np.load(sys.argv[4 + i]) for i, name in enumerate(("A", "B"))}
    stop = Path(sys.argv[6])
    out = {"loads": 0, "torn": 0, "errors": [], "seen": {"A": 0, "B": 0}}
    deadline = time.monotonic() + 120
    while not target.exists() and time.monotonic() < deadline:
        time.sleep(0.001)
    while time.monotonic() < deadline:
        finished = stop.exists()
        try:
            fit = hierfit.load(target)
            pred = fit.predict(rows, interval="prediction")[["prediction", "lower", "upper"]].to_numpy()
        except Exception as exc:
            out["errors"].append(f"{type(exc).__name__}: {exc}")
        else:
            out["loads"] += 1
            match = [name for name, e in expected.items() if e.shape == pred.shape and np.array_equal(e, pred)]
            if match:
                out["seen"][match[0]] += 1
            else:
                out["torn"] += 1
        if finished:
            break
    print(json.dumps(out))
"""


def _spawn(*args: str) -> subprocess.Popen:
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
    stop = tmp_path / "stop"
    reader = _spawn("reader", target, tmp_path / "rows.parquet", tmp_path / "expected_A.npy", tmp_path / "expected_B.npy", stop)
    writers = [_spawn("writer", target, tmp_path / f"template_{name}", WRITES) for name in ("A", "B")]
    try:
        for w in writers:
            _, err = w.communicate(timeout=240)
            assert w.returncode == 0, err[-3000:]
        stop.touch()
        out, err = reader.communicate(timeout=240)
    finally:
        for p in (*writers, reader):
            if p.poll() is None:
                p.kill()
    assert reader.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["errors"] == [] and result["torn"] == 0, result
    assert result["loads"] >= 10 and min(result["seen"].values()) >= 1, result  # both fits were read while being replaced
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
