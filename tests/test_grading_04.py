"""Grading lab 04 end to end: the solution gets full marks, the untouched lab 0, and plausible
mistakes lose exactly the points of the exercises they break, with a message naming the mistake."""
from pathlib import Path

import pytest

from course_utils.instructor.notebooks import read_notebook
from course_utils.instructor.release import replace_solution
from notebook_helpers import total

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "04_instruction_tuning.ipynb"
TOTAL = 14

SWAPPED_LABELS = """
return f"{text}\\nis anyone happy in this story ?", ("yes", "no")[label]
"""
PER_SEQUENCE_MEAN = """
losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none")
mask = labels[:, 1:] != -100
return ((losses * mask).sum(1) / mask.sum(1)).mean()
"""
END_TOKEN_MASKED = """
enc = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
end = tokenizer.convert_tokens_to_ids("<|end|>")
ids = list(enc["input_ids"])
return {"input_ids": ids, "labels": [t if m and t != end else -100 for t, m in zip(ids, enc["assistant_masks"])]}
"""


@pytest.fixture(scope="module")
def gradebook(grade_notebooks):
    solution = read_notebook(SOLUTION)
    wrong_versions = {
        "template_and_loss_mistakes": replace_solution(replace_solution(solution, "template_impl", SWAPPED_LABELS),
                                                       "loss_impl", PER_SEQUENCE_MEAN),
        "end_token_masked": replace_solution(solution, "encode_impl", END_TOKEN_MASKED),
    }
    return grade_notebooks(SOLUTION, wrong_versions)



def test_solution_gets_full_marks(gradebook):
    assert total(gradebook["solution"]) == (TOTAL, TOTAL), {k: r.message for k, r in gradebook["solution"].items()}


def test_untouched_lab_gets_zero(gradebook):
    rows = gradebook["untouched_lab"]
    assert total(rows) == (0, TOTAL)


@pytest.mark.parametrize("name, lost", [  # exercise -> words its message must contain
    ("template_and_loss_mistakes", {"template_check": "swap 0 and 1", "loss_check": "per-sequence"}),
    # masking <|end|> is caught by the labels check; measured: the short SFT run still answers well enough for the
    # outcome check, so only the labels check's points are lost
    ("end_token_masked", {"encode_check": "<|end|>"}),
])
def test_plausible_mistakes_lose_the_points_they_break(gradebook, name, lost):
    rows = gradebook[name]
    failed = {ex for ex, r in rows.items() if r.points < r.max_points}
    assert failed == set(lost), {ex: r.message for ex, r in rows.items()}
    for exercise, message in lost.items():
        assert message in rows[exercise].message, (exercise, rows[exercise].message)
