"""`course release`: labs are generated from solutions, deterministically, and --check catches drift."""
import argparse
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from course_utils import REPO_URL
from course_utils.instructor import release as rel
from course_utils.instructor.notebooks import colab_badge

STUB = 'raise NotImplementedError("Write your solution here, then run the check cell below.")'


def grader(grade_id, grade=False, solution=False, points=0):
    """nbgrader cell metadata."""
    meta = {"grade": grade, "grade_id": grade_id, "locked": not solution, "schema_version": 3, "solution": solution}
    if grade:
        meta["points"] = points
    return {"nbgrader": meta}


def solution_notebook():
    """A small solution notebook: two regions in one cell, a hidden test, a markdown answer, outputs."""
    impl = new_code_cell(
        "import math\n"
        "def area(r):\n"
        "    \"\"\"Area of a circle.\"\"\"\n"
        "    ### BEGIN SOLUTION\n"
        "    return math.pi * r ** 2\n"
        "    ### END SOLUTION\n"
        "\n"
        "class Box:\n"
        "    def volume(self, a):\n"
        "        ### BEGIN SOLUTION\n"
        "        return a ** 3\n"
        "        ### END SOLUTION\n"
        "print('defined')",
        metadata=grader("area_impl", solution=True), execution_count=3,
        outputs=[new_output("stream", name="stdout", text="defined\n")])
    check = new_code_cell(
        "assert abs(area(1) - 3.14159) < 1e-4, 'area(1) should be pi'\n"
        "### BEGIN HIDDEN TESTS\n"
        "assert area(0) == 0\n"
        "### END HIDDEN TESTS\n"
        "print('all good')",
        metadata=grader("area_check", grade=True, points=2), execution_count=4)
    answer = new_markdown_cell("Why square the radius?\n\n### BEGIN SOLUTION\nBecause area scales with length².\n"
                               "### END SOLUTION", metadata=grader("why", grade=True, solution=True, points=1))
    title = new_markdown_cell("# Lab 99: circles\n\n" + colab_badge("solutions", "99_circles"))
    return new_notebook(cells=[title, new_code_cell("x = 1"), impl, check, answer])


@pytest.fixture()
def lab():
    return rel.release_notebook(solution_notebook())


def test_solution_regions_become_stubs_at_the_marker_indentation(lab):
    source = lab.cells[2].source
    assert "    # YOUR CODE HERE\n    " + STUB in source
    assert "        # YOUR CODE HERE\n        " + STUB in source
    assert "math.pi" not in source and "a ** 3" not in source and "### " not in source
    assert source.startswith("import math\ndef area(r):\n    \"\"\"Area of a circle.\"\"\"\n")
    assert source.endswith("print('defined')")
    compile(source, "lab", "exec")  # still valid Python


def test_hidden_tests_removed_visible_checks_kept(lab):
    source = lab.cells[3].source
    assert source == "assert abs(area(1) - 3.14159) < 1e-4, 'area(1) should be pi'\nprint('all good')"


def test_markdown_answer_becomes_placeholder(lab):
    assert lab.cells[4].source == "Why square the radius?\n\nYOUR ANSWER HERE"


