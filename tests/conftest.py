"""Shared test fixtures, and the hook that saves the notebooks the suite executes (for `make site`)."""
from pathlib import Path

import nbformat
import pytest

from course_utils.instructor.grading import grade
from course_utils.instructor.notebooks import read_notebook
from course_utils.instructor.release import release_notebook
from course_utils.profiles import detect_profile
from notebook_helpers import keep_cell, record_cell, save_executed, stop_recording

ROOT = Path(__file__).resolve().parents[1]


class SaveExecutedNotebooks:
    """Each notebook cell nbval runs keeps its outputs; after the last one the notebook is saved under
    build/executed/ (the website renders these outputs instead of executing the course again)."""

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item):
        from nbval.plugin import IPyNbCell

        if not isinstance(item, IPyNbCell):
            yield
            return
        recording = record_cell(item)
        try:
            outcome = yield
        finally:
            stop_recording(item)
        error = outcome.excinfo[1] if outcome.excinfo else None
        keep_cell(item, recording, failed=error is not None and not isinstance(error, pytest.skip.Exception))
        save_executed(item, ROOT, detect_profile())


def pytest_configure(config):
    """Registered as a plugin (not a conftest hook) so it also sees the notebooks in lectures/ and solutions/."""
    config.pluginmanager.register(SaveExecutedNotebooks(), "save-executed-notebooks")


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
        # the grader draws a secret shift of the checks' seeds per submission; these tests pin it to 0 (the
        # notebooks' own seeds) so that each wrong version meets the same hidden inputs on every run;
        # tests/test_check_seeds.py runs the solutions under other shifts
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("course_utils.instructor.checkproc.secrets.randbelow", lambda n: 0)
            for r in grade(solution, paths, tmp / "grades.csv", timeout=300, profile="ci"):
                table.setdefault(Path(r.submission).stem, {})[r.exercise] = r
        return table

    return run
