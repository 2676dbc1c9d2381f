"""`course run`: notebooks run headless into the build folder, sources untouched, failures reported."""
import argparse
import contextlib
import io
import os

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from course_utils.instructor import runner


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """Run one passing and one failing notebook through `course run` (two kernels, shared by the tests)."""
    root = tmp_path_factory.mktemp("course")
    (root / "lectures").mkdir()
    (root / "lectures" / "data.txt").write_text("hello from the lecture folder")
    good = new_notebook(cells=[
        new_markdown_cell("# ok"),
        new_code_cell("import os\nprint(open('data.txt').read())"),  # works only in the notebook's folder
        new_code_cell("print('profile', os.environ['COURSE_PROFILE'])"),
    ])
    bad = new_notebook(cells=[new_code_cell("x = 1"), new_code_cell("raise ValueError('the loss did not fall')"),
                              new_code_cell("print('never runs')")])
    nbformat.write(good, root / "lectures" / "01_ok.ipynb")
    nbformat.write(bad, root / "lectures" / "02_bad.ipynb")
    sources = {p: p.read_bytes() for p in (root / "lectures").glob("*.ipynb")}
    args = argparse.Namespace(notebooks=[str(p) for p in sorted(sources)], out=str(root / "build"),
                              timeout=60, profile="ci")
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setenv("COURSE_PROFILE", "gpu")  # --profile must win over our environment
        code = runner.main(args)
    return {"root": root, "code": code, "out": printed.getvalue(), "sources": sources}


def test_executed_copy_is_written_to_the_build_folder(ran):
    nb = nbformat.read(ran["root"] / "build" / "lectures" / "01_ok.ipynb", as_version=4)
    texts = ["".join(o.get("text", "")) for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert texts == ["hello from the lecture folder\n", "profile ci\n"]


def test_sources_are_untouched(ran):
    assert {p: p.read_bytes() for p in ran["sources"]} == ran["sources"]
    assert all(c.get("outputs", []) == [] for p in ran["sources"] for c in nbformat.read(p, as_version=4).cells)


def test_failure_is_reported_with_its_last_line_and_exit_1(ran):
    assert ran["code"] == 1
    lines = ran["out"].splitlines()
    bad = next(line for line in lines if "02_bad.ipynb" in line)
    assert bad.endswith("FAIL cell 2: ValueError: the loss did not fall")
    assert next(line for line in lines if "01_ok.ipynb" in line).endswith("pass")
    assert "1 passed, 1 failed" in ran["out"]
    executed = nbformat.read(ran["root"] / "build" / "lectures" / "02_bad.ipynb", as_version=4)
    assert executed.cells[1].outputs[0].output_type == "error" and executed.cells[2].outputs == []


def test_output_never_overwrites_the_source(tmp_path):
    src = tmp_path / "lectures" / "01.ipynb"
    assert runner.output_path(src, tmp_path / "build") == tmp_path / "build" / "lectures" / "01.ipynb"
    with pytest.raises(ValueError, match="overwrite"):
        runner.output_path(src, tmp_path)


def test_kernel_env_and_bad_arguments(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    env = runner.kernel_env("cpu")
    assert env["COURSE_PROFILE"] == "cpu"
    assert str(runner.PACKAGE_ROOT) in env["PYTHONPATH"].split(os.pathsep)
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # a user's own choice wins
    assert runner.kernel_env()["OMP_WAIT_POLICY"] == "ACTIVE"
    with pytest.raises(ValueError, match="profile"):
        runner.kernel_env("tpu")
    with pytest.raises(ValueError, match="timeout"):
        runner.execute(new_notebook(), ".", timeout=0)


def test_unreadable_and_missing_notebooks(tmp_path, capsys):
    (tmp_path / "lectures").mkdir()
    broken = tmp_path / "lectures" / "broken.ipynb"
    broken.write_text("{not json")
    seconds, error = runner.run_notebook(broken, tmp_path / "build", timeout=10)
    assert "not a readable notebook" in error
    args = argparse.Namespace(notebooks=[str(tmp_path / "nope.ipynb")], out=str(tmp_path / "b"),
                              timeout=10, profile=None)
    assert runner.main(args) == 2
    assert "no such notebook" in capsys.readouterr().out
