"""What the catch-rate tests share: the solution's graded functions, and the two parametrised tests."""
from pathlib import Path

import pytest

from course_utils.checks import CheckError
from notebook_helpers import nbgrader_meta, read_notebook


def solution_functions(solution: Path, namespace: dict) -> dict:
    """``namespace`` after running the solution's graded cells in it (not its import cell: that loads a model)."""
    for cell in read_notebook(solution).cells:
        if cell.cell_type == "code" and nbgrader_meta(cell).get("solution"):
            exec(cell.source, namespace)
    return namespace


def catch_rate_tests(wrong: dict, right: dict) -> tuple:
    """Tests that each of ``wrong`` ({name: (check, fn, message)}) fails its check with the message, and each of
    ``right`` ({name: (check, fn)}) passes."""
    @pytest.mark.parametrize("name", wrong)
    def test_a_plausible_wrong_version_loses_its_check(name):
        check, fn, message = wrong[name]
        with pytest.raises(CheckError, match=message):
            check(fn)

    @pytest.mark.parametrize("name", right)
    def test_a_correct_version_passes(name):
        check, fn = right[name]
        check(fn)

    return test_a_plausible_wrong_version_loses_its_check, test_a_correct_version_passes