def test_outputs_and_counts_stripped_metadata_kept(lab):
    code = [c for c in lab.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    assert lab.cells[3].metadata["nbgrader"]["grade_id"] == "area_check"


def test_colab_badge_points_to_labs(lab):
    assert colab_badge("labs", "99_circles") in lab.cells[0].source
    assert "/solutions/" not in lab.cells[0].source


def test_release_notebook_does_not_change_its_input():
    nb = solution_notebook()
    before = nbformat.writes(nb)
    rel.release_notebook(nb)
    assert nbformat.writes(nb) == before


@pytest.mark.parametrize("source", ["### BEGIN SOLUTION\nx = 1", "x = 1\n### END HIDDEN TESTS",
                                    "### BEGIN HIDDEN TESTS\nassert x\n", "### BEGIN SOLUTION\n### BEGIN SOLUTION\n"])
def test_unmatched_markers_name_notebook_and_cell(source):
    nb = new_notebook(cells=[new_markdown_cell("# t"), new_code_cell(source)])
    with pytest.raises(ValueError, match=r"99_x\.ipynb, cell 2"):
        rel.release_notebook(nb, name="99_x.ipynb")


def test_replace_solution_keeps_indentation_and_rejects_unknown_ids():
    wrong = rel.replace_solution(solution_notebook(), "area_impl", "return 3 * r\n")
    replaced = [line for line in wrong.cells[2].source.split("\n") if "3 * r" in line]
    assert replaced == ["    return 3 * r", "        return 3 * r"]  # every region, each at its indentation
    assert "### BEGIN SOLUTION" not in wrong.cells[2].source
    with pytest.raises(ValueError, match="area_impl"):
        rel.replace_solution(solution_notebook(), "nope", "pass")
    with pytest.raises(ValueError, match="no '### BEGIN SOLUTION'"):
        rel.replace_solution(solution_notebook(), "area_check", "pass")


def write(path, nb):
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


def test_release_writes_deterministic_labs_and_check_passes(tmp_path):
    sol, labs = tmp_path / "solutions", tmp_path / "labs"
    write(sol / "99_circles.ipynb", solution_notebook())
    assert rel.release(sol, labs) == [str(labs / "99_circles.ipynb")]
    first = (labs / "99_circles.ipynb").read_bytes()
    assert rel.release(sol, labs, check=True) == []
    (labs / "99_circles.ipynb").unlink()
    rel.release(sol, labs)
    assert (labs / "99_circles.ipynb").read_bytes() == first
    assert rel.release(sol, labs) == []  # nothing to rewrite
    assert nbformat.read(labs / "99_circles.ipynb", as_version=4).cells[3].source.endswith("print('all good')")


def test_cells_saved_without_ids_get_stable_ids(tmp_path):
    nb = solution_notebook()
    text = nbformat.writes(nb)
    for cell in nb.cells:
        text = text.replace(f'"id": "{cell.id}",', "")
    path = tmp_path / "99_noid.ipynb"
    path.write_text(text)
    with pytest.warns(Warning):  # nbformat warns about the missing ids
        assert rel.lab_text(path) == rel.lab_text(path)


def test_check_detects_stale_missing_and_orphan_labs(tmp_path, capsys):
    sol, labs = tmp_path / "solutions", tmp_path / "labs"
    write(sol / "01_a.ipynb", solution_notebook())
    write(sol / "02_b.ipynb", solution_notebook())
    rel.release(sol, labs)
    stale = nbformat.read(labs / "01_a.ipynb", as_version=4)
    stale.cells[1].source = "x = 2  # edited by hand"
    write(labs / "01_a.ipynb", stale)
    (labs / "02_b.ipynb").unlink()
    write(labs / "03_orphan.ipynb", solution_notebook())
    before = {p.name: p.read_bytes() for p in labs.iterdir()}
    capsys.readouterr()
    changed = rel.release(sol, labs, check=True)
    assert sorted(changed) == sorted(str(labs / n) for n in ("01_a.ipynb", "02_b.ipynb", "03_orphan.ipynb"))
    out = capsys.readouterr().out
    assert "01_a.ipynb: stale" in out and "02_b.ipynb: missing" in out and "03_orphan.ipynb: no " in out
    assert {p.name: p.read_bytes() for p in labs.iterdir()} == before  # --check writes nothing
    args = argparse.Namespace(check=True, solutions=str(sol), labs=str(labs), headers=False, student_copy=None, repo_url=None)
    assert rel.main(args) == 1
    assert "run `course release`" in capsys.readouterr().out


def test_missing_solutions_folder_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ValueError, match="--solutions"):
        rel.release(tmp_path / "nope", tmp_path / "labs")
    assert rel.main(argparse.Namespace(check=False, solutions=str(tmp_path / "nope"), labs="labs", headers=False, student_copy=None, repo_url=None)) == 2


def test_set_header_rewrites_an_old_badge_and_setup_cell():
    from course_utils.instructor.notebooks import colab_badge, set_header, setup_cell

    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# T\n\n[![Open In Colab](https://x/badge.svg)](https://colab.research.google.com/"
                                      "github/o/r/blob/v0.0.1/lectures/05_x.ipynb)\n\ntext"),
        nbformat.v4.new_code_cell('%pip install "llm-course @ git+https://github.com/o/r@v0.0.1"')])
    assert set_header(nb, "lectures", "05_x")
    assert colab_badge("lectures", "05_x") in nb.cells[0].source and nb.cells[0].source.endswith("\n\ntext")
    assert nb.cells[1].source == setup_cell("05_x")
    assert not set_header(nb, "lectures", "05_x"), "a second run changes nothing"
    with pytest.raises(ValueError, match="Colab badge"):
        set_header(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# no badge"),
                                                   nbformat.v4.new_code_cell("x = 1")]), "labs", "x")


def test_student_copy_has_no_answers_and_points_at_the_students_repository(tmp_path, capsys, monkeypatch):
    root = Path(__file__).parents[1]
    monkeypatch.chdir(root)
    dest = tmp_path / "student"
    args = argparse.Namespace(check=False, solutions="solutions", labs="labs", headers=False,
                              student_copy=str(dest), repo_url="https://github.com/my-school/llm-course-2027")
    assert rel.main(args) == 0
    assert "files to" in capsys.readouterr().out
    top = {p.name for p in dest.iterdir()}
    assert {"lectures", "labs", "course_utils", "README.md", "Makefile", "pyproject.toml"} <= top
    assert not top & {"solutions", "tests", "benchmarks", ".ci"}
    for lab in sorted((root / "solutions").glob("*.ipynb")):
        assert (dest / "labs" / lab.name).read_text() == rel.lab_text(lab).replace(REPO_URL, args.repo_url)
    notebooks = [*dest.glob("lectures/*.ipynb"), *dest.glob("labs/*.ipynb")]
    assert len(notebooks) == len([*root.glob("lectures/*.ipynb"), *root.glob("labs/*.ipynb")]) >= 16
    for nb in notebooks:
        text = nb.read_text()
        assert "BEGIN SOLUTION" not in text and "BEGIN HIDDEN TESTS" not in text
        assert "github.com/my-school/llm-course-2027" in text and "github.com/llm-course/llm-course" not in text
    assert 'REPO_URL = "https://github.com/my-school/llm-course-2027"' in (dest / "course_utils/__init__.py").read_text()
    assert (dest / "course_utils/models/weights/manifest.json").is_file()
    assert rel.main(args) == 2, "an existing, non-empty folder is refused"
    args.student_copy = str(root / "lectures" / "copy")
    assert rel.main(args) == 2, "a folder inside the course is refused"
    assert "is inside the course" in capsys.readouterr().err
