"""Grading lab 02 end to end: the solution gets full marks, the released lab 0, and plausible wrong
mask_tokens lose exactly the points of the rule they break, with a message naming the rule. Two wrong
versions go through the whole grader (between them they break three of the four rules); every wrong version
of tests/test_mlm.py (WRONG and MORE_WRONG) is rejected by the checks alone there, fast, with the same messages.
A mask_tokens that calls the library's DataCollatorForLanguageModeling (the checks' oracle) instead of
masking by hand loses every check with `forbidden call`."""
import importlib.util
from pathlib import Path

import nbformat
import pytest

from course_utils.instructor.grading import grade_submission
from course_utils.instructor.notebooks import nbgrader_meta, read_notebook
from course_utils.instructor.release import release_notebook, replace_solution

HERE = Path(__file__).resolve().parent
SOLUTION = HERE.parent / "solutions" / "02_bert_mlm.ipynb"
GRADE_IDS = {"selection": "mask_selection_check", "split": "mask_split_check",
             "random": "mask_random_check", "reproducible": "mask_reproducible_check"}


def _load_test_mlm():
    """tests/test_mlm.py as a module: it defines the wrong versions (WRONG) both test files use."""
    spec = importlib.util.spec_from_file_location("_test_mlm_for_grading", HERE / "test_mlm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


test_mlm = _load_test_mlm()


def grade(nb: nbformat.NotebookNode, tmp_path: Path) -> dict:
    """Write ``nb`` as a submission, grade it against the solution; {grade_id: ExerciseResult}."""
    path = tmp_path / "submission.ipynb"
    nbformat.write(nb, path)
    return {r.exercise: r for r in grade_submission(path, SOLUTION, timeout=120, profile="ci")}

LIBRARY_COLLATOR = """
collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability, seed=0)
return collator.torch_mask_tokens(input_ids.clone())
"""


def test_solution_gets_full_marks(tmp_path):
    results = grade(read_notebook(SOLUTION), tmp_path)
    assert set(results) == set(GRADE_IDS.values())
    for r in results.values():
        assert r.points == r.max_points > 0, f"{r.exercise}: {r.message}"
    assert sum(r.max_points for r in results.values()) == 10


def test_untouched_lab_gets_zero(tmp_path):
    results = grade(release_notebook(read_notebook(SOLUTION)), tmp_path)
    assert all(r.points == 0 for r in results.values()), results
    assert "NotImplementedError" in results["mask_selection_check"].message


@pytest.mark.parametrize("name", ["always_mask", "masks_specials"])
def test_wrong_versions_lose_the_points_of_the_broken_rule(name, tmp_path):
    edits, expected = test_mlm.WRONG[name]
    submission = replace_solution(read_notebook(SOLUTION), test_mlm.IMPL, test_mlm.edited_code(edits))
    results = grade(submission, tmp_path)
    for check, grade_id in GRADE_IDS.items():
        r = results[grade_id]
        if check in expected:
            assert r.points == 0, f"{name}: {grade_id} should fail"
            assert expected[check] in r.message, f"{name}/{grade_id}: {r.message!r} lacks {expected[check]!r}"
        else:
            assert r.points == r.max_points, f"{name}: {grade_id} should pass, got {r.message!r}"


def test_calling_the_library_collator_loses_every_check(tmp_path):
    submission = replace_solution(read_notebook(SOLUTION), test_mlm.IMPL, LIBRARY_COLLATOR)
    checks = [i for i, c in enumerate(submission.cells) if nbgrader_meta(c).get("grade_id") in GRADE_IDS.values()]
    submission.cells = submission.cells[:checks[-1] + 1]  # the checks are all it needs: no pretraining run
    results = grade(submission, tmp_path)
    assert set(results) == set(GRADE_IDS.values())
    for r in results.values():
        assert r.points == 0, (r.exercise, r.message)
        assert "forbidden call: the exercise may not use transformers.data" in r.message, (r.exercise, r.message)
