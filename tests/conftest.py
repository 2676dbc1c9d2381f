"""Shared test fixtures."""
from pathlib import Path

import nbformat
import pytest

from course_utils.grading import grade


@pytest.fixture(scope="session")
def grade_notebooks(tmp_path_factory):
    """Grade {name: notebook} against ``solution`` in the ci profile; {name: {grade_id: result}}."""

    def run(solution: Path, submissions: dict) -> dict:
        tmp = tmp_path_factory.mktemp("gradebook")
        paths = []
        for name, nb in submissions.items():
            nbformat.write(nb, tmp / f"{name}.ipynb")
            paths.append(tmp / f"{name}.ipynb")
        table = {}
        for r in grade(solution, paths, tmp / "grades.csv", timeout=300, profile="ci"):
            table.setdefault(Path(r.submission).stem, {})[r.exercise] = r
        return table

    return run
