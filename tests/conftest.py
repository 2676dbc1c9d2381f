"""Shared test fixtures."""
from pathlib import Path

import nbformat
import pytest

from course_utils.instructor.grading import grade
from course_utils.instructor.notebooks import read_notebook
from course_utils.instructor.release import release_notebook


@pytest.fixture(scope="session")
def grade_notebooks(tmp_path_factory):
    """Grade the solution, its untouched lab and {name: notebook} against the solution in the ci
    profile; returns {name: {grade_id: result}} with names "solution" and "untouched_lab" added."""

    def run(solution: Path, wrong_versions: dict) -> dict:
        tmp = tmp_path_factory.mktemp("gradebook")
        source = read_notebook(solution)
        submissions = {"solution": source, "untouched_lab": release_notebook(source), **wrong_versions}
        paths = []
        for name, nb in submissions.items():
            nbformat.write(nb, tmp / f"{name}.ipynb")
            paths.append(tmp / f"{name}.ipynb")
        table = {}
        for r in grade(solution, paths, tmp / "grades.csv", timeout=300, profile="ci"):
            table.setdefault(Path(r.submission).stem, {})[r.exercise] = r
        return table

    return run
