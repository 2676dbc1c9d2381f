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


def assert_lost_exactly(rows: dict, lost: dict[str, str], partial: bool = False) -> None:
    """The submission lost points in exactly the exercises of ``lost``, each message naming its mistake.

    ``partial``: also that it kept some points (0 < its total < the maximum).
    """
    failed = {ex for ex, r in rows.items() if r.points < r.max_points}
    assert failed == set(lost), {ex: r.message for ex, r in rows.items()}
    if partial:
        points, max_points = total(rows)
        assert 0 < points < max_points, (points, max_points)
    for exercise, words in lost.items():
        assert words in rows[exercise].message, (exercise, rows[exercise].message)
