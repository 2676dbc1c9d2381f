"""Lab 01 plausible wrong submissions (issue 24 §6): each loses its exercise's check; correct variants pass."""
import math
from pathlib import Path

import torch
import torch.nn as nn

from course_utils.checks import attention as checks
from catch_rate import catch_rate_tests, solution_functions

SOLUTION = Path(__file__).resolve().parents[1] / "solutions" / "01_attention.ipynb"
SOL = solution_functions(SOLUTION, {"math": math, "torch": torch, "nn": nn})


def check_masks(masks):
    """check_masks on ``masks``: {"causal": ..., "padding": ...}, the solution's where one is left out."""
    checks.check_masks(masks.get("causal", SOL["causal_mask"]), masks.get("padding", SOL["padding_mask"]))


def _sdpa(weights_of, scale=lambda q, k: 1 / math.sqrt(q.shape[-1])):
    """A scaled_dot_product_attention whose weights are ``weights_of(scores * scale(q, k), mask)``."""
    def attention(q, k, v, mask=None):
        weights = weights_of(q @ k.transpose(-2, -1) * scale(q, k), mask)
        return weights @ v, weights
    return attention


def _masked(scores, mask, fill=float("-inf")):
    return scores if mask is None else scores.masked_fill(~mask, fill)


def softmax_exp_without_max(scores, mask):
    e = _masked(scores, mask).exp()
    return e / e.sum(-1, keepdim=True)


def softmax_masked_after_exp(scores, mask):
    """Subtracts the max of the whole row (masked scores included), then zeroes the masked ones."""
    e = (scores - scores.max(-1, keepdim=True).values).exp()
    e = e if mask is None else e * mask
    return e / e.sum(-1, keepdim=True)


def sdpa_scales_q_in_place(q, k, v, mask=None):
    q /= math.sqrt(q.shape[-1])
    weights = torch.softmax(_masked(q @ k.transpose(-2, -1), mask), dim=-1)
    return weights @ v, weights


class MHAWithoutTranspose(SOL["MultiHeadAttention"]):
    def forward(self, query, key, value, mask=None):
        def split(x):
            return x.reshape(x.shape[0], self.n_heads, x.shape[1], self.d_head)
        out, _ = SOL["scaled_dot_product_attention"](split(self.q_proj(query)), split(self.k_proj(key)),
                                                     split(self.v_proj(value)), mask)
        return self.out_proj(out.reshape(query.shape))


class MHAIgnoringTheMask(SOL["MultiHeadAttention"]):
    def forward(self, query, key, value, mask=None):
        return super().forward(query, key, value)


def _fused(mask_of):
    """A FusedSelfAttention whose mask is ``mask_of(L, attention_mask)``."""
    class Fused(SOL["FusedSelfAttention"]):
        def forward(self, x, attention_mask=None):
            q, k, v = (self.split_heads(t) for t in self.qkv(x).chunk(3, dim=-1))
            out, _ = SOL["scaled_dot_product_attention"](q, k, v, mask_of(x.shape[1], attention_mask))
            return self.out_proj(self.merge_heads(out))
    return Fused


def _both(L, attention_mask, combine):
    causal = SOL["causal_mask"](L)
    return causal if attention_mask is None else combine(causal, SOL["padding_mask"](attention_mask))


class DecodeCacheInPlace(SOL["FusedSelfAttention"]):
    def decode_step(self, x_new, past_k, past_v):
        q, k, v = (self.split_heads(t) for t in self.qkv(x_new).chunk(3, dim=-1))
        new_k, new_v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        past_k.resize_as_(new_k).copy_(new_k)
        out, _ = SOL["scaled_dot_product_attention"](q, new_k, new_v)
        return self.out_proj(self.merge_heads(out)), new_k, new_v


class DecodeWithoutTheNewKey(SOL["FusedSelfAttention"]):
    def decode_step(self, x_new, past_k, past_v):
        q, k, v = (self.split_heads(t) for t in self.qkv(x_new).chunk(3, dim=-1))
        out, _ = SOL["scaled_dot_product_attention"](q, torch.cat([past_k, k], 2), torch.cat([past_v, v], 2))
        return self.out_proj(self.merge_heads(out)), past_k, past_v


