"""The README's examples run as written: its Python blocks in order, its command lines in a folder.

Warnings are errors here: a first contact must not print any (a singular fit, a fork warning,
third-party chatter) on the simulated data the README describes.
"""

from __future__ import annotations

import re
import shlex
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from click.testing import CliRunner  # noqa: E402

from hierfit.cli import main  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"
# `hierfit demo` runs every engine for minutes; tests/test_demo.py runs it on small data.
NOT_RUN_HERE = ("hierfit demo",)


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def _command_lines() -> list[str]:
    """The command-line section's lines, without their trailing comments."""
    section = README.read_text().split("## Command line", 1)[1]
    block = re.search(r"^```\n(.*?)^```", section, flags=re.S | re.M)
    assert block is not None, "README lost its command-line block"
    lines = []
    for line in block.group(1).splitlines():
        command = re.split(r"\s{2,}#", line)[0].strip()
        if command.startswith("hierfit") and not command.startswith(NOT_RUN_HERE):
            lines.append(command)
    return lines


def test_the_python_examples_run_in_order_without_warnings(tmp_path, monkeypatch) -> None:
    blocks = _blocks("python")
    assert len(blocks) >= 3, "the README's quick start, GLMM and comparison examples"
    monkeypatch.chdir(tmp_path)  # the quick start saves "my-fit"
    namespace: dict[str, object] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for number, code in enumerate(blocks, 1):
            exec(compile(code, f"README.md python block {number}", "exec"), namespace)  # noqa: S102
    assert (tmp_path / "my-fit" / "hierfit.json").is_file()


def test_the_command_lines_run_in_order_without_warnings(tmp_path, monkeypatch) -> None:
    commands = _command_lines()
    assert any(c.startswith("hierfit fit") for c in commands) and any(c.startswith("hierfit compare") for c in commands)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for command in commands:
        res = runner.invoke(main, shlex.split(command)[1:])
        assert res.exit_code == 0, f"{command}\n{res.output}"
        assert "warning" not in res.output.lower(), f"{command}\n{res.output}"
    assert (tmp_path / "comp" / "report.html").is_file() and (tmp_path / "report.html").is_file()

