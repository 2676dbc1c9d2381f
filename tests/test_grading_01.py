"""Grading lab 01 end to end: the solution gets full marks, the untouched lab 0, and plausible
mistakes lose exactly the points of the exercises they break (with a message saying why)."""
from pathlib import Path

import pytest

from course_utils.instructor.notebooks import read_notebook
from course_utils.instructor.release import replace_solution
from notebook_helpers import total

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "01_attention.ipynb"

NO_SCALE = """
scores = q @ k.transpose(-2, -1)
if mask is not None:
    scores = scores.masked_fill(~mask, float("-inf"))
weights = torch.softmax(scores, dim=-1)
return weights @ v, weights
"""
MASK_AFTER_SOFTMAX = """
weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
if mask is not None:
    weights = weights * mask
return weights @ v, weights
"""
HEADS_NOT_TRANSPOSED = """
B, Lq, D = query.shape
Lk = key.shape[1]
q = self.q_proj(query).reshape(B, self.n_heads, Lq, self.d_head)
k = self.k_proj(key).reshape(B, self.n_heads, Lk, self.d_head)
v = self.v_proj(value).reshape(B, self.n_heads, Lk, self.d_head)
out, _ = scaled_dot_product_attention(q, k, v, mask)
return self.out_proj(out.reshape(B, Lq, D))
"""


@pytest.fixture(scope="module")
def gradebook(grade_notebooks):
    solution = read_notebook(SOLUTION)
    wrong_versions = {
        "no_scale": replace_solution(solution, "attention_impl", NO_SCALE),
        "mask_after_softmax": replace_solution(solution, "attention_impl", MASK_AFTER_SOFTMAX),
        "heads_not_transposed": replace_solution(solution, "mha_impl", HEADS_NOT_TRANSPOSED),
    }
    return grade_notebooks(SOLUTION, wrong_versions)



def test_solution_gets_full_marks(gradebook):
    points, max_points = total(gradebook["solution"])
    assert max_points == 8 and points == 8, {k: r.message for k, r in gradebook["solution"].items()}


def test_untouched_lab_gets_zero(gradebook):
    rows = gradebook["untouched_lab"]
    assert total(rows) == (0, 8)
    assert all("NotImplementedError" in r.message for r in rows.values() if r.exercise != "masks_check")


@pytest.mark.parametrize("name, lost, words", [
    ("no_scale", {"attention_check", "mha_check"}, "sqrt"),
    ("mask_after_softmax", {"attention_check", "mha_check"}, "before the softmax"),  # MHA uses masks too
    ("heads_not_transposed", {"mha_check"}, "Split the last dimension"),
])
def test_plausible_mistakes_lose_the_points_they_break(gradebook, name, lost, words):
    rows = gradebook[name]
    failed = {ex for ex, r in rows.items() if r.points < r.max_points}
    assert failed == lost, {ex: r.message for ex, r in rows.items()}
    assert 0 < total(rows)[0] < 8
    assert any(words in rows[ex].message for ex in lost), {ex: rows[ex].message for ex in lost}
