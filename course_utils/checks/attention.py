"""Checks for lab 01 (attention): every result is compared with PyTorch's own implementation.

Oracles: ``torch.nn.functional.scaled_dot_product_attention`` (with a boolean mask, and with
``is_causal=True``) and ``torch.nn.MultiheadAttention`` with the student's weights copied in.
Mask convention (the same as PyTorch's SDPA): a boolean mask is True where attention is allowed.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import CheckError, assert_close, assert_unchanged, drawn_seed, forbids, passed


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
    given = {"q": q, "k": k, "v": v} | ({} if mask is None else {"mask": mask})
    originals = {name: t.clone() for name, t in given.items()}
    out = fn(q, k, v) if mask is None else fn(q, k, v, mask=mask)
    assert_unchanged(given, originals, "scaled_dot_product_attention")
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


@drawn_seed
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
    # a masked score may hold the row's max: subtracting it before masking underflows the allowed ones to 0 / 0
    _compare_attention(fn, q, k, v, _random_mask(gen, (*q.shape[:-1], k.shape[-2])),
                       "large logits with a mask (mask the scores with -inf BEFORE the softmax, or the max you "
                       "subtract may be a masked score)")
    passed("scaled_dot_product_attention")


@drawn_seed
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


def copy_into_torch_mha(mha, d_model: int, n_heads: int) -> torch.nn.MultiheadAttention:
    """A ``torch.nn.MultiheadAttention`` (batch_first) holding the weights of the student's module.

    ``d_model`` and ``n_heads`` are the sizes the check built the module with: the reference is built
    from them, never from sizes the student's module reports.
    """
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        if not isinstance(getattr(mha, name, None), torch.nn.Linear):
            raise CheckError(f"MultiHeadAttention needs an nn.Linear attribute {name!r} (with bias)")
    if getattr(mha, "n_heads", None) != n_heads:
        raise CheckError(f"MultiHeadAttention must store the number of heads as self.n_heads (built with {n_heads})")
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        shape = tuple(getattr(mha, name).weight.shape)
        if shape != (d_model, d_model):
            raise CheckError(f"{name}.weight has shape {shape}; with d_model={d_model} it must be {(d_model, d_model)}")
    ref = torch.nn.MultiheadAttention(d_model, n_heads, batch_first=True, dtype=mha.q_proj.weight.dtype)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([mha.q_proj.weight, mha.k_proj.weight, mha.v_proj.weight]))
        ref.in_proj_bias.copy_(torch.cat([mha.q_proj.bias, mha.k_proj.bias, mha.v_proj.bias]))
        ref.out_proj.weight.copy_(mha.out_proj.weight)
        ref.out_proj.bias.copy_(mha.out_proj.bias)
    return ref.eval()


@drawn_seed
@forbids("scaled_dot_product", "multi_head_attention")
def check_multi_head_attention(mha_class, seed: int = 0, sizes=((16, 4), (12, 3), (8, 1))) -> None:
    """Exercise 3: ``mha_class(d_model, n_heads)`` against nn.MultiheadAttention with the same weights."""
    gen = torch.Generator().manual_seed(seed)
    for d_model, n_heads in sizes:
        torch.manual_seed(seed)
        mha = mha_class(d_model, n_heads).double().eval()
        ref = copy_into_torch_mha(mha, d_model, n_heads).double()
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


def _fused_module(cls, d_model: int, n_heads: int, gen: torch.Generator, std: float = 0.5):
    """``cls(d_model, n_heads)`` in float64 with large random weights loaded (so that mistakes show)."""
    try:
        module = cls(d_model, n_heads).double().eval()
    except NotImplementedError:
        raise
    except Exception as exc:
        raise CheckError(f"{getattr(cls, '__name__', 'the class')}({d_model}, {n_heads}) failed: "
                         f"{type(exc).__name__}: {exc}") from exc
    shapes = {"qkv.weight": (3 * d_model, d_model), "qkv.bias": (3 * d_model,),
              "out_proj.weight": (d_model, d_model), "out_proj.bias": (d_model,)}
    names = {n: tuple(p.shape) for n, p in module.named_parameters()}
    if names != shapes:
        raise CheckError(f"keep the layers given in __init__: expected parameters {shapes}, found {names}")
    weights = {n: torch.randn(*s, generator=gen, dtype=torch.float64) * std for n, s in shapes.items()}
    module.load_state_dict(weights)  # one call, so it also works on a module graded remotely
    return module, weights


def _torch_mha(weights: dict, d_model: int, n_heads: int) -> torch.nn.MultiheadAttention:
    """``nn.MultiheadAttention`` holding fused weights: its in_proj_weight is [W_q; W_k; W_v], like ``qkv``."""
    ref = torch.nn.MultiheadAttention(d_model, n_heads, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        ref.in_proj_weight.copy_(weights["qkv.weight"])
        ref.in_proj_bias.copy_(weights["qkv.bias"])
        ref.out_proj.weight.copy_(weights["out_proj.weight"])
        ref.out_proj.bias.copy_(weights["out_proj.bias"])
    return ref.eval()


def _manual_attention(weights: dict, x: torch.Tensor, n_heads: int, mask, layout: str = "qkv") -> torch.Tensor:
    """Fused attention with an explicit boolean mask (True = allowed); ``layout`` "heads" is a wrong split."""
    B, L, D = x.shape
    d_head = D // n_heads
    fused = x @ weights["qkv.weight"].T + weights["qkv.bias"]
    if layout == "heads":  # heads first, then q/k/v inside each head (GPT-NeoX's layout, not torch's)
        q, k, v = fused.view(B, L, n_heads, 3 * d_head).transpose(1, 2).chunk(3, dim=-1)
    else:
        q, k, v = (t.view(B, L, n_heads, d_head).transpose(1, 2) for t in fused.chunk(3, dim=-1))
    scores = q @ k.transpose(-2, -1) / math.sqrt(d_head)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    y = (torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(B, L, D)
    return y @ weights["out_proj.weight"].T + weights["out_proj.bias"]


def _real_close(got, expected, real: torch.Tensor) -> bool:
    return bool(torch.is_tensor(got) and got.shape == expected.shape
                and torch.allclose(got.double()[real], expected[real], atol=1e-6, rtol=1e-4))


@drawn_seed
@forbids("scaled_dot_product", "multi_head_attention")
def check_fused_attention(cls, seed: int = 0, sizes=((16, 4), (12, 3), (8, 1))) -> None:
    """Exercise 4: ``cls(d_model, n_heads)(x, attention_mask)``, causal + padding, against nn.MultiheadAttention."""
    gen = torch.Generator().manual_seed(seed)
    for d_model, n_heads in sizes:
        mine, weights = _fused_module(cls, d_model, n_heads, gen)
        ref = _torch_mha(weights, d_model, n_heads)
        L = 6
        x = torch.randn(3, L, d_model, generator=gen, dtype=torch.float64)
        causal = torch.ones(L, L, dtype=torch.bool).tril()
        cases = [("no padding (attention_mask=None)", None),  # left before right: there every mistake differs
                 ("LEFT padding (pads before the tokens, as for batched generation)",
                  torch.tensor([[1] * 6, [0] * 2 + [1] * 4, [0] * 3 + [1] * 3])),
                 ("RIGHT padding (pads after the tokens)", torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4]))]
        for case, attention_mask in cases:
            what = f"FusedSelfAttention(d_model={d_model}, n_heads={n_heads}), {case}"
            keep = torch.ones(3, L, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
            with torch.no_grad():
                got = mine(x, attention_mask) if attention_mask is not None else mine(x)
                expected = ref(x, x, x, key_padding_mask=~keep, attn_mask=~causal, need_weights=False)[0]
            if isinstance(got, tuple):
                got = got[0]
            real = keep  # outputs at padding positions are not compared (nothing reads them)
            if _real_close(got, expected, real):
                continue
            pad = keep[:, None, None, :]
            mistakes = {
                "no causal mask: position i may only attend to positions 0..i; combine causal_mask(L) with the "
                "padding mask": _manual_attention(weights, x, n_heads, pad),
                "the padding mask is missing: with LEFT padding, real tokens would attend to the pads before "
                "them (with right padding the causal mask alone hides the pads, which is why this only shows "
                "on left-padded rows)": _manual_attention(weights, x, n_heads, causal),
                "the masks are combined with OR: a key must be allowed by BOTH masks (causal & padding)":
                    _manual_attention(weights, x, n_heads, causal | pad),
                "wrong split of the fused projection: qkv(x) is [all queries | all keys | all values] along the "
                "last dimension (nn.MultiheadAttention's layout), so split it into three d_model chunks first, "
                "then each into heads": _manual_attention(weights, x, n_heads, causal & pad, layout="heads"),
            }
            for message, wrong in mistakes.items():
                if _real_close(got, wrong, real) and not _real_close(wrong, expected, real):
                    raise CheckError(f"{what}: {message}")
            if not torch.is_tensor(got):
                raise CheckError(f"{what}: forward must return a tensor, got {type(got).__name__}")
            if got.shape == expected.shape:
                got, expected = got[real], expected[real]
            assert_close(got, expected, f"{what}: output at real tokens", atol=1e-6,
                         hint="q, k, v = qkv(x).chunk(3, dim=-1); split heads; mask = causal_mask(L) & "
                              "padding_mask(attention_mask); attend; merge heads; out_proj.")
    passed("FusedSelfAttention (causal + padding, equal to nn.MultiheadAttention)")


@drawn_seed
@forbids("scaled_dot_product", "multi_head_attention")
def check_decode_step(cls, seed: int = 0, sizes=((16, 4), (12, 3), (8, 1)), length: int = 6) -> None:
    """Exercise 5: token-by-token ``decode_step`` with a KV cache equals full causal attention at each position."""
    gen = torch.Generator().manual_seed(seed)
    for d_model, n_heads in sizes:
        mine, weights = _fused_module(cls, d_model, n_heads, gen)
        ref = _torch_mha(weights, d_model, n_heads)
        d_head = d_model // n_heads
        x = torch.randn(2, length, d_model, generator=gen, dtype=torch.float64)
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        with torch.no_grad():
            full = ref(x, x, x, attn_mask=~causal, need_weights=False)[0]
            _, k_all, v_all = (t.view(2, length, n_heads, d_head).transpose(1, 2)
                               for t in (x @ weights["qkv.weight"].T + weights["qkv.bias"]).chunk(3, dim=-1))
        past_k = torch.zeros(2, n_heads, 0, d_head, dtype=torch.float64)
        past_v = torch.zeros(2, n_heads, 0, d_head, dtype=torch.float64)
        for t in range(length):
            what = f"decode_step(d_model={d_model}, n_heads={n_heads}) at position {t} (cache of {t} positions)"
            copies = past_k.clone(), past_v.clone()
            with torch.no_grad():
                out = mine.decode_step(x[:, t:t + 1], past_k, past_v)
            if not torch.equal(past_k, copies[0]) or not torch.equal(past_v, copies[1]):
                raise CheckError(f"{what}: the cache tensors it received were changed in place: return new ones "
                                 "(torch.cat([past_k, k_new], dim=2))")
            if not (isinstance(out, (tuple, list)) and len(out) == 3):
                raise CheckError(f"{what}: return a tuple (output, new_k, new_v)")
            y, new_k, new_v = out
            for name, got, exp in (("new_k", new_k, k_all[:, :, : t + 1]), ("new_v", new_v, v_all[:, :, : t + 1])):
                if torch.is_tensor(got) and tuple(got.shape) == tuple(exp.shape[:2]) + (t, d_head):
                    raise CheckError(f"{what}: {name} has {t} positions: append the new token's key/value to the "
                                     f"cache, shape (B, n_heads, {t + 1}, d_head)")
                assert_close(got, exp, f"{what}: {name}", atol=1e-8,
                             hint="The cache holds the keys (values) of every position so far, split into heads: "
                                  "(B, n_heads, t + 1, d_head), the new one last.")
            if torch.is_tensor(y) and y.shape == full[:, :t + 1].shape and t > 0:
                raise CheckError(f"{what}: return the output of the NEW position only, shape (B, 1, d_model)")
            assert_close(y, full[:, t:t + 1], f"{what}: output", atol=1e-6,
                         hint="The new query attends to ALL cached keys, its own included (no mask is needed: "
                              "the cache holds no future positions); scale by 1/sqrt(d_head); out_proj.")
            past_k, past_v = k_all[:, :, : t + 1].clone(), v_all[:, :, : t + 1].clone()
    passed("decode_step (each cached step equals full causal attention at that position)")
