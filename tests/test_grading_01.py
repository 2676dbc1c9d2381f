"""Grading lab 01 end to end: the solution gets full marks, the untouched lab 0, and plausible
mistakes lose exactly the points of the exercises they break (with a message saying why)."""
from pathlib import Path

import pytest

from course_utils.instructor.notebooks import read_notebook
from course_utils.instructor.release import replace_solution
from notebook_helpers import assert_lost_exactly, total

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
FUSED_OR_MASKS = """
q, k, v = (self.split_heads(t) for t in self.qkv(x).chunk(3, dim=-1))
mask = causal_mask(x.shape[1])
if attention_mask is not None:
    mask = mask | padding_mask(attention_mask)
out, _ = scaled_dot_product_attention(q, k, v, mask)
return self.out_proj(self.merge_heads(out))
"""
CACHE_NOT_EXTENDED = """
q, k, v = (self.split_heads(t) for t in self.qkv(x_new).chunk(3, dim=-1))
keys, values = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
out, _ = scaled_dot_product_attention(q, keys, values)
return self.out_proj(self.merge_heads(out)), past_k, past_v
"""
TOTAL = 14


def replaced(nb, **codes):
    """``nb`` with the solution region of each grade_id replaced by the given code."""
    for grade_id, code in codes.items():
        nb = replace_solution(nb, grade_id, code)
    return nb


@pytest.fixture(scope="module")
def gradebook(grade_notebooks):
    solution = read_notebook(SOLUTION)
    wrong_versions = {
        "no_scale": replace_solution(solution, "attention_impl", NO_SCALE),
        "mask_after_softmax": replace_solution(solution, "attention_impl", MASK_AFTER_SOFTMAX),
        "head_and_decoder_mistakes": replaced(solution, mha_impl=HEADS_NOT_TRANSPOSED, fused_impl=FUSED_OR_MASKS,
                                              cache_impl=CACHE_NOT_EXTENDED),
    }
    return grade_notebooks(SOLUTION, wrong_versions)



def test_solution_gets_full_marks(gradebook):
    points, max_points = total(gradebook["solution"])
    assert max_points == TOTAL and points == TOTAL, {k: r.message for k, r in gradebook["solution"].items()}


def test_untouched_lab_gets_zero(gradebook):
    rows = gradebook["untouched_lab"]
    assert total(rows) == (0, TOTAL)
    assert all("NotImplementedError" in r.message for r in rows.values() if r.exercise != "masks_check")


@pytest.mark.parametrize("name, lost", [  # exercise -> words its message must contain ("" for any)
    ("no_scale", {"attention_check": "sqrt", "mha_check": "", "fused_check": "", "cache_check": ""}),
    # MHA and the fused attention use masks too; the KV-cached step needs no mask, so it still passes
    ("mask_after_softmax", {"attention_check": "before the softmax", "mha_check": "", "fused_check": ""}),
    ("head_and_decoder_mistakes", {"mha_check": "Split the last dimension", "fused_check": "combined with OR",
                                   "cache_check": "append the new token"}),
])
def test_plausible_mistakes_lose_the_points_they_break(gradebook, name, lost):
    assert_lost_exactly(gradebook[name], lost, partial=True)
