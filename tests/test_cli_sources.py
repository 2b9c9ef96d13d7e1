"""The command line on streaming sources: globs and folders of Parquet files, Dask clusters."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import hierfit
from hierfit.cli import _PassProgress, main
from hierfit.design.sources import observe_folds

FORMULA = "y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"


@pytest.fixture(scope="module")
def sim() -> hierfit.Simulation:
    return hierfit.simulate(n_markets=8, n_submarkets=3, rows_per_submarket=20, seed=3)


@pytest.fixture()
def lake(tmp_path, sim) -> str:
    """The simulated rows in three Parquet files (of unequal sizes); the glob that reads them."""
    folder = tmp_path / "lake"
    folder.mkdir()
    for i, rows in enumerate(np.array_split(np.arange(len(sim.data)), [100, 350])):
        sim.data.iloc[rows].to_parquet(folder / f"part-{i}.parquet", index=False)
    return str(folder / "*.parquet")


@pytest.fixture(scope="module")
def in_memory(sim) -> hierfit.FitResult:
    return hierfit.fit(FORMULA, sim.data, engine="mixed")


def _same_fit(saved: str, expected: hierfit.FitResult) -> None:
    got = hierfit.load(saved)
    np.testing.assert_allclose(got.fixed_effects()["estimate"], expected.fixed_effects()["estimate"], rtol=1e-10)
    np.testing.assert_allclose(got.variance_components()["variance"], expected.variance_components()["variance"], rtol=1e-9)


def test_fit_streams_a_glob_and_a_folder(tmp_path, lake, in_memory) -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["fit", lake, "-f", FORMULA, "--out", str(tmp_path / "fit"), "--batch-size", "64"])
    assert res.exit_code == 0, res.output
    assert "saved to" in res.output
    _same_fit(str(tmp_path / "fit"), in_memory)
    # not a terminal: no progress lines
    assert "design pass" not in res.output
    res = runner.invoke(main, ["fit", str(tmp_path / "lake"), "-f", FORMULA, "--out", str(tmp_path / "fit2")])
    assert res.exit_code == 0, res.output
    _same_fit(str(tmp_path / "fit2"), in_memory)


def test_files_the_shell_expanded_are_streamed(tmp_path, lake, sim, in_memory) -> None:
    """An unquoted glob reaches the command as several paths: they are one streamed source."""
    import glob

    files = sorted(glob.glob(lake))
    runner = CliRunner()
    res = runner.invoke(main, ["fit", *files, "-f", FORMULA, "--out", str(tmp_path / "fit")])
    assert res.exit_code == 0, res.output
    _same_fit(str(tmp_path / "fit"), in_memory)
    res = runner.invoke(main, ["predict", str(tmp_path / "fit"), *files, "--out", str(tmp_path / "pred")])
    assert res.exit_code == 0, res.output
    assert f"wrote {len(sim.data)} predictions" in res.output
    got = pd.concat([pd.read_parquet(tmp_path / "pred" / f"part-{i}.parquet") for i in range(3)], ignore_index=True)
    np.testing.assert_allclose(got["prediction"], in_memory.predict(sim.data)["prediction"].to_numpy(), rtol=1e-9)
    res = runner.invoke(main, ["fit", files[0], str(tmp_path), "-f", FORMULA, "--out", str(tmp_path / "fit2")])
    assert res.exit_code == 2 and "is a folder; a list holds files and globs" in res.output


def test_fit_of_a_source_refuses_other_engines(tmp_path, lake) -> None:
    res = CliRunner().invoke(main, ["fit", lake, "-f", FORMULA, "-e", "ols", "--out", str(tmp_path / "fit")])
    assert res.exit_code == 2
    assert res.output.startswith("error: ") and "ols" in res.output


def test_predict_a_glob_into_a_folder(tmp_path, lake, sim, in_memory) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["fit", lake, "-f", FORMULA, "--out", str(tmp_path / "fit")]).exit_code == 0
    res = runner.invoke(main, ["predict", str(tmp_path / "fit"), lake, "--out", str(tmp_path / "pred"), "--batch-size", "50",
                               "--interval", "prediction"])
    assert res.exit_code == 0, res.output
    assert f"wrote {len(sim.data)} predictions" in res.output
    parts = [pd.read_parquet(tmp_path / "pred" / f"part-{i}.parquet") for i in range(3)]
    got = pd.concat(parts, ignore_index=True)
    expected = in_memory.predict(sim.data, interval="prediction").reset_index(drop=True)
    np.testing.assert_allclose(got["prediction"], expected["prediction"], rtol=1e-9)
    assert list(got.columns) == list(expected.columns)


def test_predict_of_a_source_needs_a_folder(tmp_path, lake) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["fit", lake, "-f", FORMULA, "--out", str(tmp_path / "fit")]).exit_code == 0
    res = runner.invoke(main, ["predict", str(tmp_path / "fit"), lake, "--out", str(tmp_path / "pred.parquet")])
    assert res.exit_code == 2
    assert "into a folder" in res.output and "pred.parquet" in res.output


def test_compare_of_a_source_refuses_engines_that_cannot_stream(lake) -> None:
    res = CliRunner().invoke(main, ["compare", lake, "-f", FORMULA, "-e", "ols", "--cv", "submarket"])
    assert res.exit_code == 2
    assert res.output.startswith("error: compare() on a streaming source") and "'ols' cannot stream" in res.output


def test_compare_of_a_source_needs_folds_of_groups(lake) -> None:
    res = CliRunner().invoke(main, ["compare", lake, "-f", FORMULA, "-e", "mixed"])  # the default --cv kfold
    assert res.exit_code == 2
    assert "position among all rows" in res.output and "cv='submarket:5'" in res.output


def test_workers_and_scheduler_exclude_each_other(tmp_path, lake) -> None:
    res = CliRunner().invoke(main, ["fit", lake, "-f", FORMULA, "--out", str(tmp_path / "fit"), "--workers", "2",
                                    "--scheduler", "tcp://127.0.0.1:8786"])
    assert res.exit_code == 2
    assert "not both" in res.output


def test_progress_draws_one_line_per_pass(lake, in_memory) -> None:
    buffer = io.StringIO()
    from rich.console import Console

    console = Console(file=buffer, force_terminal=True, width=120)
    with observe_folds(_PassProgress("files", console)):
        result = hierfit.fit(FORMULA, lake, engine="mixed", batch_size=64)
    text = buffer.getvalue()
    assert "design pass" in text  # the per-group statistics come from the same pass (per-cell moments)
    assert "3/3" in text and "batches" in text
    np.testing.assert_allclose(result.fixed_effects()["estimate"], in_memory.fixed_effects()["estimate"], rtol=1e-10)


def test_scheduler_fits_and_predicts_on_a_cluster(tmp_path, lake, sim, in_memory) -> None:
    pytest.importorskip("distributed")
    from distributed import LocalCluster

    runner = CliRunner()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        address = cluster.scheduler_address
        res = runner.invoke(main, ["fit", lake, "-f", FORMULA, "--out", str(tmp_path / "fit"), "--scheduler", address])
        assert res.exit_code == 0, res.output
        # the fit ran on the cluster: its worker summarised the three files
        assert "summarise_piece" in cluster.scheduler.task_prefixes
        # the command closed its client; the cluster stays up for the next one
        assert not cluster.scheduler.clients.keys() - {"fire-and-forget"}
        res = runner.invoke(main, ["predict", str(tmp_path / "fit"), lake, "--out", str(tmp_path / "pred"),
                                   "--scheduler", address])
        assert res.exit_code == 0, res.output
    _same_fit(str(tmp_path / "fit"), in_memory)
    got = pd.read_parquet(tmp_path / "pred")
    np.testing.assert_allclose(np.sort(got["prediction"]), np.sort(in_memory.predict(sim.data)["prediction"]), rtol=1e-9)
    assert len(got) == len(sim.data)
