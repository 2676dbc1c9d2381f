"""Checks for lab 03's LLaMA-style decoder block: RMSNorm, rotary position embeddings, SwiGLU, the block.

Oracles: ``transformers``' ``LlamaRMSNorm``, ``LlamaRotaryEmbedding`` with ``apply_rotary_pos_emb``,
``LlamaMLP`` and a tiny random ``LlamaForCausalLM`` (its first layer's output and its logits), with the
same weights handed to the student's functions. The student's functions take tensors and a dict of
weights named like LLaMA's (``q_proj``, ..., ``down_proj``; ``nn.Linear`` layout ``(out, in)``) and
return tensors. When a result is wrong, the checks compare it with typical mistakes and name the one
that matches. LLaMA's RMSNorm and rotary tables run partly in float32, hence tolerances of 1e-5.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import (LlamaMLP, LlamaRMSNorm, LlamaRotaryEmbedding,
                                                      apply_rotary_pos_emb)

from . import CheckError, assert_close, assert_unchanged, drawn_seed, forbids, forbids_modules, passed

# Modules whose code the student's functions may not run while these checks call them: transformers (LLaMA's
# modeling, the oracle) and the checks' own references (reference_block). torch's fused RMSNorm is a C operator
# (torch.rms_norm, reached by F.rms_norm too), seen by its name instead (``forbids``).
ANSWERS = ("transformers", "course_utils.checks")

ATOL = 1e-5
BLOCK_WEIGHTS = ("input_layernorm", "q_proj", "k_proj", "v_proj", "o_proj", "post_attention_layernorm",
                 "gate_proj", "up_proj", "down_proj")


def llama_config(hidden: int = 32, n_heads: int = 4, intermediate: int = 48, n_layers: int = 2, vocab: int = 50,
                 theta: float = 10000.0, eps: float = 1e-6) -> LlamaConfig:
    """A tiny LLaMA configuration (multi-head attention: as many key/value heads as query heads)."""
    return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                       num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_heads,
                       max_position_embeddings=64, rms_norm_eps=eps, tie_word_embeddings=False,
                       rope_parameters={"rope_type": "default", "rope_theta": theta},
                       bos_token_id=None, eos_token_id=None, pad_token_id=None)


def random_llama(config: LlamaConfig, seed: int = 0, std: float = 0.3) -> LlamaForCausalLM:
    """A LlamaForCausalLM in float64 and eval mode with large random weights (so that mistakes show)."""
    config._attn_implementation = "eager"
    model = LlamaForCausalLM(config).double().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            p.copy_(1 + 0.2 * noise if p.dim() == 1 else noise * std)  # norm gains around 1
    return model


def block_weights(layer) -> dict[str, torch.Tensor]:
    """The weights of a ``LlamaDecoderLayer`` as the plain dict the student's ``llama_block`` receives."""
    modules = {"input_layernorm": layer.input_layernorm, "post_attention_layernorm": layer.post_attention_layernorm,
               **{n: getattr(layer.self_attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")},
               **{n: getattr(layer.mlp, n) for n in ("gate_proj", "up_proj", "down_proj")}}
    return {n: m.weight.detach().clone() for n, m in modules.items()}


# --- Reference pieces written out (typical mistakes switchable, for the diagnosis) -------------------------------

def _rms(x, weight, eps, layer_norm=False, eps_outside=False):
    if layer_norm:
        x = x - x.mean(-1, keepdim=True)
    ms = x.pow(2).mean(-1, keepdim=True)
    return weight * (x / (ms.sqrt() + eps) if eps_outside else x / torch.sqrt(ms + eps))


def _rotary(x, theta, interleaved=False, start=0, inverse=False, half_exponent=False):
    d = x.shape[-1]
    exponents = torch.arange(d // 2, dtype=torch.float64) / d if half_exponent else \
        torch.arange(0, d, 2, dtype=torch.float64) / d
    inv_freq = 1.0 / theta ** exponents
    angles = torch.arange(start, start + x.shape[-2], dtype=torch.float64)[:, None] * inv_freq  # (T, d/2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    if inverse:
        sin = -sin
    if interleaved:  # pairs (0, 1), (2, 3), ...: the RoFormer / GPT-J layout, not LLaMA's in transformers
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def _swiglu(x, gate, up, down, act=F.silu, swapped=False):
    g, u = x @ gate.T, x @ up.T
    return (act(u) * g if swapped else act(g) * u) @ down.T


def reference_block(x, w, n_heads, theta=10000.0, eps=1e-6, rope=True, rope_values=False, causal=True,
                    post_norm=False, scale_by_model=False):
    """A LLaMA decoder block written out with torch operations (and optional typical mistakes)."""
    B, T, D = x.shape
    d_head = D // n_heads

    def attention(h):
        q, k, v = ((h @ w[n].T).view(B, T, n_heads, d_head).transpose(1, 2) for n in ("q_proj", "k_proj", "v_proj"))
        if rope:
            q, k = _rotary(q, theta), _rotary(k, theta)
        if rope_values:
            v = _rotary(v, theta)
        scores = q @ k.transpose(-2, -1) / math.sqrt(D if scale_by_model else d_head)
        if causal:
            scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
        return (torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(B, T, D) @ w["o_proj"].T

    def mlp(h):
        return _swiglu(h, w["gate_proj"], w["up_proj"], w["down_proj"])

    if post_norm:
        x = _rms(x + attention(x), w["input_layernorm"], eps)
        return _rms(x + mlp(x), w["post_attention_layernorm"], eps)
    x = x + attention(_rms(x, w["input_layernorm"], eps))
    return x + mlp(_rms(x, w["post_attention_layernorm"], eps))


def _close(a, b, atol=ATOL) -> bool:
    return torch.is_tensor(a) and a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), atol=atol, rtol=1e-4))


def _diagnose(got, expected, what: str, mistakes: dict, hint: str) -> None:
    if _close(got, expected):
        return
    for message, wrong in mistakes.items():
        if _close(got, wrong) and not _close(wrong, expected):
            raise CheckError(f"{what}: {message}")
    assert_close(got, expected, what, atol=ATOL, hint=hint)


# --- The checks ------------------------------------------------------------------------------------------------

@drawn_seed
@forbids("rms_norm")
@forbids_modules(*ANSWERS)
def check_rms_norm(fn: Callable, seed: int = 0) -> None:
    """``fn(x, weight, eps)`` against ``LlamaRMSNorm``."""
    gen = torch.Generator().manual_seed(seed)
    for d, eps, shift in ((8, 1e-6, 0.0), (32, 1e-5, 3.0), (5, 0.5, 1.0)):
        x = torch.randn(2, 3, d, generator=gen, dtype=torch.float64) + shift
        weight = 1 + 0.3 * torch.randn(d, generator=gen, dtype=torch.float64)
        ref = LlamaRMSNorm(d, eps=eps).double()
        with torch.no_grad():
            ref.weight.copy_(weight)
            expected = ref(x)
        originals = {"x": x.clone(), "weight": weight.clone()}
        what = f"rms_norm(x of shape {tuple(x.shape)}, eps={eps})"
        got = fn(x, weight, eps)
        assert_unchanged({"x": x, "weight": weight}, originals, what)
        _diagnose(got, expected, what, {
            "this subtracts the mean (LayerNorm): RMSNorm only divides by the root mean square, "
            "x / sqrt(mean(x**2) + eps)": _rms(x, weight, eps, layer_norm=True),
            "eps goes INSIDE the square root: x / sqrt(mean(x**2) + eps)": _rms(x, weight, eps, eps_outside=True),
            "multiply by the learned gain `weight` at the end": _rms(x, torch.ones_like(weight), eps),
        }, hint="RMSNorm(x) = weight * x / sqrt(mean(x**2 over the last dimension) + eps).")
    passed("rms_norm (equal to LlamaRMSNorm)")


@drawn_seed
@forbids_modules(*ANSWERS)
def check_rotary(fn: Callable, seed: int = 0) -> None:
    """``fn(x, theta)`` on ``(B, n_heads, T, d_head)`` against ``LlamaRotaryEmbedding`` + ``apply_rotary_pos_emb``."""
    gen = torch.Generator().manual_seed(seed)
    for n_heads, d_head, T, theta in ((2, 8, 5, 10000.0), (3, 16, 9, 500.0), (1, 4, 12, 10.0)):
        x = torch.randn(2, n_heads, T, d_head, generator=gen, dtype=torch.float64)
        config = llama_config(hidden=n_heads * d_head, n_heads=n_heads, theta=theta)
        rotary = LlamaRotaryEmbedding(config)
        cos, sin = rotary(x, torch.arange(T)[None].expand(2, T))
        expected, _ = apply_rotary_pos_emb(x, x, cos.double(), sin.double())
        original = x.clone()
        what = f"apply_rotary(x of shape {tuple(x.shape)}, theta={theta})"
        got = fn(x, theta)
        assert_unchanged({"x": x}, {"x": original}, what)
        _diagnose(got, expected, what, {
            "this rotates neighbouring pairs (0, 1), (2, 3), ... (the RoFormer/GPT-J layout): LLaMA in transformers "
            "pairs dimension i with dimension i + d_head/2 (rotate_half)": _rotary(x, theta, interleaved=True),
            "positions start at 0: the first token is not rotated": _rotary(x, theta, start=1),
            "the rotation goes the wrong way: x1 * cos - x2 * sin for the first half, x2 * cos + x1 * sin for the "
            "second": _rotary(x, theta, inverse=True),
            "the frequencies are theta ** (-2i / d_head) for i = 0 .. d_head/2 - 1 (exponents torch.arange(0, "
            "d_head, 2) / d_head): you used i / d_head": _rotary(x, theta, half_exponent=True),
        }, hint="angle[t, i] = t * theta ** (-2i / d_head); with x1, x2 the two halves of the last dimension, "
                "return cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin]).")
    passed("apply_rotary (equal to LlamaRotaryEmbedding + apply_rotary_pos_emb)")


@drawn_seed
@forbids_modules(*ANSWERS)
def check_swiglu(fn: Callable, seed: int = 0) -> None:
    """``fn(x, w_gate, w_up, w_down)`` against ``LlamaMLP``."""
    gen = torch.Generator().manual_seed(seed)
    for d, inter in ((8, 12), (16, 40)):
        ref = LlamaMLP(llama_config(hidden=d, n_heads=2, intermediate=inter)).double()
        with torch.no_grad():
            for p in ref.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5)
        x = torch.randn(2, 3, d, generator=gen, dtype=torch.float64)
        w = [ref.gate_proj.weight.detach().clone(), ref.up_proj.weight.detach().clone(), ref.down_proj.weight.detach().clone()]
        with torch.no_grad():
            expected = ref(x)
        what = f"swiglu_mlp(d_model={d}, intermediate={inter})"
        given = dict(zip(("x", "w_gate", "w_up", "w_down"), [x, *w]))
        originals = {n: t.clone() for n, t in given.items()}
        got = fn(x, *w)
        assert_unchanged(given, originals, what)
        _diagnose(got, expected, what, {
            "the SiLU goes on the GATE branch: down(silu(gate(x)) * up(x))": _swiglu(x, *w, swapped=True),
            "LLaMA's activation is SiLU (x * sigmoid(x)), not GELU": _swiglu(x, *w, act=F.gelu),
            "the up branch is missing: SwiGLU multiplies silu(gate(x)) by up(x) elementwise before down":
                F.silu(x @ w[0].T) @ w[2].T,
        }, hint="SwiGLU: down(silu(x @ w_gate.T) * (x @ w_up.T)), with the nn.Linear layout (out, in).")
    passed("swiglu_mlp (equal to LlamaMLP)")


