"""Checks for lab 01 (attention): every result is compared with PyTorch's own implementation.

Oracles: ``torch.nn.functional.scaled_dot_product_attention`` (with a boolean mask, and with
``is_causal=True``) and ``torch.nn.MultiheadAttention`` with the student's weights copied in.
Mask convention (the same as PyTorch's SDPA): a boolean mask is True where attention is allowed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import CheckError, assert_close, forbids, passed


def _random_qkv(gen: torch.Generator, batch=(2, 3), lq=5, lk=7, dk=8, dv=6, scale=1.0):
    q = torch.randn(*batch, lq, dk, generator=gen, dtype=torch.float64) * scale
    k = torch.randn(*batch, lk, dk, generator=gen, dtype=torch.float64) * scale
    v = torch.randn(*batch, lk, dv, generator=gen, dtype=torch.float64)
    return q, k, v


def _random_mask(gen: torch.Generator, shape) -> torch.Tensor:
    """A random boolean mask in which every query may attend to at least one key."""
    mask = torch.rand(*shape, generator=gen) > 0.4
    mask[..., 0] = True
    return mask


def _call_attention(fn, q, k, v, mask=None):
    out = fn(q, k, v) if mask is None else fn(q, k, v, mask=mask)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise CheckError("scaled_dot_product_attention must return a tuple (output, weights)")
    return out


def _compare_attention(fn, q, k, v, mask, what: str) -> None:
    out, weights = _call_attention(fn, q, k, v, mask)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    shape = (*q.shape[:-1], k.shape[-2])
    if not torch.is_tensor(weights) or tuple(weights.shape) != shape:
        got = tuple(weights.shape) if torch.is_tensor(weights) else type(weights).__name__
        raise CheckError(f"{what}: weights should have shape (..., L_q, L_k) = {shape}, got {got}")
    if mask is not None and torch.any(weights.masked_select(~mask.expand(shape)).abs() > 1e-6):
        raise CheckError(f"{what}: positions where the mask is False must get weight 0 "
                         "(set their scores to -inf before the softmax)")
    if not torch.allclose(weights.sum(-1).double(), torch.ones(shape[:-1], dtype=torch.float64), atol=1e-5):
        raise CheckError(f"{what}: each row of the weights must sum to 1. If you mask after the softmax, "
                         "the rest no longer sums to 1: mask the scores before the softmax instead")
    assert_close(out, expected, f"{what}: output", atol=1e-6,
                 hint="Compare with softmax(Q K^T / sqrt(d_k)) V: did you scale by 1/sqrt(d_k), "
                      "with d_k the size of the last dimension of Q?")
    assert_close(weights @ v, out, f"{what}: output should equal weights @ V", atol=1e-6)


@forbids("scaled_dot_product", "multi_head_attention")
def check_attention(fn, n_random: int = 20, seed: int = 0) -> None:
    """Exercise 1: compare ``fn(q, k, v, mask=None) -> (output, weights)`` with torch's SDPA."""
    gen = torch.Generator().manual_seed(seed)
    for i in range(n_random):
        dims = dict(lq=int(torch.randint(1, 9, (1,), generator=gen)), lk=int(torch.randint(1, 9, (1,), generator=gen)),
                    dk=int(torch.randint(1, 17, (1,), generator=gen)), dv=int(torch.randint(1, 9, (1,), generator=gen)))
        q, k, v = _random_qkv(gen, **dims)
        _compare_attention(fn, q, k, v, None, f"random case {i} (no mask, {dims})")
        mask = _random_mask(gen, (*q.shape[:-1], k.shape[-2]))
        _compare_attention(fn, q, k, v, mask, f"random case {i} (with a boolean mask, {dims})")
    q, k, v = _random_qkv(gen, scale=40.0)  # scores in the thousands: exp() overflows without care
    _compare_attention(fn, q, k, v, None, "large logits (numerical stability: subtract the row max "
                                          "before exp, or use torch.softmax)")
    passed("scaled_dot_product_attention")


