"""The throughput benchmark compares against a nanoGPT re-implementation: check that the reference
really is the same network as the course's GPT-2, so its timings compare like with like."""
import importlib.util
from pathlib import Path

import pytest
import torch

from course_utils.pretrain import build_gpt2

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "pretrain_throughput.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("pretrain_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def copy_into_gpt2(nano, gpt2):
    """Copy the reference's weights into transformers' GPT-2 (Conv1D stores Linear weights transposed)."""
    state = {"transformer.wte.weight": nano.wte.weight, "transformer.wpe.weight": nano.wpe.weight,
             "transformer.ln_f.weight": nano.ln_f.weight}
    for i, block in enumerate(nano.h):
        for name in ("ln_1", "ln_2"):
            state[f"transformer.h.{i}.{name}.weight"] = getattr(block, name).weight
        for name, layer in (("attn.c_attn", block.attn.c_attn), ("attn.c_proj", block.attn.c_proj),
                            ("mlp.c_fc", block.mlp.c_fc), ("mlp.c_proj", block.mlp.c_proj)):
            state[f"transformer.h.{i}.{name}.weight"] = layer.weight.T
    for key, module in list(nano.named_modules()):
        if getattr(module, "bias", None) is not None:
            state[f"transformer.{key}.bias"] = module.bias
    with torch.no_grad():
        own = gpt2.state_dict()
        for key, value in state.items():
            own[key].copy_(value)
        for key in own:  # biases the reference lacks (bias=False) are zero
            if key.endswith(".bias") and key not in state:
                own[key].zero_()


@pytest.mark.parametrize("bias", [False, True])
def test_reference_matches_transformers_gpt2(bias):
    bench = load_benchmark()
    torch.manual_seed(0)
    nano = bench.NanoGPT(vocab_size=31, block_size=16, n_layer=2, n_head=4, n_embd=32, bias=bias).eval()
    with torch.no_grad():  # large random weights (not the 0.02 init) so that any difference shows
        for p in nano.parameters():
            p.normal_(0.0, 0.5)
    gpt2 = build_gpt2(31, n_layer=2, n_head=4, n_embd=32, block_size=16).eval()
    copy_into_gpt2(nano, gpt2)
    x, y = torch.randint(0, 31, (3, 16)), torch.randint(0, 31, (3, 16))
    logits, loss = nano(x, y)
    expected = gpt2(input_ids=x).logits
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-4)
    n_params = sum(p.numel() for p in nano.parameters())
    assert (n_params == sum(p.numel() for p in gpt2.parameters())) == bias  # only bias=True has GPT-2's layout


def test_reference_learning_rate_follows_nanogpt():
    bench = load_benchmark()
    assert bench.nanogpt_lr(0, 2000) == pytest.approx(bench.LR / (bench.WARMUP + 1))
    assert bench.nanogpt_lr(bench.WARMUP, 2000) == pytest.approx(bench.LR)
    assert bench.nanogpt_lr(2000, 2000) == pytest.approx(bench.MIN_LR)