@drawn_seed
@forbids_modules(*ANSWERS)
def check_llama_block(fn: Callable, seed: int = 0, sizes=((32, 4, 48), (24, 2, 40))) -> None:
    """``fn(x, weights, n_heads, theta, eps)`` against the first layer of ``LlamaForCausalLM``, then its logits."""
    gen = torch.Generator().manual_seed(seed)
    for i, (hidden, n_heads, inter) in enumerate(sizes):
        theta, eps = (10000.0, 1e-6) if i % 2 == 0 else (500.0, 1e-5)
        model = random_llama(llama_config(hidden, n_heads, inter, theta=theta, eps=eps), seed=seed + i)
        ids = torch.randint(model.config.vocab_size, (2, 7), generator=gen)
        with torch.no_grad():
            out = model(ids, output_hidden_states=True)
        x, expected = out.hidden_states[0], out.hidden_states[1]
        w = block_weights(model.model.layers[0])
        what = f"llama_block(hidden={hidden}, n_heads={n_heads}, theta={theta}, eps={eps})"
        given = {"x": x, **{f"w[{n!r}]": w[n] for n in BLOCK_WEIGHTS}}
        originals = {n: t.clone() for n, t in given.items()}
        got = fn(x, w, n_heads, theta, eps)
        assert_unchanged(given, originals, what)
        mistakes = {
            "no causal mask: position i may only attend to positions 0..i": dict(causal=False),
            "the rotary embedding is missing: rotate q and k (not v) before the scores": dict(rope=False),
            "the rotary embedding is applied to the values too: rotate q and k only (positions enter the scores, "
            "the values stay as they are)": dict(rope_values=True),
            "the norms come after the residual sums (post-norm): LLaMA normalises the input of each sublayer, "
            "x = x + attn(rms_norm(x)); x = x + mlp(rms_norm(x))": dict(post_norm=True),
            "scale the scores by 1/sqrt(d_head), the size of ONE head": dict(scale_by_model=True),
        }
        _diagnose(got, expected, what, {m: reference_block(x, w, n_heads, theta, eps, **kw) for m, kw in mistakes.items()},
                  hint="h = rms_norm(x, input_layernorm); q, k, v = projections split into heads; rotate q and k; "
                       "causal softmax(q k^T / sqrt(d_head)) v; merge; o_proj; x = x + that; then "
                       "x = x + swiglu_mlp(rms_norm(x, post_attention_layernorm), ...).")
        h = x
        with torch.no_grad():
            for layer in model.model.layers:
                h = fn(h, block_weights(layer), n_heads, theta, eps)
            logits = model.lm_head(model.model.norm(h))
        assert_close(logits, out.logits, f"{what}: logits of LlamaForCausalLM with {len(model.model.layers)} of your "
                     "blocks", atol=1e-4, hint="The first block matched: is every block using its own weights?")
    passed("llama_block (equal to LlamaForCausalLM's layer, and its logits through your blocks)")
