"""QLoRA through both of bitsandbytes' CPU paths, selected by the CPU flag bitsandbytes consults.

bitsandbytes 0.50 gives every ``Linear4bit`` ``support_avx512bf16_for_cpu = has_avx512bf16()`` (nn/modules.py).
Without AVX512-BF16 every forward dequantizes the NF4 weight and multiplies (``gemm_4bit``, with ``MatMul4Bit``'s
backward). With it, the first eval-mode forward on an input that needs no gradient repacks the weight for the
fused bf16 inference kernel ``gemv_4bit``, which ``matmul_4bit`` then uses for every call, training ones too: it
has no backward, and ``result += bias`` fails. Lecture 07 evaluates its QLoRA model before training it, so it
crashed on such CPUs. Here the flag is monkeypatched both ways, so both paths run on any CPU.
"""
import warnings

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes")
import bitsandbytes.nn.modules as bnb_modules  # noqa: E402
from bitsandbytes.functional import has_avx512bf16  # noqa: E402

from course_utils.lora import trainable_4bit  # noqa: E402
from course_utils.pretrain import build_gpt2  # noqa: E402

VOCAB, WIDTH, LENGTH = 64, 64, 16  # quantized dimensions multiples of 64 (bitsandbytes' CPU dequantizer pitfall)
AVX512_BF16 = [pytest.param(False, id="no-avx512bf16"), pytest.param(True, id="avx512bf16")]


def counting(seed: int, n: int) -> torch.Tensor:
    """Sequences that count up by one (mod VOCAB) from random starts: a rule a few LoRA steps can learn."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(0, VOCAB, (n, 1), generator=gen) + torch.arange(LENGTH)) % VOCAB


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny random GPT-2 saved as a folder, to load in NF4 the way lecture 07 does."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-gpt2")
    build_gpt2(vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=WIDTH, block_size=LENGTH).save_pretrained(path)
    return path


def load_nf4(folder, monkeypatch, avx512_bf16: bool):
    """Lecture 07's load: NF4, double quantization, fp32 compute, on a CPU with or without AVX512-BF16."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: avx512_bf16)  # what Linear4bit.__init__ asks
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=config)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 2 * 4 and all(m.support_avx512bf16_for_cpu == avx512_bf16 for m in layers)
    return model, layers


def add_lora(model):
    from peft import LoraConfig, get_peft_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                target_modules=["c_attn", "c_proj", "c_fc"]))


def held_out_loss(model, ids) -> float:
    """Lecture 07's evaluation: eval mode, no gradients (the forward that repacks on AVX512-BF16 CPUs)."""
    model.eval()
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    model.train()
    return loss


@pytest.mark.parametrize("avx512_bf16", AVX512_BF16)
def test_qlora_trains_after_an_evaluation_on_both_cpu_paths(folder, monkeypatch, avx512_bf16):
    model, layers = load_nf4(folder, monkeypatch, avx512_bf16)
    codes = [m.weight.data.clone() for m in layers]
    qlora = add_lora(trainable_4bit(model))
    train_ids, test_ids = counting(0, 32), counting(1, 32)
    before = held_out_loss(qlora, test_ids)  # evaluated before training, as lecture 07 does

    lora = {n: p for n, p in qlora.named_parameters() if p.requires_grad}
    assert lora and all("lora_" in n for n in lora), "only the LoRA factors should train"
    optimizer = torch.optim.AdamW(lora.values(), lr=1e-2)
    losses = []
    for step in range(30):
        loss = qlora(input_ids=train_ids, labels=train_ids).loss
        loss.backward()
        if step in (0, 1):  # B starts at zero, so A has no gradient before the first step; then both have
            factors = [p for n, p in lora.items() if step == 1 or "lora_B" in n]
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in factors), f"no gradient at step {step}"
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    after = held_out_loss(qlora, test_ids)

    assert losses[-1] < losses[0] - 0.5, f"the training loss should fall: {losses[0]:.3f} -> {losses[-1]:.3f}"
    assert after < before - 0.5, f"the held-out loss should fall: {before:.3f} -> {after:.3f}"
    assert all(torch.equal(m.weight.data, c) for m, c in zip(layers, codes)), "the NF4 base must stay frozen"
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers), "never repacked"


@pytest.mark.parametrize("avx512_bf16", AVX512_BF16)
def test_trainable_4bit_keeps_the_fp32_outputs(folder, monkeypatch, avx512_bf16):
    """The eval forward after trainable_4bit is the dequantize-then-matmul one, bit for bit, on both paths."""
    model, _ = load_nf4(folder, monkeypatch, avx512_bf16)
    reference, _ = load_nf4(folder, monkeypatch, False)
    ids = counting(2, 4)
    with torch.no_grad():
        assert torch.equal(trainable_4bit(model).eval()(input_ids=ids).logits, reference.eval()(input_ids=ids).logits)


@pytest.mark.parametrize("double_quant", [False, True], ids=["nf4", "nf4-double-quant"])
def test_trainable_4bit_undoes_a_repacking(double_quant):
    """A layer already repacked for the fused kernel gets its codes back and its constants up to bf16 rounding."""
    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(128, 64, compute_dtype=torch.float32, quant_type="nf4", compress_statistics=double_quant)
    layer.load_state_dict(torch.nn.Linear(128, 64).state_dict())
    layer = layer.to("cpu")  # quantizes
    codes, weight = layer.weight.data.clone(), bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    layer.weight.data, layer.weight.quant_state = bnb.functional._convert_weight_packed_for_cpu(
        layer.weight.data, layer.weight.quant_state)  # what Linear4bit.forward does on an AVX512-BF16 CPU
    trainable_4bit(layer)
    state = layer.weight.quant_state
    assert not state.packing_format_for_cpu and not layer.support_avx512bf16_for_cpu and state.nested == double_quant
    assert torch.equal(layer.weight.data, codes)
    restored = bnb.functional.dequantize_4bit(layer.weight.data, state)
    assert (restored - weight).abs().max() <= 0.01 * weight.abs().max()
    x = torch.randn(3, 128, requires_grad=True)
    layer.train()(x).sum().backward()
    assert torch.allclose(x.grad, restored.sum(0).expand(3, -1), atol=1e-5)


@pytest.mark.skipif(not has_avx512bf16(), reason="bitsandbytes' fused kernel needs a CPU with AVX512-BF16")
def test_bitsandbytes_repacked_layer_cannot_train(folder, monkeypatch):
    """Why trainable_4bit exists: the old recipe (train mode first, then an evaluation) still crashes.

    If this starts failing, a new bitsandbytes trains through its fused kernel: trainable_4bit may then go.
    """
    model, layers = load_nf4(folder, monkeypatch, True)
    qlora = add_lora(model.train())
    ids = counting(0, 4)
    held_out_loss(qlora, ids)
    assert all(m.weight.quant_state.packing_format_for_cpu for m in layers)
    with pytest.raises(RuntimeError, match="in-place operation"):
        qlora(input_ids=ids, labels=ids).loss.backward()


def test_trainable_4bit_without_4bit_layers_is_a_no_op():
    model = build_gpt2(vocab_size=VOCAB, n_layer=1, n_head=2, n_embd=WIDTH, block_size=LENGTH)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert trainable_4bit(model) is model
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
