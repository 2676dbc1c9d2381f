"""Lab 03's LLaMA checks (RMSNorm, rotary embeddings, SwiGLU, the block): the solution passes, the written-out
reference equals transformers' LLaMA, and plausible mistakes fail with a message naming them."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from course_utils.checks import CheckError
from course_utils.checks import llama as checks
from notebook_helpers import solution_namespace

SOLUTION = Path(__file__).resolve().parents[1] / "solutions" / "03_gpt_pretraining.ipynb"


@pytest.fixture(scope="module")
def sol():
    return solution_namespace(SOLUTION, "checks import gpt")


def test_solution_passes(sol):
    checks.check_rms_norm(sol["rms_norm"])
    checks.check_rotary(sol["apply_rotary"])
    checks.check_swiglu(sol["swiglu_mlp"])
    checks.check_llama_block(sol["llama_block"])


def test_reference_block_equals_transformers_llama():
    """The diagnosis' written-out block (no mistake switched on) is LlamaForCausalLM's first layer."""
    model = checks.random_llama(checks.llama_config(theta=500.0, eps=1e-5), seed=3)
    ids = torch.randint(50, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    got = checks.reference_block(out.hidden_states[0], checks.block_weights(model.model.layers[0]), 4, 500.0, 1e-5)
    torch.testing.assert_close(got, out.hidden_states[1], atol=1e-5, rtol=1e-4)


def test_rotary_scores_depend_only_on_relative_position(sol):
    """The property the lab states: shifting both positions leaves q . k unchanged."""
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8, generator=gen, dtype=torch.float64), torch.randn(1, 1, 1, 8, generator=gen, dtype=torch.float64)
    seq_q, seq_k = q.expand(1, 1, 10, 8), k.expand(1, 1, 10, 8)
    rq, rk = sol["apply_rotary"](seq_q, 100.0), sol["apply_rotary"](seq_k, 100.0)
    assert torch.allclose((rq[..., 5, :] * rk[..., 2, :]).sum(), (rq[..., 7, :] * rk[..., 4, :]).sum())


# --- RMSNorm, rotary, SwiGLU --------------------------------------------------------------------

def layer_norm_like(x, weight, eps=1e-6):
    x = x - x.mean(-1, keepdim=True)
    return weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def eps_outside(x, weight, eps=1e-6):
    return weight * x / (x.pow(2).mean(-1, keepdim=True).sqrt() + eps)


def no_gain(x, weight, eps=1e-6):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def in_place_norm(x, weight, eps=1e-6):
    return x.mul_(weight / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps))


@pytest.mark.parametrize("fn, words", [
    (layer_norm_like, "subtracts the mean"), (eps_outside, "INSIDE the square root"), (no_gain, "gain"),
    (in_place_norm, "in place"),
])
def test_rms_norm_mistakes_are_named(fn, words):
    with pytest.raises(CheckError, match=words):
        checks.check_rms_norm(fn)


def _rotary(**kwargs):
    return lambda x, theta=10000.0: checks._rotary(x, theta, **kwargs)


@pytest.mark.parametrize("kwargs, words", [
    (dict(interleaved=True), "neighbouring pairs"), (dict(start=1), "positions start at 0"),
    (dict(inverse=True), "wrong way"), (dict(half_exponent=True), "frequencies"),
])
def test_rotary_mistakes_are_named(kwargs, words):
    with pytest.raises(CheckError, match=words):
        checks.check_rotary(_rotary(**kwargs))


def test_rotary_on_the_wrong_axis_fails():
    def along_heads(x, theta=10000.0):  # treats the head axis as the positions
        return checks._rotary(x.transpose(1, 2), theta).transpose(1, 2)
    with pytest.raises(CheckError):
        checks.check_rotary(along_heads)


@pytest.mark.parametrize("fn, words", [
    (lambda x, g, u, d: (F.silu(x @ u.T) * (x @ g.T)) @ d.T, "GATE branch"),
    (lambda x, g, u, d: (F.gelu(x @ g.T) * (x @ u.T)) @ d.T, "not GELU"),
    (lambda x, g, u, d: F.silu(x @ g.T) @ d.T, "up branch is missing"),
])
def test_swiglu_mistakes_are_named(fn, words):
    with pytest.raises(CheckError, match=words):
        checks.check_swiglu(fn)


# --- The block --------------------------------------------------------------------------------------

def _block(**kwargs):
    return lambda x, w, n_heads, theta=10000.0, eps=1e-6: checks.reference_block(x, w, n_heads, theta, eps, **kwargs)


@pytest.mark.parametrize("kwargs, words", [
    (dict(causal=False), "no causal mask"), (dict(rope=False), "rotary embedding is missing"),
    (dict(rope_values=True), "values too"), (dict(post_norm=True), "post-norm"),
    (dict(scale_by_model=True), "ONE head"),
])
def test_block_mistakes_are_named(kwargs, words):
    with pytest.raises(CheckError, match=words):
        checks.check_llama_block(_block(**kwargs))


def test_block_with_default_theta_and_eps_only_fails():
    """A block that ignores the theta and eps it is given fails on the model with theta=500, eps=1e-5."""
    with pytest.raises(CheckError):
        checks.check_llama_block(lambda x, w, n_heads, theta=10000.0, eps=1e-6: checks.reference_block(x, w, n_heads))


def test_block_sharing_one_layers_weights_fails_on_the_logits(sol):
    first = {}

    def stuck(x, w, n_heads, theta=10000.0, eps=1e-6):
        first.setdefault("w", w)
        return sol["llama_block"](x, first["w"], n_heads, theta, eps)
    with pytest.raises(CheckError, match="logits"):
        checks.check_llama_block(stuck)
