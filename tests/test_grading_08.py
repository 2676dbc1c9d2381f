"""Grading lab 08 end to end: the solution gets full marks, the untouched lab 0, and plausible mistakes lose
exactly the points of the exercises they break, with a message naming the mistake."""
from pathlib import Path

import pytest

from course_utils.instructor.notebooks import read_notebook
from course_utils.instructor.release import replace_solution
from notebook_helpers import assert_lost_exactly, total

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "08_prompting_cot.ipynb"
TOTAL = 14

FIRST_TOKEN_ONLY = """
logprobs = logits[:, :-1].log_softmax(-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
mask = label_mask[:, 1:].float()
return (logprobs * mask * (mask.cumsum(1) == 1)).sum(1)
"""
SELECT_ON_TEST = """
test_scores = [score(c, test) for c in candidates]
best = test_scores.index(max(test_scores))
return {"best": candidates[best], "dev": score(candidates[best], dev), "test": test_scores[best]}
"""
RAW_LOGPROB_AVERAGE = """
votes = torch.nn.functional.one_hot(logprobs.argmax(-1), logprobs.size(-1)).sum(0)
probs = logprobs.softmax(-1).mean(0)
tied = votes == votes.max(-1, keepdim=True).values
return logprobs.mean(0).argmax(-1), torch.where(tied, probs, torch.full_like(probs, -1.0)).argmax(-1)
"""
ALPHABETICAL_TIES = """
answers = [c.split("answer : ")[1].split()[0] for c in chains if "answer : " in c]
if not answers:
    return None
return min(a for a in set(answers) if answers.count(a) == max(answers.count(b) for b in answers))
"""
TRAILING_SPACE = """
lines = [template.format(x=x, y=y) for x, y in demos]
lines.append(template[:template.index("{y}")].format(x=query))
return delimiter.join(lines)
"""


@pytest.fixture(scope="module")
def gradebook(grade_notebooks):
    solution = read_notebook(SOLUTION)
    wrong_versions = {
        "first_token_and_test_selection": replace_solution(replace_solution(solution, "label_impl", FIRST_TOKEN_ONLY),
                                                           "ape_impl", SELECT_ON_TEST),
        "space_averaging_and_ties": replace_solution(replace_solution(replace_solution(
            solution, "prompt_impl", TRAILING_SPACE), "ensemble_impl", RAW_LOGPROB_AVERAGE), "sc_impl", ALPHABETICAL_TIES),
    }
    return grade_notebooks(SOLUTION, wrong_versions)



def test_solution_gets_full_marks(gradebook):
    assert total(gradebook["solution"]) == (TOTAL, TOTAL), {k: r.message for k, r in gradebook["solution"].items()}


def test_untouched_lab_gets_zero(gradebook):
    assert total(gradebook["untouched_lab"]) == (0, TOTAL)


@pytest.mark.parametrize("name, lost", [  # exercise -> words its message must contain
    ("first_token_and_test_selection", {"label_check": "first token", "ape_check": "test set"}),
    ("space_averaging_and_ties", {"prompt_check": "whitespace", "ensemble_check": "raw log-probs", "sc_check": "ties"}),
])
def test_plausible_mistakes_lose_the_points_they_break(gradebook, name, lost):
    rows = gradebook[name]
    assert_lost_exactly(rows, lost)
