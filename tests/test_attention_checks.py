"""The lab 01 checks accept correct code and reject plausible mistakes with a useful message."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from course_utils.checks import CheckError
from course_utils.checks.attention import (check_attention, check_decode_step, check_fused_attention, check_masks,
                                           check_multi_head_attention)
from notebook_helpers import solution_namespace

SOLUTION = Path(__file__).resolve().parents[1] / "solutions" / "01_attention.ipynb"


def attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(-1)
    return weights @ v, weights


def attention_no_scale(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(-1)
    return weights @ v, weights


def attention_mask_after_softmax(q, k, v, mask=None):
    weights = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1)
    if mask is not None:
        weights = weights * mask
    return weights @ v, weights


def attention_naive_exp(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    e = scores.exp()
    weights = e / e.sum(-1, keepdim=True)
    return weights @ v, weights


def causal_mask(n):
    return torch.ones(n, n, dtype=torch.bool).tril()


def padding_mask(attention_mask):
    return attention_mask.bool()[:, None, None, :]


class MHA(nn.Module):
    def __init__(self, d_model, n_heads, attend=attention):
        super().__init__()
        self.n_heads, self.d_head, self.attend = n_heads, d_model // n_heads, attend
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d_model, d_model) for _ in range(4))

    def split(self, x):
        b, n, _ = x.shape
        return x.view(b, n, self.n_heads, self.d_head).transpose(1, 2)

    def forward(self, query, key, value, mask=None):
        q, k, v = self.split(self.q_proj(query)), self.split(self.k_proj(key)), self.split(self.v_proj(value))
        out, _ = self.attend(q, k, v, mask)
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))


class MHAWrongSplit(MHA):
    def split(self, x):  # reshapes straight into heads without moving the head axis: mixes positions
        b, n, _ = x.shape
        return x.reshape(b, self.n_heads, n, self.d_head)


def test_correct_code_passes(capsys):
    check_attention(attention)
    check_masks(causal_mask, padding_mask)
    check_multi_head_attention(MHA)
    assert capsys.readouterr().out.count("all checks passed") == 3


@pytest.mark.parametrize("wrong, message", [
    (attention_no_scale, "sqrt"),
    (attention_mask_after_softmax, "before the softmax"),
    (attention_naive_exp, "numerical stability"),
    (lambda q, k, v, mask=None: attention(q, k, v, mask)[0], "tuple"),
    (lambda q, k, v, mask=None: (attention(q, k, v, mask)[0].transpose(-1, -2), attention(q, k, v, mask)[1]), "shape"),
])
def test_wrong_attention_is_rejected(wrong, message):
    with pytest.raises(CheckError, match=message):
        check_attention(wrong)


@pytest.mark.parametrize("causal, padding, message", [
    (lambda n: torch.ones(n, n, dtype=torch.bool).triu(), padding_mask, "is_causal"),
    (lambda n: torch.ones(n, n, dtype=torch.bool).tril(-1), padding_mask, "is_causal"),  # forgets the diagonal
    (lambda n: torch.ones(n, n).tril(), padding_mask, "bool"),
    (causal_mask, lambda m: m.bool(), "broadcasts"),
    (causal_mask, lambda m: ~m.bool()[:, None, None, :], "True for real tokens"),
])
def test_wrong_masks_are_rejected(causal, padding, message):
    with pytest.raises(CheckError, match=message):
        check_masks(causal, padding)


@pytest.mark.parametrize("wrong, message", [
    (MHAWrongSplit, "Split the last dimension"),
    (lambda d, h: MHA(d, h, attend=attention_no_scale), "d_model"),
])
def test_wrong_mha_is_rejected(wrong, message):
    with pytest.raises(CheckError, match=message):
        check_multi_head_attention(wrong)


class MHAReportsAHugeWidth(MHA):
    def __init__(self, d_model, n_heads):
        super().__init__(d_model, n_heads)
        self.q_proj.in_features = 10 ** 9  # the reference must not be built from what the module reports


class MHAWiderProjection(MHA):
    def __init__(self, d_model, n_heads):
        super().__init__(d_model, n_heads)
        self.v_proj = nn.Linear(d_model, 4 * d_model)


def test_the_reference_is_built_from_the_checks_sizes_not_the_students():
    check_multi_head_attention(MHAReportsAHugeWidth)  # correct weights: passes, nothing huge is built
    with pytest.raises(CheckError, match=r"v_proj.weight has shape \(64, 16\); with d_model=16"):
        check_multi_head_attention(MHAWiderProjection)


def test_mha_without_expected_attributes_gets_told_what_is_missing():
    class NoProj(nn.Module):
        def __init__(self, d, h):
            super().__init__()
            self.n_heads = h

    with pytest.raises(CheckError, match="q_proj"):
        check_multi_head_attention(NoProj)


# --- Exercises 4 and 5: fused causal + padding attention, one KV-cached step ------------------------


@pytest.fixture(scope="module")
def sol():
    return solution_namespace(SOLUTION, "checks import attention")


def test_solution_passes_exercises_4_and_5(sol):
    check_fused_attention(sol["FusedSelfAttention"])
    check_decode_step(sol["CachedSelfAttention"])


def _fused(sol, combine=lambda causal, pad: causal & pad, layout="qkv", causal_on=True):
    def forward(self, x, attention_mask=None):
        B, L, D = x.shape
        fused = self.qkv(x)
        if layout == "heads":
            q, k, v = fused.view(B, L, self.n_heads, 3 * self.d_head).transpose(1, 2).chunk(3, dim=-1)
        else:
            q, k, v = (self.split_heads(t) for t in fused.chunk(3, dim=-1))
        mask = sol["causal_mask"](L) if causal_on else torch.ones(L, L, dtype=torch.bool)
        if attention_mask is not None:
            mask = combine(mask, sol["padding_mask"](attention_mask))
        out, _ = sol["scaled_dot_product_attention"](q, k, v, mask)
        return self.out_proj(self.merge_heads(out))
    return type("Wrong", (sol["FusedSelfAttention"],), {"forward": forward})


@pytest.mark.parametrize("kwargs, words", [
    (dict(causal_on=False), "no causal mask"),
    (dict(combine=lambda causal, pad: causal), "padding mask is missing"),
    (dict(combine=lambda causal, pad: causal | pad), "combined with OR"),
    (dict(layout="heads"), "wrong split of the fused projection"),
])
def test_fused_mistakes_are_named(sol, kwargs, words):
    with pytest.raises(CheckError, match=words):
        check_fused_attention(_fused(sol, **kwargs))


def test_fused_with_unscaled_attention_fails(sol):
    def forward(self, x, attention_mask=None):
        q, k, v = (self.split_heads(t) for t in self.qkv(x).chunk(3, dim=-1))
        mask = sol["causal_mask"](x.shape[1])
        if attention_mask is not None:
            mask = mask & sol["padding_mask"](attention_mask)
        out, _ = attention_no_scale(q, k, v, mask)
        return self.out_proj(self.merge_heads(out))
    with pytest.raises(CheckError, match="output at real tokens"):
        check_fused_attention(type("Wrong", (sol["FusedSelfAttention"],), {"forward": forward}))


def _cached(sol, append=True, attend_past_only=False, whole=False, mutate=False):
    def decode_step(self, x_new, past_k, past_v):
        q, k, v = (self.split_heads(t) for t in self.qkv(x_new).chunk(3, dim=-1))
        new_k, new_v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        keys, values = (past_k, past_v) if attend_past_only and past_k.shape[2] else (new_k, new_v)
        out, _ = sol["scaled_dot_product_attention"](q, keys, values)
        if mutate:
            past_k.add_(1.0)  # writes into the cache it was given
        y = self.out_proj(self.merge_heads(out))
        if whole:
            y = torch.cat([torch.zeros(y.shape[0], past_k.shape[2], y.shape[2], dtype=y.dtype), y], dim=1)
        return (y, new_k, new_v) if append else (y, past_k, past_v)
    return type("Wrong", (sol["FusedSelfAttention"],), {"decode_step": decode_step})


@pytest.mark.parametrize("kwargs, words", [
    (dict(append=False), "append the new token"),
    (dict(attend_past_only=True), "ALL cached keys"),
    (dict(whole=True), "NEW position only"),
    (dict(mutate=True), "in place"),
])
def test_decode_step_mistakes_are_named(sol, kwargs, words):
    with pytest.raises(CheckError, match=words):
        check_decode_step(_cached(sol, **kwargs))


def test_untouched_decode_step_raises_not_implemented(sol):
    class Stub(sol["FusedSelfAttention"]):
        def decode_step(self, x_new, past_k, past_v):
            raise NotImplementedError
    with pytest.raises(NotImplementedError):
        check_decode_step(Stub)
