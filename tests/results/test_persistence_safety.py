"""Damaged, foreign and old saves are refused with a PersistenceError naming the file -- in a
separate process, which must exit normally: LightGBM aborts the process (SIGABRT) on a
truncated model file, so a crash there would show as a negative exit code.

All cases run in one child process (one import of hierfit); each case is its own test.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from hierfit.storage import CHECKSUMS, MANIFEST

from .helpers import reseal

CHILD = """
import json, sys
import hierfit
for case, path in json.loads(sys.argv[1]).items():
    try:
        hierfit.load(path)
        out = {"case": case, "type": None, "message": "loaded"}
    except Exception as exc:
        out = {"case": case, "type": type(exc).__name__, "message": str(exc)}
    print(json.dumps(out), flush=True)
"""


class _Payload:
    """Unpickling this creates a file: proof of code running from a save if it ever appears."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _bayes(fits):
    from hierfit.engines import ENGINES

    for name in ("stan", "pymc"):
        if ENGINES[name].available:
            return fits(name)
    pytest.skip("neither pymc nor stan is installed")


@pytest.fixture(scope="module")
def cases(tmp_path_factory, fits) -> dict[str, tuple[Path, list[str]]]:
    """case -> (path to load, strings the error message must contain)."""
    root = tmp_path_factory.mktemp("damaged")
    out: dict[str, tuple[Path, list[str]]] = {}

    def saved(case: str, engine: str) -> Path:
        return fits(engine).save(root / case)

    p = saved("tampered_array", "ols")
    _flip(p / "engine" / "arrays.npz")
    out["tampered_array"] = (p, ["engine/arrays.npz", "does not match its SHA-256", "altered"])
    p = saved("tampered_manifest", "ols")
    (p / MANIFEST).write_text((p / MANIFEST).read_text().replace("United_state", "United_kingdom"))
    out["tampered_manifest"] = (p, [MANIFEST, "does not match its SHA-256 in SHA256SUMS"])
    p = saved("tampered_checksums", "mixed")
    lines = (p / CHECKSUMS).read_text().splitlines()
    lines[0] = ("0" if lines[0][0] != "0" else "1") + lines[0][1:]
    (p / CHECKSUMS).write_text("\n".join(lines) + "\n")
    out["tampered_checksums"] = (p, [CHECKSUMS, "disagree", lines[0].split("  ")[1]])
    p = saved("truncated_booster", "lightgbm")
    _truncate(p / "engine" / "booster.txt")
    out["truncated_booster"] = (p, ["engine/booster.txt is truncated"])
    p = saved("truncated_torch_weights", "neural")
    _truncate(p / "engine" / "weights.npz")
    out["truncated_torch_weights"] = (p, ["engine/weights.npz is truncated"])
    p = _bayes(fits).save(root / "truncated_netcdf")
    _truncate(p / "engine" / "posterior.nc")
    out["truncated_netcdf"] = (p, ["engine/posterior.nc is truncated"])
    p = saved("truncated_mixed_statistics", "mixed")
    _truncate(p / "engine" / "lmm" / "arrays.npz")
    out["truncated_mixed_statistics"] = (p, ["engine/lmm/arrays.npz is truncated"])
    p = saved("deleted_file", "boosted-mixed")
    (p / "engine" / "effects" / "state.json").unlink()
    out["deleted_file"] = (p, ["engine/effects/state.json is missing", "deleted"])
    p = saved("deleted_checksums", "ols")
    (p / CHECKSUMS).unlink()
    out["deleted_checksums"] = (p, [f"{CHECKSUMS} is missing"])
    p = root / "foreign_folder"
    p.mkdir()
    (p / "data.csv").write_text("a,b\n1,2\n")
    (p / "model.bin").write_bytes(b"\x00\x01")
    out["foreign_folder"] = (p, ["foreign_folder is not a saved hierfit fit", "data.csv", "model.bin"])
    p = saved("foreign_manifest", "ols")
    reseal(p, lambda m: m.update(format="sometool"))
    out["foreign_manifest"] = (p, [MANIFEST, "not a hierfit manifest", "another tool"])
    p = saved("newer_version", "ols")
    reseal(p, lambda m: m.update(format_version=3))
    out["newer_version"] = (p, ["newer_version was saved in format 3", "Upgrade hierfit"])
    p = root / "format_one"
    p.mkdir()
    (p / MANIFEST).write_text(json.dumps({"format_version": 1, "engine": "ols", "engine_class": "os:system"}))
    (p / "result.pkl").write_bytes(pickle.dumps(_Payload(root / "code_ran")))
    (p / "engine").mkdir()
    (p / "engine" / "engine.pkl").write_bytes(pickle.dumps(_Payload(root / "code_ran")))
    out["format_one"] = (p, ["format_one was saved in hierfit's format 1 (pickle files)", "refit the model and save it again"])
    p = root / "plain_file"
    p.write_text("not a folder")
    out["plain_file"] = (p, ["plain_file is a file, not a saved hierfit folder"])
    return out


@pytest.fixture(scope="module")
def child_results(cases) -> tuple[subprocess.CompletedProcess, dict[str, dict]]:
    arg = json.dumps({case: str(path) for case, (path, _) in cases.items()})
    proc = subprocess.run([sys.executable, "-c", CHILD, arg], capture_output=True, text=True, timeout=300)
    results = {r["case"]: r for r in (json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{"))}
    return proc, results


CASES = [
    "tampered_array", "tampered_manifest", "tampered_checksums", "truncated_booster", "truncated_torch_weights",
    "truncated_netcdf", "truncated_mixed_statistics", "deleted_file", "deleted_checksums", "foreign_folder",
    "foreign_manifest", "newer_version", "format_one", "plain_file",
]  # fmt: skip


def test_the_child_process_exits_normally(child_results) -> None:
    proc, results = child_results
    assert proc.returncode == 0, f"exit code {proc.returncode}; stderr:\n{proc.stderr[-3000:]}"
    assert sorted(results) == sorted(CASES)


@pytest.mark.parametrize("case", CASES)
def test_damaged_save_is_a_persistence_error_naming_the_file(case, cases, child_results) -> None:
    _, results = child_results
    result = results.get(case)
    assert result is not None, f"the child process never finished case {case!r}"
    assert result["type"] == "PersistenceError", result
    for needle in cases[case][1]:
        assert needle in result["message"], (needle, result["message"])


def test_format_one_pickles_were_never_unpickled(cases, child_results) -> None:
    path = cases["format_one"][0]
    assert not (path.parent / "code_ran").exists()
