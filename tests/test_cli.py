"""The `course` command: the entry point works, every subcommand has help, `release --check` exits 1 on drift.

Each fresh process imports torch (seconds on 2 cores), so only the entry point's help and one real
`release --check` run in a subprocess; the subcommands' help goes through the same `cli.main` in-process.
"""
import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from course_utils import cli

ROOT = Path(__file__).resolve().parents[1]


def course(*args, cwd=ROOT):
    """Run `python -m course_utils ARGS` in a fresh process, as an instructor would."""
    return subprocess.run([sys.executable, "-m", "course_utils", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_entry_point_help_lists_every_subcommand():
    result = course("--help")
    assert result.returncode == 0, result.stderr
    for name in cli.SUBCOMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("name", sorted(cli.SUBCOMMANDS))
def test_subcommand_help(name):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        cli.main([name, "--help"])
    assert exit_info.value.code == 0
    assert out.getvalue().startswith(f"usage: course {name}")


def test_grade_help_names_its_options():
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        cli.main(["grade", "--help"])
    for option in ("--lab", "--out", "--solutions", "--timeout", "--profile", "SUBMISSION"):
        assert option in out.getvalue()


def test_release_check_on_a_tree(tmp_path):
    (tmp_path / "solutions").mkdir()
    nb = new_notebook(cells=[new_markdown_cell("# Lab"), new_code_cell(
        "def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION")])
    nbformat.write(nb, tmp_path / "solutions" / "01_f.ipynb")
    stale = course("release", "--check", cwd=tmp_path)
    assert stale.returncode == 1, stale.stdout + stale.stderr
    assert "labs/01_f.ipynb: missing" in stale.stdout and "run `course release`" in stale.stdout
    assert not (tmp_path / "labs").exists()
    assert cli.main(["release", "--solutions", str(tmp_path / "solutions"), "--labs", str(tmp_path / "labs")]) == 0
    assert cli.main(["release", "--check", "--solutions", str(tmp_path / "solutions"),
                     "--labs", str(tmp_path / "labs")]) == 0
    assert "NotImplementedError" in (tmp_path / "labs" / "01_f.ipynb").read_text()


def test_no_subcommand_prints_help_and_returns_2():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main([]) == 2
    assert "usage: course" in out.getvalue()