def check_masks(causal_mask, padding_mask, seed: int = 0) -> None:
    """Exercise 2: causal and padding masks, checked against SDPA's is_causal and by construction."""
    for n in (1, 2, 5, 9):
        mask = causal_mask(n)
        if not torch.is_tensor(mask) or mask.dtype != torch.bool or tuple(mask.shape) != (n, n):
            raise CheckError(f"causal_mask({n}) must be a bool tensor of shape ({n}, {n}), got "
                             f"{getattr(mask, 'dtype', type(mask).__name__)} {tuple(getattr(mask, 'shape', ()))}")
        gen = torch.Generator().manual_seed(seed + n)
        q, k, v = _random_qkv(gen, lq=n, lk=n)
        expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        got = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        if not torch.allclose(got, expected, atol=1e-6):
            raise CheckError(f"causal_mask({n}) does not match is_causal=True: position i may attend to "
                             "positions 0..i (itself included) and never to later ones")
    attention_mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]])
    mask = padding_mask(attention_mask)
    if not torch.is_tensor(mask) or mask.dtype != torch.bool:
        raise CheckError(f"padding_mask must return a bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
    if tuple(mask.shape) != (3, 1, 1, 6):
        raise CheckError(f"padding_mask of a (batch=3, seq=6) attention_mask should have shape (3, 1, 1, 6) "
                         f"so it broadcasts over heads and queries, got {tuple(mask.shape)}")
    if not torch.equal(mask[:, 0, 0], attention_mask.bool()):
        raise CheckError("padding_mask must be True for real tokens (attention_mask 1) and False for padding (0)")
    gen = torch.Generator().manual_seed(seed)
    q, k, v = _random_qkv(gen, batch=(3, 2), lq=6, lk=6)
    padded = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    for b, length in enumerate(attention_mask.sum(1).tolist()):
        trimmed = F.scaled_dot_product_attention(q[b:b + 1, :, :, :], k[b:b + 1, :, :length], v[b:b + 1, :, :length])
        if not torch.allclose(padded[b:b + 1], trimmed, atol=1e-6):
            raise CheckError("with padding_mask, outputs must equal those computed without the padded keys")
    passed("causal_mask and padding_mask")


def copy_into_torch_mha(mha) -> torch.nn.MultiheadAttention:
    """A ``torch.nn.MultiheadAttention`` (batch_first) holding the weights of the student's module."""
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        if not isinstance(getattr(mha, name, None), torch.nn.Linear):
            raise CheckError(f"MultiHeadAttention needs an nn.Linear attribute {name!r} (with bias)")
    d_model, n_heads = mha.q_proj.in_features, getattr(mha, "n_heads", None)
    if not isinstance(n_heads, int):
        raise CheckError("MultiHeadAttention must store the number of heads as self.n_heads")
    ref = torch.nn.MultiheadAttention(d_model, n_heads, batch_first=True, dtype=mha.q_proj.weight.dtype)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([mha.q_proj.weight, mha.k_proj.weight, mha.v_proj.weight]))
        ref.in_proj_bias.copy_(torch.cat([mha.q_proj.bias, mha.k_proj.bias, mha.v_proj.bias]))
        ref.out_proj.weight.copy_(mha.out_proj.weight)
        ref.out_proj.bias.copy_(mha.out_proj.bias)
    return ref.eval()


@forbids("scaled_dot_product", "multi_head_attention")
def check_multi_head_attention(mha_class, seed: int = 0, sizes=((16, 4), (12, 3), (8, 1))) -> None:
    """Exercise 3: ``mha_class(d_model, n_heads)`` against nn.MultiheadAttention with the same weights."""
    gen = torch.Generator().manual_seed(seed)
    for d_model, n_heads in sizes:
        torch.manual_seed(seed)
        mha = mha_class(d_model, n_heads).double().eval()
        ref = copy_into_torch_mha(mha).double()
        x = torch.randn(2, 5, d_model, generator=gen, dtype=torch.float64)
        memory = torch.randn(2, 7, d_model, generator=gen, dtype=torch.float64)
        keep = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0]]).bool()
        causal = torch.ones(5, 5).tril().bool()
        cases = [
            ("self-attention", (x, x, x), {}, {}),
            ("cross-attention (queries from x, keys/values from memory)", (x, memory, memory), {}, {}),
            ("with a padding mask", (x, memory, memory), {"mask": keep[:, None, None, :]}, {"key_padding_mask": ~keep}),
            ("with a causal mask", (x, x, x), {"mask": causal}, {"attn_mask": ~causal}),
        ]
        for what, (q, k, v), ours_kw, ref_kw in cases:
            with torch.no_grad():
                got = mha(q, k, v, **ours_kw)
                out = got[0] if isinstance(got, tuple) else got
                expected, _ = ref(q, k, v, need_weights=False, **ref_kw)
            assert_close(out, expected, f"d_model={d_model}, n_heads={n_heads}, {what}", atol=1e-6,
                         hint="Split the last dimension into (n_heads, d_head), move heads before the "
                              "sequence dimension, attend per head, then merge heads back and apply out_proj.")
    passed("MultiHeadAttention")
