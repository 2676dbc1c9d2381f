"""course_utils.lora: layer shapes, parameter counts against PEFT, memory accounting, the module's task."""
import copy
import warnings

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from course_utils.lora import (feeling_sentences, feeling_task, full_finetune_bytes, in_out_features,
                               is_fan_in_fan_out, lora_finetune_bytes, module_bytes, trainable_parameters)
from course_utils.pretrain import build_gpt2


def test_in_out_features_for_linear_and_conv1d():
    assert in_out_features(nn.Linear(8, 3)) == (8, 3)
    assert in_out_features(Conv1D(3, 8)) == (8, 3)  # Conv1D(nf=out, nx=in) stores (in, out)
    assert is_fan_in_fan_out(Conv1D(3, 8)) and not is_fan_in_fan_out(nn.Linear(8, 3))
    with pytest.raises(TypeError, match="nn.Linear or a GPT-2 Conv1D"):
        in_out_features(nn.Embedding(4, 2))


def test_trainable_parameters_match_peft():
    from peft import LoraConfig, get_peft_model

    model = build_gpt2(vocab_size=40, n_layer=2, n_head=2, n_embd=32, block_size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True))
    assert trainable_parameters(peft_model) == tuple(peft_model.get_nb_trainable_parameters())
    assert trainable_parameters(model) == (sum(p.numel() for p in model.parameters()),) * 2  # tied weights once


def test_memory_accounting():
    assert full_finetune_bytes(7e9) == 16 * 7e9  # bf16 weight + bf16 grad + fp32 master + Adam m, v
    assert lora_finetune_bytes(100, 10) == 100 * 2 + 10 * 16
    with pytest.raises(ValueError, match="n_trainable"):
        lora_finetune_bytes(10, 20)
    with pytest.raises(ValueError, match="non-negative"):
        full_finetune_bytes(-1)


def test_module_bytes_counts_nf4_weights_and_their_constants():
    import bitsandbytes as bnb

    linear = nn.Linear(128, 64, bias=False)
    assert module_bytes(linear) == 128 * 64 * 4
    for double_quant, expected in ((False, 128 * 64 // 2 + 4 * 128 * 64 // 64),
                                   (True, 128 * 64 // 2 + 128 * 64 // 64 + 4 + 4)):
        q = bnb.nn.Linear4bit(128, 64, bias=False, quant_type="nf4", compress_statistics=double_quant)
        q.weight = bnb.nn.Params4bit(linear.weight.data.clone(), requires_grad=False, quant_type="nf4",
                                     compress_statistics=double_quant)
        q.weight = q.weight._quantize("cpu") if hasattr(q.weight, "_quantize") else q.weight
        assert module_bytes(q) == expected, double_quant


def test_feeling_task_is_disjoint_and_masked_once():
    from course_utils.world.zoo import load_pretrained

    _, tokenizer = load_pretrained("tiny-bert", progress=False)
    train_data, eval_batch = feeling_task(tokenizer, n_stories=300, n_eval=50)
    train_texts = set(tokenizer.batch_decode([e["input_ids"] for e in train_data], skip_special_tokens=True))
    masked = eval_batch["labels"] != -100
    originals = torch.where(masked, eval_batch["labels"], eval_batch["input_ids"])  # undo the masking
    eval_texts = set(tokenizer.batch_decode(originals, skip_special_tokens=True))
    assert train_texts and eval_texts and not train_texts & eval_texts
    assert all(" because the " in t for t in feeling_sentences(300, seed=7))
    again = feeling_task(tokenizer, n_stories=300, n_eval=50)[1]
    assert torch.equal(again["labels"], eval_batch["labels"])  # the same masked positions every time
    assert (eval_batch["labels"] != -100).any()
    with pytest.raises(ValueError, match="positive int"):
        feeling_sentences(0)
