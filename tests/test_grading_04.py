"""Grading lab 04 end to end: the solution gets full marks, the untouched lab 0, and plausible
mistakes lose exactly the points of the exercises they break, with a message naming the mistake.
Two of them also cheat: one patches the checks in its kernel (they run in the grader, so it gains
nothing), one calls the course's own answers in course_utils.sft (traced: it loses those exercises)."""
from pathlib import Path

import pytest

from course_utils.instructor.notebooks import read_notebook
from course_utils.instructor.release import replace_solution
from nbformat.v4 import new_code_cell
from notebook_helpers import assert_lost_exactly, total

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
PATCH_CHECKS = """
checks.check_template = checks.check_encode_chat = checks.check_sft_loss = lambda *a, **k: None
"""
ANSWER_ENCODE = """
from course_utils.sft import encode_chat as answer
return answer(tokenizer, messages)
"""
END_TOKEN_MASKED = """
text = tokenizer.apply_chat_template(messages, tokenize=False)
enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
replies, start = [], text.find(reply_start)
while start != -1:
    begin = start + len(reply_start)
    end = text.index(turn_end, begin)  # stops before the end-of-turn token
    replies.append((begin, end))
    start = text.find(reply_start, end)
ids = list(enc["input_ids"])
keep = [any(b <= s and e <= f for b, f in replies) for s, e in enc["offset_mapping"]]
return {"input_ids": ids, "labels": [t if k else -100 for t, k in zip(ids, keep)]}
"""
LAST_REPLY_ONLY = """
text = tokenizer.apply_chat_template(messages, tokenize=False)
enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
begin = text.rindex(reply_start) + len(reply_start)
end = text.index(turn_end, begin) + len(turn_end)
ids = list(enc["input_ids"])
return {"input_ids": ids, "labels": [t if begin <= s and e <= end else -100
                                     for t, (s, e) in zip(ids, enc["offset_mapping"])]}
"""


REPORTED_NUMBERS = """
tuned = {"seen": 0.95, "unseen": 0.9}
print("SFT model accuracy:", tuned)
"""


@pytest.fixture(scope="module")
def gradebook(grade_notebooks):
    solution = read_notebook(SOLUTION)
    # one mistake that changes training per notebook: <|end|> masked and a per-sequence mean together leave the
    # short SFT run below the outcome check's bar (measured in a clean-clone CI run: 0.19 < 0.25), each alone does not
    patched = replace_solution(solution, "encode_impl", END_TOKEN_MASKED)
    patched.cells.insert(3, new_code_cell(PATCH_CHECKS))  # right after the imports
    answers = replace_solution(replace_solution(solution, "encode_impl", ANSWER_ENCODE), "loss_impl", PER_SEQUENCE_MEAN)
    # no training at all: the accuracies it reports are typed in; and only the last reply of a chat labelled
    reported = replace_solution(read_notebook(SOLUTION), "encode_impl", LAST_REPLY_ONLY)
    training = next(c for c in reported.cells if "history = train(" in c.source)
    training.source = REPORTED_NUMBERS
    wrong_versions = {
        "end_masked_checks_patched": patched,
        "swapped_labels_per_sequence_loss_answer_called": replace_solution(answers, "template_impl", SWAPPED_LABELS),
        "numbers_reported_without_training_last_reply_only": reported,
    }
    return grade_notebooks(SOLUTION, wrong_versions)


def test_solution_gets_full_marks(gradebook):
    assert total(gradebook["solution"]) == (TOTAL, TOTAL), {k: r.message for k, r in gradebook["solution"].items()}


def test_untouched_lab_gets_zero(gradebook):
    rows = gradebook["untouched_lab"]
    assert total(rows) == (0, TOTAL)


NEAR_THE_BAR = {"end_masked_checks_patched": {"outcome_check"}}


@pytest.mark.parametrize("name, lost", [  # exercise -> words its message must contain
    # masking <|end|> is caught by the labels check even with the checks replaced in the kernel; the model then never
    # learns to stop, and its seen accuracy measured by the outcome check sits near the bar (0.19 on one of the
    # grader's draws, at or above 0.25 on others), so the outcome may be lost too (NEAR_THE_BAR)
    ("end_masked_checks_patched", {"encode_check": "<|end|> closing each reply is masked"}),
    # swapped labels, a mean of per-sequence means, and the course's own encode_chat called: each loses its exercise,
    # the SFT run passes
    # the outcome is measured by the check from the model's weights: typed-in accuracies earn nothing
    # the last reply only: right on one-exchange chats, named on the check's chats of two and three exchanges
    ("numbers_reported_without_training_last_reply_only", {"outcome_check": "measured by the check on its own tasks",
                                                             "encode_check": "only the last reply"}),
    ("swapped_labels_per_sequence_loss_answer_called", {
        "template_check": "swap 0 and 1", "loss_check": "per-sequence",
        "encode_check": "forbidden call: the exercise may not use course_utils.sft"}),
])
def test_plausible_mistakes_lose_the_points_they_break(gradebook, name, lost):
    rows = gradebook[name]
    assert_lost_exactly(rows, lost, may_also_lose=frozenset(NEAR_THE_BAR.get(name, ())))
