"""The grader draws the hidden tests' inputs when it grades (a secret shift of every check's seed): the
solutions of labs 01-03 must pass every check cell, hidden tests included, whatever the draw."""
from pathlib import Path

import pytest

from course_utils.checks import SEED_SHIFT
from course_utils.instructor import checkproc, remote
from course_utils.instructor.grading import check_cells
from course_utils.instructor.notebooks import nbgrader_meta, read_notebook

ROOT = Path(__file__).resolve().parents[1]
LABS = ["01_attention", "02_bert_mlm", "03_gpt_pretraining"]
SHIFTS = [1, 977, checkproc.SEED_SHIFTS - 1]  # small, odd, the largest the grader draws


@pytest.fixture(scope="module", params=LABS)
def lab(request):
    """(solution namespace: the grader's trusted names plus every solution cell, the lab's check cells)."""
    solution = read_notebook(ROOT / "solutions" / f"{request.param}.ipynb")
    namespace = remote.trusted_namespace(solution, request.param, "ci")
    for cell in solution.cells:
        if cell.cell_type == "code" and nbgrader_meta(cell).get("solution"):
            exec(cell.source, namespace)
    return namespace, check_cells(solution)


@pytest.mark.parametrize("shift", SHIFTS)
def test_the_solution_passes_every_check_with_any_drawn_seed(lab, shift, capsys):
    namespace, checks = lab
    token = SEED_SHIFT.set(shift)
    try:
        for cell in checks.values():
            exec(cell.source, dict(namespace))
    finally:
        SEED_SHIFT.reset(token)
    assert "all checks passed" in capsys.readouterr().out


def test_the_grader_draws_a_new_shift_for_each_submission(tmp_path):
    shifts = {checkproc.CheckProcess(ROOT / "solutions" / "01_attention.ipynb", "ci", tmp_path, 10).args[-1]
              for _ in range(5)}
    assert len(shifts) > 1 and all(0 <= s < checkproc.SEED_SHIFTS for s in shifts)


@pytest.mark.parametrize("shift", SHIFTS)
def test_lab_04s_template_check_passes_the_solution_with_any_drawn_seed(shift, capsys):
    from course_utils.checks import sft

    cell = next(c for c in read_notebook(ROOT / "solutions" / "04_instruction_tuning.ipynb").cells
                if nbgrader_meta(c).get("grade_id") == "template_impl")
    namespace = {}
    exec(cell.source, namespace)
    token = SEED_SHIFT.set(shift)
    try:
        sft.check_template(namespace["happy_template"])
    finally:
        SEED_SHIFT.reset(token)
    assert "all checks passed" in capsys.readouterr().out
