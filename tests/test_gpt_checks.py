"""Lab 03's checks: the solution passes (visible and hidden checks), and plausible mistakes fail
with a message that names the mistake. The solution code is read from solutions/03_gpt_pretraining.ipynb."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from course_utils.checks import CheckError
from course_utils.checks import gpt as checks
from course_utils.instructor.notebooks import nbgrader_meta, read_notebook
from notebook_helpers import solution_namespace

SOLUTION = Path(__file__).resolve().parents[1] / "solutions" / "03_gpt_pretraining.ipynb"


@pytest.fixture(scope="module")
def sol():
    """The solution's imports and every solution cell, executed into one namespace."""
    return solution_namespace(SOLUTION, "checks import gpt")


def test_solution_passes_every_check_cell_hidden_tests_included(sol, capsys):
    cells = [c for c in read_notebook(SOLUTION).cells if nbgrader_meta(c).get("grade")]
    assert len(cells) == 18 and sum(nbgrader_meta(c)["points"] for c in cells) == 31
    for cell in cells:
        exec(cell.source, dict(sol))
    assert capsys.readouterr().out.count("all checks passed") == 36  # visible + hidden


# --- Exercise 1: attention ---------------------------------------------------------------------

def _attention(sol, forward):
    """A CausalSelfAttention whose forward is ``forward(self, x)``."""
    return type("Wrong", (sol["CausalSelfAttention"],), {"forward": forward})


def _qkv(self, x):
    B, T, C = x.shape
    hs = C // self.n_head
    q, k, v = self.c_attn(x).split(C, dim=2)
    return [t.view(B, T, self.n_head, hs).transpose(1, 2) for t in (q, k, v)], (B, T, C, hs)


def no_mask(self, x):
    (q, k, v), (B, T, C, hs) = _qkv(self, x)
    y = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(hs), -1) @ v
    return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


def no_scale(self, x):
    (q, k, v), (B, T, C, hs) = _qkv(self, x)
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    y = torch.softmax((q @ k.transpose(-2, -1)).masked_fill(~mask, -math.inf), -1) @ v
    return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


def scale_by_n_embd(self, x):
    (q, k, v), (B, T, C, hs) = _qkv(self, x)
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    y = torch.softmax((q @ k.transpose(-2, -1) / math.sqrt(C)).masked_fill(~mask, -math.inf), -1) @ v
    return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


def mask_after_softmax(self, x):
    (q, k, v), (B, T, C, hs) = _qkv(self, x)
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(hs), -1) * torch.ones(T, T).tril()
    return self.c_proj((weights @ v).transpose(1, 2).reshape(B, T, C))


def library_attention(self, x):
    (q, k, v), (B, T, C, hs) = _qkv(self, x)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


def heads_not_transposed(self, x):
    B, T, C = x.shape
    hs = C // self.n_head
    q, k, v = (t.reshape(B, self.n_head, T, hs) for t in self.c_attn(x).split(C, dim=2))
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    y = torch.softmax((q @ k.transpose(-2, -1) / math.sqrt(hs)).masked_fill(~mask, -math.inf), -1) @ v
    return self.c_proj(y.reshape(B, T, C))


@pytest.mark.parametrize("forward, words", [
    (no_mask, "no causal mask"),
    (no_scale, "not scaled"),
    (scale_by_n_embd, "size of ONE head"),
    (mask_after_softmax, "after the softmax"),
    (library_attention, "by hand"),
    (heads_not_transposed, "values differ"),
])
def test_attention_mistakes_are_named(sol, forward, words):
    with pytest.raises(CheckError, match=words):
        checks.check_causal_self_attention(_attention(sol, forward))


def test_causality_is_tested_directly(sol):
    """Besides comparing values, the checks perturb the last position and watch earlier outputs."""
    class Leaky(nn.Module):
        def forward(self, x):
            return x + x[:, -1:]  # every position sees the last one

    with pytest.raises(CheckError, match="future leaks"):
        checks._check_causal(Leaky(), torch.randn(2, 5, 8, dtype=torch.float64), "leaky")
    checks._check_causal(nn.Identity(), torch.randn(2, 5, 8, dtype=torch.float64), "identity")


def test_layout_errors_are_explained(sol):
    class Extra(sol["CausalSelfAttention"]):
        def __init__(self, n_embd, n_head):
            super().__init__(n_embd, n_head)
            self.q_proj = nn.Linear(n_embd, n_embd)
    with pytest.raises(CheckError, match="GPT-2 does not have"):
        checks.check_causal_self_attention(Extra)


