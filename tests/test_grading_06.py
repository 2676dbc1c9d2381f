"""Grading lab 06 end to end: the solution gets full marks, the untouched lab 0, and plausible mistakes lose
exactly the points of the exercises they break, with a message naming the mistake. One wrong notebook keeps the
test within its time budget; every wrong version the issue lists (prompt tokens summed, beta outside the
log-sigmoid, chosen and rejected swapped, no reference model, mean instead of sum) is rejected by the checks
alone, fast, in tests/test_dpo_checks.py. The wrong notebook also cheats: its dpo_loss calls the course's own
answer (course_utils.dpo.dpo_loss, captured before the checks run), and loses that exercise's points. The outcome
check re-measures the trained copy on the grader's own tasks: the wrong notebook also trains nothing and reports
the numbers the check used to read, and loses it. Its optimal_policy is the solution's and keeps its points. Exercise 5 (the log-prob shifts) is graded on the grader's own hidden
pairs: the wrong notebook's logp_shift calls the course's sequence_logps (forbidden), and a notebook that states
the intuitive conclusion (the chosen replies became likelier) against its own policy's measurement loses exactly
those 3 points; tests/test_catch_rate_06.py holds the other wrong measurements."""
from pathlib import Path

import pytest

from course_utils.instructor.notebooks import read_notebook
from course_utils.instructor.release import replace_solution
from nbformat.v4 import new_code_cell
from notebook_helpers import assert_lost_exactly, total

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "06_dpo.ipynb"
TOTAL = 17

PROMPT_SUMMED = """
mask = (input_ids != tokenizer.pad_token_id).long()
logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
return (logp * mask[:, 1:]).sum(-1)
"""
CAPTURE_ANSWER = """
import course_utils.dpo
_answer = course_utils.dpo.dpo_loss  # captured before any check runs
_answer_logps = course_utils.dpo.sequence_logps
"""
CALLS_ANSWER = """
return _answer(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)  # plain DPO: right at noise 0
"""
SHIFT_CALLS_ANSWER = """
with torch.no_grad():
    rows = [_answer_logps(m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                          batch["input_ids"], batch["completion_mask"]) for m in (policy, reference)]
chosen, rejected = (rows[0] - rows[1]).chunk(2)
return chosen.mean().item(), rejected.mean().item()
"""
# the intuitive answer, stated without looking at the measurement
CHOSEN_ROSE_STATED = """
CHOSEN_ROSE = True
"""
# the run cell of a notebook that trains nothing and reports the numbers the old outcome check read
REPORTED_NOT_TRAINED = """
split = rlhf_split(profile["pair_stories"], profile["prompt_stories"], profile["lab_eval_stories"])
policy = copy.deepcopy(sft_model)
win, kl = 0.9, 1.0
"""


@pytest.fixture(scope="module")
def gradebook(grade_notebooks):
    solution = read_notebook(SOLUTION)
    wrong = replace_solution(replace_solution(solution, "logps_impl", PROMPT_SUMMED), "loss_impl", CALLS_ANSWER)
    wrong = replace_solution(wrong, "shift_impl", SHIFT_CALLS_ANSWER)
    wrong.cells.insert(3, new_code_cell(CAPTURE_ANSWER))  # right after the imports
    next(c for c in wrong.cells if "history = train_dpo(" in c.source).source = REPORTED_NOT_TRAINED
    wrong_versions = {"prompt_summed_answers_called_reported_not_trained": wrong,
                      "chosen_rose_stated": replace_solution(solution, "shift_answer", CHOSEN_ROSE_STATED)}
    return grade_notebooks(SOLUTION, wrong_versions)


def test_solution_gets_full_marks(gradebook):
    assert total(gradebook["solution"]) == (TOTAL, TOTAL), {k: r.message for k, r in gradebook["solution"].items()}


def test_untouched_lab_gets_zero(gradebook):
    assert total(gradebook["untouched_lab"]) == (0, TOTAL)


@pytest.mark.parametrize("name, lost", [  # exercise -> words its message must contain
    # the log-probs check catches the prompt summed and the loss and shift checks the answers called; nothing is
    # trained and numbers are reported: the outcome check re-measures the untouched copy (every reply ties SFT's);
    # its optimal_policy is the solution's and keeps its points
    ("prompt_summed_answers_called_reported_not_trained",
     {"logps_check": "prompt", "loss_check": "forbidden call: the exercise may not use course_utils.dpo: dpo_loss",
      "shift_check": "forbidden call: the exercise may not use course_utils.dpo: sequence_logps",
      "outcome_check": "win rate over SFT under r* on the grader's held-out tasks is 0.50"}),
    ("chosen_rose_stated",
     {"shift_check": "CHOSEN_ROSE = True, but on the grader's held-out pairs your policy's log pi(chosen) fell by"}),
])
def test_plausible_mistakes_lose_the_points_they_break(gradebook, name, lost):
    rows = gradebook[name]
    assert_lost_exactly(rows, lost)
