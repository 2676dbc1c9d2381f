"""Grading lab 09 end to end: the solution gets full marks, the untouched lab 0, and plausible mistakes lose
exactly the points of the exercises they break, with a message naming the mistake. One wrong notebook keeps the
test within its time budget. Its three function mistakes leave the GRPO run's numbers as they are (the loop's
advantages carry no gradient, and the verifier is not used in training); its group_advantages also
cheats, calling the course's own answer (course_utils.grpo.group_advantages), and loses that exercise's points.
Its run cell trains the reference instead of the copy it passes to the check: the outcome check, which re-measures
the passed weights against the shipped SFT model on its own tasks, finds no gain and takes exactly its points (the
other wrong pieces it separates, over training seeds and draws: benchmarks/lab_outcome_margins.txt). The other
mistakes (pass@k drawn with replacement; batch instead of group normalisation, per-sequence averaging) are rejected
by the checks alone, fast, in tests/test_grpo_checks.py; its pass@k is the solution's and keeps its points."""
import copy
from pathlib import Path

import pytest

from course_utils.instructor.notebooks import read_notebook
from course_utils.instructor.release import replace_solution
from notebook_helpers import assert_lost_exactly, total

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "09_rlvr_grpo.ipynb"
TOTAL = 16

SUBSTRING = """
return answer in response.lower()
"""
ANSWER_ADVANTAGES = """
from course_utils import grpo as course_grpo
return course_grpo.group_advantages(rewards, group_size, scale)
"""
NOT_DETACHED = """
ratio = torch.exp(logprobs - old_logprobs)
adv = advantages[:, None]
per_token = -torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
if beta:
    d = ref_logprobs - logprobs
    per_token = per_token + beta * (torch.exp(d) - d - 1) * ratio
return (per_token * mask).sum() / mask.sum()
"""


@pytest.fixture(scope="module")
def gradebook(grade_notebooks):
    solution = read_notebook(SOLUTION)
    wrong = solution
    for grade_id, code in {"verify_impl": SUBSTRING, "advantages_impl": ANSWER_ADVANTAGES, "loss_impl": NOT_DETACHED}.items():
        wrong = replace_solution(wrong, grade_id, code)
    return grade_notebooks(SOLUTION, {"three_mistakes_and_the_reference_trained": _trained_the_reference(wrong)})


def _trained_the_reference(nb):
    """The run cell trains sft_model (the reference) and leaves policy, the copy it hands to the check, untouched."""
    nb = copy.deepcopy(nb)
    run = next(c for c in nb.cells if "history = run_grpo(policy, sft_model," in c.source)
    run.source = run.source.replace("run_grpo(policy, sft_model,", "run_grpo(sft_model, policy,")
    return nb


def test_solution_gets_full_marks(gradebook):
    assert total(gradebook["solution"]) == (TOTAL, TOTAL), {k: r.message for k, r in gradebook["solution"].items()}


def test_untouched_lab_gets_zero(gradebook):
    assert total(gradebook["untouched_lab"]) == (0, TOTAL)


def test_plausible_mistakes_lose_the_points_they_break(gradebook):
    assert_lost_exactly(gradebook["three_mistakes_and_the_reference_trained"], {
        "verify_check": "substring", "loss_check": "detach",
        "advantages_check": "forbidden call: the exercise may not use course_utils.grpo: group_advantages",
        "outcome_check": "less than +0.02"}, partial=True)