# --- Exercise 2: block and model ---------------------------------------------------------------

def post_ln(self, x):
    x = self.ln_1(x + self.attn(x))
    return self.ln_2(x + self.mlp(x))


def no_residual(self, x):
    return self.mlp(self.ln_2(self.attn(self.ln_1(x))))


@pytest.mark.parametrize("forward, words", [(post_ln, "pre-LN"), (no_residual, "residual")])
def test_block_mistakes_are_named(sol, forward, words):
    with pytest.raises(CheckError, match=words):
        checks.check_block(type("Wrong", (sol["Block"],), {"forward": forward}))


def test_block_with_wrong_attention_points_to_exercise_1(sol, monkeypatch):
    monkeypatch.setattr(sol["CausalSelfAttention"], "forward", no_mask)
    with pytest.raises(CheckError, match="attention check"):
        checks.check_block(sol["Block"])


def no_positions(self, idx):
    x = self.wte(idx)
    for block in self.h:
        x = block(x)
    return self.lm_head(self.ln_f(x))


def no_final_norm(self, idx):
    x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
    for block in self.h:
        x = block(x)
    return self.lm_head(x)


@pytest.mark.parametrize("forward, words", [(no_positions, "position embeddings"), (no_final_norm, "final layer norm")])
def test_gpt_mistakes_are_named(sol, forward, words):
    with pytest.raises(CheckError, match=words):
        checks.check_gpt(type("Wrong", (sol["GPT"],), {"forward": forward}))


def test_untied_head_is_caught(sol):
    class Untied(sol["GPT"]):
        def __init__(self, *args):
            super().__init__(*args)
            self.lm_head = nn.Linear(self.wte.embedding_dim, self.wte.num_embeddings, bias=False)
    with pytest.raises(CheckError):
        checks.check_gpt(Untied)


# --- Exercise 3: loss --------------------------------------------------------------------------

def loss_no_shift(logits, labels):
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)


def loss_counts_padding(logits, labels):
    per_token = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                                ignore_index=-100, reduction="none")
    return per_token.sum() / per_token.numel()


def loss_sum(logits, labels):
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                           ignore_index=-100, reduction="sum")


def loss_detached(logits, labels):
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                           ignore_index=-100).detach()


@pytest.mark.parametrize("fn, words", [(loss_no_shift, "no shift"), (loss_counts_padding, "-100 positions"),
                                       (loss_sum, "a sum"), (loss_detached, "carries no gradient")])
def test_loss_mistakes_are_named(fn, words):
    with pytest.raises(CheckError, match=words):
        checks.check_lm_loss(fn)


# --- Exercises 4 and 5: greedy and beam search -------------------------------------------------

def greedy_new_tokens_only(next_logits, input_ids, max_new_tokens):
    ids = input_ids
    for _ in range(max_new_tokens):
        ids = torch.cat([ids, next_logits(ids).argmax(-1, keepdim=True)], 1)
    return ids[:, input_ids.shape[1]:]


def greedy_stale_context(next_logits, input_ids, max_new_tokens):
    new = [next_logits(input_ids).argmax(-1, keepdim=True) for _ in range(max_new_tokens)]
    return torch.cat([input_ids, *new], 1)


@pytest.mark.parametrize("fn, words", [(greedy_new_tokens_only, "not only"), (greedy_stale_context, "first difference")])
def test_greedy_mistakes_are_named(fn, words):
    with pytest.raises(CheckError, match=words):
        checks.check_greedy(fn)


