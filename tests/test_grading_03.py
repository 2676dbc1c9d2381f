"""Grading lab 03 end to end: the solution gets full marks, the untouched lab 0, and plausible
mistakes lose exactly the points of the exercises they break, with a message naming the mistake."""
from pathlib import Path

import pytest

from course_utils.instructor.notebooks import nbgrader_meta, read_notebook
from course_utils.instructor.release import replace_solution
from notebook_helpers import total

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "03_gpt_pretraining.ipynb"
TOTAL = 31

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
WARMUP_OFF_BY_ONE = """
if step < warmup_steps:
    return max_lr * (step + 1) / warmup_steps
progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
return min_lr + (max_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
"""
CLIP_PER_TENSOR = """
total_norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
return [g * torch.clamp(max_norm / (g.norm() + 1e-6), max=1.0) for g in grads], total_norm
"""
ADAM_WITH_L2 = """
beta1, beta2 = betas
t = state["step"] + 1
new_params, exp_avg, exp_avg_sq = {}, {}, {}
for name, p in params.items():
    g = grads[name] + (weight_decay * p if p.dim() >= 2 else 0.0)  # L2 through the gradient
    exp_avg[name] = beta1 * state["exp_avg"][name] + (1 - beta1) * g
    exp_avg_sq[name] = beta2 * state["exp_avg_sq"][name] + (1 - beta2) * g * g
    m_hat, v_hat = exp_avg[name] / (1 - beta1 ** t), exp_avg_sq[name] / (1 - beta2 ** t)
    new_params[name] = p - lr * m_hat / (v_hat.sqrt() + eps)
return new_params, {"step": t, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
"""
ROPE_ON_VALUES_TOO = """
B, T, D = x.shape
d_head = D // n_heads
h = rms_norm(x, w["input_layernorm"], eps)
q, k, v = ((h @ w[n].T).view(B, T, n_heads, d_head).transpose(1, 2) for n in ("q_proj", "k_proj", "v_proj"))
q, k, v = apply_rotary(q, theta), apply_rotary(k, theta), apply_rotary(v, theta)
scores = q @ k.transpose(-2, -1) / math.sqrt(d_head)
causal = torch.ones(T, T, dtype=torch.bool).tril()
weights = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
x = x + (weights @ v).transpose(1, 2).reshape(B, T, D) @ w["o_proj"].T
return x + swiglu_mlp(rms_norm(x, w["post_attention_layernorm"], eps), w["gate_proj"], w["up_proj"], w["down_proj"])
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


def replaced(nb, **codes):
    """``nb`` with the solution region of each grade_id replaced by the given code."""
    for grade_id, code in codes.items():
        nb = replace_solution(nb, grade_id, code)
    return nb


def ties_as_found(nb):
    """A BPE trainer that breaks ties by whichever pair was counted first (one line of the bpe cell)."""
    cell = next(c for c in nb.cells if nbgrader_meta(c).get("grade_id") == "bpe_impl")
    line = "best = min(pairs, key=lambda pair: (-pairs[pair], tie_key(pair)))"
    assert line in cell.source
    cell.source = cell.source.replace(line, "best = max(pairs, key=pairs.get)")
    return nb


@pytest.fixture(scope="module")
def gradebook(grade_notebooks):
    solution = read_notebook(SOLUTION)
    wrong_versions = {
        "model_and_loss_mistakes": ties_as_found(replaced(
            solution, attention_impl=NO_CAUSAL_MASK, loss_impl=LOSS_WITHOUT_SHIFT, schedule_impl=WARMUP_OFF_BY_ONE,
            clip_impl=CLIP_PER_TENSOR)),
        "decoding_mistakes": drop_crossing_token(replaced(solution, beam_impl=BEAM_ON_RAW_LOGITS,
                                                          adamw_impl=ADAM_WITH_L2, llama_block_impl=ROPE_ON_VALUES_TOO)),
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
                                 "gpt_check": "", "loss_check": "no shift", "schedule_check": "off by one",
                                 "clip_check": "OWN norm", "bpe_check": "first one found"}),
    ("decoding_mistakes", {"beam_check": "LOG-probabilities", "top_p_check": "crosses top_p",
                           "sampling_check": "chi-square", "adamw_check": "L2",
                           "llama_block_check": "values too"}),
])
def test_plausible_mistakes_lose_the_points_they_break(gradebook, name, lost):
    rows = gradebook[name]
    failed = {ex for ex, r in rows.items() if r.points < r.max_points}
    assert failed == set(lost), {ex: r.message for ex, r in rows.items()}
    assert 0 < total(rows)[0] < TOTAL
    for exercise, message in lost.items():
        assert message in rows[exercise].message, (exercise, rows[exercise].message)
