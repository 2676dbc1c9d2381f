"""Grading lab 08 end to end: the solution gets full marks, the untouched lab 0, and plausible mistakes lose
exactly the points of the exercises they break, with a message naming the mistake. Each wrong notebook also
calls the course's own answers (course_utils.prompting, which the lab imports as P) in the exercises its mistakes
leave intact: traced, every one of them loses its points, so each of the lab's seven graded functions is shown to
be protected."""
from pathlib import Path

import pytest

from course_utils.instructor.notebooks import read_notebook
from course_utils.instructor.release import replace_solution
from notebook_helpers import assert_lost_exactly, total

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "08_prompting_cot.ipynb"
TOTAL = 18

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
lines = [instruction] if instruction else []
lines += [template.format(x=x, y=y) for x, y in demos]
lines.append(template[:template.index("{y}")].format(x=query))
return delimiter.join(lines)
"""
ANSWER_PROMPT = """
return P.build_prompt(demos, query, template, delimiter)
"""
ANSWER_ENSEMBLE = """
return P.ensemble(logprobs)
"""
ANSWER_SC = """
return P.vote([P.extract_answer(c) for c in chains])
"""
ANSWER_LABEL = """
return P.sequence_scores(logits, input_ids, label_mask)
"""
ANSWER_APE = """
return P.ape_select(candidates, score, dev, test)
"""
DIRECT_WITHOUT_SLOT = """
solve = {"direct": lambda d: d.direct(), "steps": lambda d: d.cot(), "trigger": lambda d: d.cot(trigger=True)}
tail = {"direct": "", "steps": "", "trigger": " " + R.TRIGGER}
return R.DELIMITER.join([solve[style](d) for d in demos] + [f"{problem.text} {problem.question}{tail[style]}"])
"""
KEEPS_PERIODS = """
words = text.split()
for i in range(len(words) - 2):
    if words[i] == "answer" and words[i + 1] == ":":
        return words[i + 2]
return None
"""
ANSWER_COT = """
return P.cot_prompt(problem, style, demos)
"""
ANSWER_EXTRACT = """
return P.extract_answer(text)
"""


def replaced(nb, **codes):
    """``nb`` with the solution region of each grade_id replaced by the given code."""
    for grade_id, code in codes.items():
        nb = replace_solution(nb, grade_id, code)
    return nb


@pytest.fixture(scope="module")
def gradebook(grade_notebooks):
    solution = read_notebook(SOLUTION)
    wrong_versions = {
        "first_token_and_test_selection_answers_called": replaced(
            solution, label_impl=FIRST_TOKEN_ONLY, ape_impl=SELECT_ON_TEST, cot_impl=DIRECT_WITHOUT_SLOT,
            prompt_impl=ANSWER_PROMPT, ensemble_impl=ANSWER_ENSEMBLE, sc_impl=ANSWER_SC, answer_impl=ANSWER_EXTRACT),
        "space_averaging_and_ties_answers_called": replaced(
            solution, prompt_impl=TRAILING_SPACE, ensemble_impl=RAW_LOGPROB_AVERAGE, sc_impl=ALPHABETICAL_TIES,
            answer_impl=KEEPS_PERIODS, label_impl=ANSWER_LABEL, ape_impl=ANSWER_APE, cot_impl=ANSWER_COT),
    }
    return grade_notebooks(SOLUTION, wrong_versions)



def test_solution_gets_full_marks(gradebook):
    assert total(gradebook["solution"]) == (TOTAL, TOTAL), {k: r.message for k, r in gradebook["solution"].items()}


def test_untouched_lab_gets_zero(gradebook):
    assert total(gradebook["untouched_lab"]) == (0, TOTAL)


@pytest.mark.parametrize("name, lost", [  # exercise -> words its message must contain
    ("first_token_and_test_selection_answers_called", {
        "label_check": "first token", "ape_check": "test set", "cot_check": "answer :",
        "answer_check": "forbidden call: the exercise may not use course_utils.prompting: extract_answer",
        "prompt_check": "forbidden call: the exercise may not use course_utils.prompting: build_prompt",
        "ensemble_check": "forbidden call: the exercise may not use course_utils.prompting: ensemble",
        "sc_check": "forbidden call: the exercise may not use course_utils.prompting"}),
    ("space_averaging_and_ties_answers_called", {
        "prompt_check": "whitespace", "ensemble_check": "raw log-probs", "sc_check": "ties",
        "answer_check": "trailing periods",
        "cot_check": "forbidden call: the exercise may not use course_utils.prompting: cot_prompt",
        "label_check": "forbidden call: the exercise may not use course_utils.prompting: sequence_scores",
        "ape_check": "forbidden call: the exercise may not use course_utils.prompting: ape_select"}),
])
def test_plausible_mistakes_lose_the_points_they_break(gradebook, name, lost):
    rows = gradebook[name]
    assert_lost_exactly(rows, lost)
