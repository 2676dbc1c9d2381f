"""Grading lab 03 end to end: the solution gets full marks, the untouched lab 0, and plausible
mistakes lose exactly the points of the exercises they break, with a message naming the mistake."""
from pathlib import Path

import pytest

from course_utils.instructor.notebooks import nbgrader_meta, read_notebook
from course_utils.instructor.release import replace_solution
from notebook_helpers import total

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "03_gpt_pretraining.ipynb"
TOTAL = 20

NO_CAUSAL_MASK = """
B, T, C = x.shape
head_size = C // self.n_head
q, k, v = self.c_attn(x).split(C, dim=2)
q, k, v = (t.view(B, T, self.n_head, head_size).transpose(1, 2) for t in (q, k, v))
weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(head_size), dim=-1)
return self.c_proj((weights @ v).transpose(1, 2).reshape(B, T, C))
"""
LOSS_WITHOUT_SHIFT = """
return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)
"""
BEAM_ON_RAW_LOGITS = """
beams, scores = input_ids, torch.zeros(1)
for _ in range(max_new_tokens):
    candidates = scores[:, None] + next_logits(beams)
    vocab_size = candidates.size(-1)
    scores, flat = candidates.flatten().topk(num_beams)
    beams = torch.cat([beams[flat // vocab_size], (flat % vocab_size)[:, None]], dim=1)
return beams[:1]
"""


def drop_crossing_token(nb):
    """Top-p that removes the token crossing the threshold (a one-line change in the filters cell)."""
    cell = next(c for c in nb.cells if nbgrader_meta(c).get("grade_id") == "filters_impl")
    assert "remove = mass_above >= top_p" in cell.source
    cell.source = cell.source.replace("remove = mass_above >= top_p", "remove = probs.cumsum(dim=-1) > top_p")
    return nb


@pytest.fixture(scope="module")
def gradebook(grade_notebooks):
    solution = read_notebook(SOLUTION)
    wrong_versions = {
        "model_and_loss_mistakes": replace_solution(replace_solution(solution, "attention_impl", NO_CAUSAL_MASK),
                                                    "loss_impl", LOSS_WITHOUT_SHIFT),
        "decoding_mistakes": drop_crossing_token(replace_solution(solution, "beam_impl", BEAM_ON_RAW_LOGITS)),
    }
    return grade_notebooks(SOLUTION, wrong_versions)



def test_solution_gets_full_marks(gradebook):
    assert total(gradebook["solution"]) == (TOTAL, TOTAL), {k: r.message for k, r in gradebook["solution"].items()}


def test_untouched_lab_gets_zero(gradebook):
    rows = gradebook["untouched_lab"]
    assert total(rows) == (0, TOTAL)
    assert all("NotImplementedError" in r.message for r in rows.values()), {k: r.message for k, r in rows.items()}


@pytest.mark.parametrize("name, lost", [  # exercise -> words its message must contain
    ("model_and_loss_mistakes", {"attention_check": "no causal mask", "block_check": "attention check",
                                 "gpt_check": "", "loss_check": "no shift"}),
    ("decoding_mistakes", {"beam_check": "LOG-probabilities", "top_p_check": "crosses top_p",
                           "sampling_check": "chi-square"}),
])
def test_plausible_mistakes_lose_the_points_they_break(gradebook, name, lost):
    rows = gradebook[name]
    failed = {ex for ex, r in rows.items() if r.points < r.max_points}
    assert failed == set(lost), {ex: r.message for ex, r in rows.items()}
    assert 0 < total(rows)[0] < TOTAL
    for exercise, message in lost.items():
        assert message in rows[exercise].message, (exercise, rows[exercise].message)