def beam_raw_logits(next_logits, input_ids, num_beams, max_new_tokens):
    beams, scores = input_ids, torch.zeros(1, dtype=torch.float64)
    for _ in range(max_new_tokens):
        total = scores[:, None] + next_logits(beams)
        scores, flat = total.flatten().topk(num_beams)
        beams = torch.cat([beams[flat // total.size(-1)], (flat % total.size(-1))[:, None]], 1)
    return beams[:1]


def beam_forgets_scores(next_logits, input_ids, num_beams, max_new_tokens):
    beams = input_ids
    for _ in range(max_new_tokens):
        total = torch.log_softmax(next_logits(beams), -1)
        _, flat = total.flatten().topk(num_beams)
        beams = torch.cat([beams[flat // total.size(-1)], (flat % total.size(-1))[:, None]], 1)
    return beams[:1]


def beam_identical_start(next_logits, input_ids, num_beams, max_new_tokens):
    beams, scores = input_ids.repeat(num_beams, 1), torch.zeros(num_beams, dtype=torch.float64)
    for _ in range(max_new_tokens):
        total = scores[:, None] + torch.log_softmax(next_logits(beams), -1)
        scores, flat = total.flatten().topk(num_beams)
        beams = torch.cat([beams[flat // total.size(-1)], (flat % total.size(-1))[:, None]], 1)
    return beams[:1]


@pytest.mark.parametrize("fn, words", [
    (beam_raw_logits, "LOG-probabilities"),
    (beam_forgets_scores, "beam's score so far"),
    (beam_identical_start, "greedy answer"),
])
def test_beam_mistakes_are_named(fn, words):
    with pytest.raises(CheckError, match=words):
        checks.check_beam_search(fn)


def test_reference_beam_search_equals_generate_on_many_models():
    """The textbook algorithm the lab describes is exactly what generate(num_beams=k) does here."""
    for seed in range(8):
        model = checks.random_gpt2(seed=100 + seed)
        ids = torch.randint(50, (1, 2), generator=torch.Generator().manual_seed(seed))
        for k in (2, 4):
            assert torch.equal(checks.reference_beam_search(checks.next_logits_fn(model), ids, k, 5),
                               checks._generate(model, ids, 5, k))


# --- Exercises 6 and 7: filters and sampling ---------------------------------------------------

@pytest.mark.parametrize("fn, words", [
    (lambda logits, t: logits * t, "do not multiply"),
    (lambda logits, t: torch.log(torch.softmax(logits, -1) / t), "BEFORE the softmax"),
    (lambda logits, t: torch.softmax(logits / t, -1), "not probabilities"),
])
def test_temperature_mistakes_are_named(fn, words):
    with pytest.raises(CheckError, match=words):
        checks.check_temperature(fn)


def top_k_exactly_k(logits, k):
    idx = logits.topk(min(k, logits.size(-1)), -1).indices
    return torch.full_like(logits, -math.inf).scatter(-1, idx, logits.gather(-1, idx))


def top_k_zero_fill(logits, k):
    kth = logits.topk(min(k, logits.size(-1)), -1).values[..., -1:]
    return logits.masked_fill(logits < kth, 0.0)


def top_k_in_place(logits, k):
    kth = logits.topk(min(k, logits.size(-1)), -1).values[..., -1:]
    logits[logits < kth] = -math.inf
    return logits


@pytest.mark.parametrize("fn, words", [(top_k_exactly_k, "ties"), (top_k_zero_fill, "not 0"), (top_k_in_place, "in place")])
def test_top_k_mistakes_are_named(fn, words):
    with pytest.raises(CheckError, match=words):
        checks.check_top_k(fn)


def top_p_excludes_crossing(logits, top_p, min_tokens_to_keep=1):
    sorted_logits, order = logits.sort(-1, descending=True)
    remove = sorted_logits.softmax(-1).cumsum(-1) > top_p  # drops the token that crosses top_p
    remove[..., :min_tokens_to_keep] = False
    return logits.masked_fill(remove.scatter(-1, order, remove), -math.inf)


def top_p_ignores_min_tokens(logits, top_p, min_tokens_to_keep=1):
    sorted_logits, order = logits.sort(-1, descending=True)
    probs = sorted_logits.softmax(-1)
    remove = probs.cumsum(-1) - probs >= top_p
    return logits.masked_fill(remove.scatter(-1, order, remove), -math.inf)


@pytest.mark.parametrize("fn, words", [(top_p_excludes_crossing, "crosses top_p"),
                                       (top_p_ignores_min_tokens, "min_tokens_to_keep")])
def test_top_p_mistakes_are_named(fn, words):
    with pytest.raises(CheckError, match=words):
        checks.check_top_p(fn)


def test_sampling_mistakes_fail(sol):
    def no_generator(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
        return sol["sample_next_token"](logits, temperature, top_k, top_p, None)

    def unfiltered(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
        return sol["sample_next_token"](logits, temperature, None, None, generator)

    def top_p_first(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
        if top_p is not None:
            logits = sol["top_p_filter"](logits, top_p)
        return sol["sample_next_token"](logits, temperature, top_k, None, generator)

    def argmax(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
        return logits.argmax(-1)

    for fn, words in ((no_generator, "generator"), (unfiltered, "filters remove"),
                      (top_p_first, "filters remove|chi-square"), (argmax, "chi-square")):
        with pytest.raises(CheckError, match=words):
            checks.check_sampling(fn)
