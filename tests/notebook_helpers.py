"""Helpers the check and grading tests share (imported as `from notebook_helpers import ...`)."""
from pathlib import Path

from course_utils.instructor.notebooks import nbgrader_meta, read_notebook


def solution_namespace(solution: Path, checks_import: str) -> dict:
    """The solution's checks import and every solution cell, executed into one namespace."""
    namespace = {}
    for cell in read_notebook(solution).cells:
        if cell.cell_type == "code" and (checks_import in cell.source or nbgrader_meta(cell).get("solution")):
            exec(cell.source, namespace)
    return namespace


def total(rows: dict) -> tuple[int, int]:
    """(points, max_points) summed over one submission's gradebook rows."""
    return sum(r.points for r in rows.values()), sum(r.max_points for r in rows.values())
