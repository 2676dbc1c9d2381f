"""Grading lab 03 end to end: the solution gets full marks, the untouched lab 0, and plausible
mistakes lose exactly the points of the exercises they break, with a message naming the mistake.
Both wrong notebooks also call answers in exercises their mistakes leave intact (the checks' own
references, transformers, torch.optim, torch.nn.utils, the fused RMSNorm operator): traced, each of
those exercises loses its points and nothing else."""
from pathlib import Path

import pytest

from course_utils.instructor.notebooks import nbgrader_meta, read_notebook
from course_utils.instructor.release import replace_solution
from notebook_helpers import assert_lost_exactly, total

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

# Answers called instead of written (each loses its exercise with "forbidden call")
REFERENCE_BEAM = """
return checks.reference_beam_search(next_logits, input_ids, num_beams, max_new_tokens)
"""
TORCH_ADAMW = """
new_params, new_state = {}, {"step": state["step"] + 1, "exp_avg": {}, "exp_avg_sq": {}}
for name, p in params.items():
    q = torch.nn.Parameter(p.clone())
    q.grad = grads[name].clone()
    opt = torch.optim.AdamW([q], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay if p.dim() >= 2 else 0.0)
    opt.state[q] = {"step": torch.tensor(float(state["step"])), "exp_avg": state["exp_avg"][name].clone(),
                    "exp_avg_sq": state["exp_avg_sq"][name].clone()}
    opt.step()
    new_params[name] = q.detach()
    new_state["exp_avg"][name], new_state["exp_avg_sq"][name] = opt.state[q]["exp_avg"], opt.state[q]["exp_avg_sq"]
return new_params, new_state
"""
TRANSFORMERS_LOSS = """
from transformers.loss.loss_utils import ForCausalLMLoss
return ForCausalLMLoss(logits, labels, vocab_size=logits.size(-1))
"""
TRANSFORMERS_SCHEDULE = """
from transformers import get_cosine_with_min_lr_schedule_with_warmup
optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=max_lr)
schedule = get_cosine_with_min_lr_schedule_with_warmup(optimizer, warmup_steps, total_steps, min_lr=min_lr)
return max_lr * schedule.lr_lambdas[0](step)
"""
TORCH_CLIP = """
copies = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
for c, g in zip(copies, grads):
    c.grad = g.clone()
total_norm = torch.nn.utils.clip_grad_norm_(copies, max_norm)
return [c.grad for c in copies], total_norm
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


def answer_in_line(nb, grade_id: str, line: str, answer: str):
    """``nb`` whose cell ``grade_id`` returns ``answer`` instead of running ``line`` (one region of several)."""
    cell = next(c for c in nb.cells if nbgrader_meta(c).get("grade_id") == grade_id)
    assert line in cell.source, (grade_id, line)
    indent = cell.source[:cell.source.index(line)].rsplit("\n", 1)[-1]
    cell.source = cell.source.replace(line, f"return {answer}  # the answer called, not written\n{indent}{line}")
    return nb


@pytest.fixture(scope="module")
def gradebook(grade_notebooks):
    solution = read_notebook(SOLUTION)
    wrong_versions = {
        "model_and_loss_mistakes_answers_called": answer_in_line(ties_as_found(replaced(
            solution, attention_impl=NO_CAUSAL_MASK, loss_impl=LOSS_WITHOUT_SHIFT, schedule_impl=WARMUP_OFF_BY_ONE,
            clip_impl=CLIP_PER_TENSOR, beam_impl=REFERENCE_BEAM, adamw_impl=TORCH_ADAMW)), "llama_parts_impl",
            "return weight * x / torch.sqrt(", "F.rms_norm(x, (x.shape[-1],), weight, eps)"),
        "decoding_mistakes_answers_called": answer_in_line(drop_crossing_token(replaced(
            solution, beam_impl=BEAM_ON_RAW_LOGITS, adamw_impl=ADAM_WITH_L2, llama_block_impl=ROPE_ON_VALUES_TOO,
            loss_impl=TRANSFORMERS_LOSS, schedule_impl=TRANSFORMERS_SCHEDULE, clip_impl=TORCH_CLIP)), "bpe_impl",
            "counts = Counter(tuple(w) for w in words)", "bpe_checks.reference_merges(words, num_merges)"),
    }
    return grade_notebooks(SOLUTION, wrong_versions)



def test_solution_gets_full_marks(gradebook):
    assert total(gradebook["solution"]) == (TOTAL, TOTAL), {k: r.message for k, r in gradebook["solution"].items()}


def test_untouched_lab_gets_zero(gradebook):
    rows = gradebook["untouched_lab"]
    assert total(rows) == (0, TOTAL)
    assert all("NotImplementedError" in r.message for r in rows.values()), {k: r.message for k, r in rows.items()}


@pytest.mark.parametrize("name, lost", [  # exercise -> words its message must contain
    ("model_and_loss_mistakes_answers_called", {
        "attention_check": "no causal mask", "block_check": "attention check", "gpt_check": "",
        "loss_check": "no shift", "schedule_check": "off by one", "clip_check": "OWN norm",
        "bpe_check": "first one found",
        "beam_check": "forbidden call: the exercise may not use course_utils.checks: reference_beam_search",
        "adamw_check": "forbidden call: the exercise may not use torch.optim",
        "rms_norm_check": "forbidden call: the exercise may not use torch function rms_norm"}),
    ("decoding_mistakes_answers_called", {
        "beam_check": "LOG-probabilities", "top_p_check": "crosses top_p", "sampling_check": "chi-square",
        "adamw_check": "L2", "llama_block_check": "values too",
        "loss_check": "forbidden call: the exercise may not use transformers",
        "schedule_check": "forbidden call: the exercise may not use", "clip_check": "forbidden call: the exercise "
        "may not use torch.nn.utils.clip_grad",
        "bpe_check": "forbidden call: the exercise may not use course_utils.checks: reference_merges"}),
])
def test_plausible_mistakes_lose_the_points_they_break(gradebook, name, lost):
    assert_lost_exactly(gradebook[name], lost, partial=True)
