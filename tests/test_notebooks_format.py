"""Every notebook follows the conventions: clean (no outputs), Colab badge, the standard setup cell,
settings for each profile, matching lecture/lab/solution names, and labs generated from solutions."""
from pathlib import Path

import pytest

from course_utils.instructor.notebooks import FOLDERS, colab_badge, nbgrader_meta, read_notebook, setup_cell
from course_utils.settings import notebooks
from course_utils.instructor.release import release

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for folder in FOLDERS for p in (ROOT / folder).glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found in lectures/, labs/, solutions/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_notebook_conventions(path):
    nb = read_notebook(path)
    name, folder = path.stem, path.parent.name
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{path}: cells {dirty} carry outputs; clear them (jupyter nbconvert --clear-output --inplace)"
    assert nb.cells[0].cell_type == "markdown" and colab_badge(folder, name) in nb.cells[0].source, (
        f"{path}: the first cell needs the badge from course_utils.instructor.notebooks.colab_badge({folder!r}, {name!r})")
    assert nb.cells[1].source == setup_cell(name), (
        f"{path}: the second cell must be exactly course_utils.instructor.notebooks.setup_cell({name!r})")
    assert name in notebooks(), f"{path}: add course_utils/settings/{name.split('_', 1)[1]}.py (NOTEBOOK = {name!r})"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_notebooks_never_import_the_instructor_tools(path):
    sources = [c.source for c in read_notebook(path).cells if c.cell_type == "code"]
    assert not any("course_utils.instructor" in s or "import instructor" in s for s in sources), (
        f"{path}: notebooks import the world, helpers and checks, never course_utils.instructor")


def test_every_topic_has_lecture_lab_and_solution():
    names = {folder: {p.stem for p in (ROOT / folder).glob("*.ipynb")} for folder in FOLDERS}
    assert names["lectures"] == names["solutions"] == names["labs"], names


def test_labs_are_generated_from_solutions(capsys):
    stale = release(ROOT / "solutions", ROOT / "labs", check=True)
    assert not stale, f"labs/ is stale: run `course release`.\n{capsys.readouterr().out}"


@pytest.mark.parametrize("path", sorted((ROOT / "solutions").glob("*.ipynb")), ids=lambda p: p.name)
def test_solution_cells_are_marked_for_grading(path):
    cells = read_notebook(path).cells
    checks = [nbgrader_meta(c) for c in cells if nbgrader_meta(c).get("grade")]
    assert checks and all(m.get("points", 0) > 0 for m in checks), f"{path}: check cells need positive points"
    ids = [nbgrader_meta(c).get("grade_id") for c in cells if nbgrader_meta(c)]
    assert len(ids) == len(set(ids)), f"{path}: grade_ids must be unique"
    for cell in cells:
        if "### BEGIN SOLUTION" in cell.source:
            assert nbgrader_meta(cell).get("solution"), f"{path}: a cell with a solution region needs solution: true"