WRONG = {
    "sdpa no scaling": (checks.check_attention, _sdpa(lambda s, m: torch.softmax(_masked(s, m), -1),
                                                      scale=lambda q, k: 1.0), "sqrt"),
    "sdpa scaled by the key length": (checks.check_attention, _sdpa(lambda s, m: torch.softmax(_masked(s, m), -1),
                                                                    scale=lambda q, k: 1 / math.sqrt(k.shape[-2])),
                                      "sqrt"),
    "sdpa mask inverted": (checks.check_attention, _sdpa(lambda s, m: torch.softmax(
        s if m is None else s.masked_fill(m, float("-inf")), -1)), "weight 0"),
    "sdpa mask as zeros": (checks.check_attention, _sdpa(lambda s, m: torch.softmax(
        s if m is None else s * m, -1)), "weight 0"),
    "sdpa softmax over queries": (checks.check_attention, _sdpa(lambda s, m: torch.softmax(_masked(s, m), -2)),
                                  "sum to 1"),
    "sdpa exp without the max": (checks.check_attention, _sdpa(softmax_exp_without_max), "subtract the row max"),
    "sdpa masked after exp": (checks.check_attention, _sdpa(softmax_masked_after_exp), "large logits with a mask"),
    "sdpa scales q in place": (checks.check_attention, sdpa_scales_q_in_place, "changed q in place"),
    "causal mask upper": (check_masks, {"causal": lambda n: torch.ones(n, n).bool().triu()},
                          "is_causal"),
    "causal mask without the diagonal": (check_masks, {
        "causal": lambda n: torch.ones(n, n).bool().tril(-1)}, "itself included"),
    "padding mask inverted": (check_masks, {"padding": lambda am: (am == 0)[:, None, None, :]},
                              "True for real tokens"),
    "padding mask on queries": (check_masks, {"padding": lambda am: am.bool()[:, None, :, None]},
                                "shape"),
    "mha without the transpose": (checks.check_multi_head_attention, MHAWithoutTranspose, "values differ"),
    "mha ignoring the mask": (checks.check_multi_head_attention, MHAIgnoringTheMask, "with a padding mask"),
    "fused without padding": (checks.check_fused_attention, _fused(lambda L, am: SOL["causal_mask"](L)),
                              "padding mask is missing"),
    "fused masks or-ed": (checks.check_fused_attention, _fused(lambda L, am: _both(L, am, torch.logical_or)),
                          "combined with OR"),
    "decode cache in place": (checks.check_decode_step, DecodeCacheInPlace, "in place"),
    "decode without the new key in the cache": (checks.check_decode_step, DecodeWithoutTheNewKey, "append"),
}


def sdpa_loop(q, k, v, mask=None):
    """One query at a time, with a large negative number for the mask."""
    scores = torch.einsum("...qd,...kd->...qk", q, k) / q.shape[-1] ** 0.5
    if mask is not None:
        scores = torch.where(mask, scores, torch.full_like(scores, -1e30))
    weights = torch.stack([torch.softmax(scores[..., i, :], -1) for i in range(scores.shape[-2])], dim=-2)
    return weights @ v, weights


RIGHT = {
    "solution sdpa": (checks.check_attention, SOL["scaled_dot_product_attention"]),
    "sdpa loop with einsum": (checks.check_attention, sdpa_loop),
    "sdpa max over the allowed scores": (checks.check_attention, _sdpa(lambda s, m: (
        lambda e: e / e.sum(-1, keepdim=True))((_masked(s, m) - _masked(s, m).amax(-1, keepdim=True)).exp()))),
    "solution masks": (check_masks, {}),
    "masks by comparison": (check_masks, {"causal": lambda n: torch.arange(n)[:, None] >= torch.arange(n)[None, :],
                                          "padding": lambda am: (am == 1).view(am.shape[0], 1, 1, -1)}),
    "solution mha": (checks.check_multi_head_attention, SOL["MultiHeadAttention"]),
    "solution fused": (checks.check_fused_attention, SOL["FusedSelfAttention"]),
    "fused masks with *": (checks.check_fused_attention, _fused(lambda L, am: _both(L, am, torch.logical_and))),
    "solution decode": (checks.check_decode_step, SOL["CachedSelfAttention"]),
}


test_a_plausible_wrong_version_loses_its_check, test_a_correct_version_passes = catch_rate_tests(WRONG, RIGHT)
