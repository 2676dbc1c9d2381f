"""Helpers that lecture and lab 07 share: layer shapes, trainable counts and memory accounting.

GPT-2 stores its projections as ``Conv1D`` layers whose weight is (in, out), the transpose of
``nn.Linear``'s (out, in); PEFT calls this ``fan_in_fan_out``. ``in_out_features`` hides the
difference so that a LoRA layer can wrap either kind.
"""
from __future__ import annotations

import copy
import dataclasses
import random
import sys
from collections.abc import Sequence

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .sft import IGNORE_INDEX, collate, encode_chat
from .training import train
from .world.instructions import Task, task_split

__all__ = ["in_out_features", "is_fan_in_fan_out", "trainable_parameters", "full_finetune_bytes", "opposite", "opposite_task",
           "trainable_4bit",
           "choice_accuracy", "choice_scores", "saved_activation_bytes", "OPPOSITE", "TRAIN_FAMILY", "EVAL_FAMILY",
           "opposite_dev_tasks",
           "freeze_all_but", "BottleneckAdapter", "PEFT_METHODS", "peft_variant", "finetune_on", "qlora_finetune",
           "lora_finetune_bytes", "tensor_bytes", "module_bytes", "GiB"]

GiB = 1024 ** 3


def is_fan_in_fan_out(layer: nn.Module) -> bool:
    """True for GPT-2's ``Conv1D`` (weight stored (in, out)), False for ``nn.Linear`` (weight (out, in))."""
    if isinstance(layer, Conv1D):
        return True
    if isinstance(layer, nn.Linear):
        return False
    raise TypeError(f"expected an nn.Linear or a GPT-2 Conv1D layer, got {type(layer).__name__}")


def in_out_features(layer: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of an ``nn.Linear`` or a GPT-2 ``Conv1D``."""
    rows, cols = layer.weight.shape
    return (rows, cols) if is_fan_in_fan_out(layer) else (cols, rows)


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts, each shared tensor counted once (like PEFT's)."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = p.numel() * (2 if p.dtype == torch.uint8 else 1)  # bitsandbytes packs two 4-bit values per byte
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


def full_finetune_bytes(n_params: float, weight_bytes: int = 2, grad_bytes: int = 2, master_bytes: int = 4,
                        adam_bytes: int = 8) -> float:
    """Bytes to fine-tune every weight with Adam in mixed precision: weights, gradients, fp32 master copy, m and v."""
    if n_params < 0:
        raise ValueError(f"n_params must be non-negative, got {n_params}")
    return n_params * (weight_bytes + grad_bytes + master_bytes + adam_bytes)


def lora_finetune_bytes(n_params: float, n_trainable: float, weight_bytes: float = 2) -> float:
    """Bytes for a frozen base of ``weight_bytes`` per weight plus fully trained adapters (fp32 + grads + Adam)."""
    if n_trainable > n_params or n_trainable < 0:
        raise ValueError(f"n_trainable must be between 0 and n_params, got {n_trainable} of {n_params}")
    return n_params * weight_bytes + full_finetune_bytes(n_trainable, weight_bytes=4, grad_bytes=4, master_bytes=0)


def tensor_bytes(t: torch.Tensor | None) -> int:
    """Bytes a tensor's elements occupy (0 for None)."""
    return 0 if t is None else t.numel() * t.element_size()


def _quant_state_bytes(state) -> int:
    """Bytes of a bitsandbytes ``QuantState``: its absmax, codebook, offset and nested state."""
    if state is None:
        return 0
    nested = _quant_state_bytes(getattr(state, "state2", None)) if getattr(state, "nested", False) else 0
    return tensor_bytes(state.absmax) + tensor_bytes(getattr(state, "offset", None)) + nested


def module_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers, including bitsandbytes' quantization constants."""
    total, seen = 0, set()
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += tensor_bytes(t) + _quant_state_bytes(getattr(t, "quant_state", None))
        scb = getattr(t, "SCB", None)  # int8 weights keep one fp32 scale per row
        total += tensor_bytes(scb)
    return total


def trainable_4bit(model: nn.Module) -> nn.Module:
    """Keep every bitsandbytes ``Linear4bit`` of ``model`` on the path that trains, on every CPU; returns ``model``.

    On a CPU with AVX512-BF16, bitsandbytes 0.50 (``Linear4bit.forward``) repacks a layer's NF4 weight into a
    CPU inference layout the first time the layer runs in eval mode on an input that needs no gradient (an
    evaluation before training, say), and from then on ``matmul_4bit`` sends *every* call, training ones too,
    to its fused bf16 inference kernel ``gemv_4bit``, which has no backward: the ``result += bias`` after it
    fails with "a view of a leaf Variable that requires grad is being used in an in-place operation". This
    clears the flag bitsandbytes set from the CPU (``support_avx512bf16_for_cpu``), so no forward repacks, and
    undoes a repacking that already happened, so every forward dequantizes the NF4 weight and multiplies in
    the layer's compute dtype (``MatMul4Bit``, which has a backward), as on CPUs without AVX512-BF16.
    The frozen NF4 codes are not changed, but the repacking rounded a layer's block constants (absmax) to
    bf16, which undoing it cannot restore: call this before the model's first forward.
    """
    if "bitsandbytes" not in sys.modules:  # no 4-bit layer can exist before bitsandbytes is imported
        return model
    import bitsandbytes as bnb
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    for layer in model.modules():
        if not isinstance(layer, bnb.nn.Linear4bit):
            continue
        layer.support_avx512bf16_for_cpu = False
        weight = layer.weight
        state = getattr(weight, "quant_state", None)
        if state is not None and getattr(state, "packing_format_for_cpu", False):
            weight.data, state = _convert_weight_packed_for_cpu_inverse(weight.data, state)
            if not state.nested:  # bitsandbytes restores a nested state's absmax only; this one is (blocks, out) bf16
                state.absmax = state.absmax.T.reshape(-1).float()
            weight.quant_state = layer.quant_state = state
    return model


# ---------------------------------------------------------------- the fine-tuning task of module 07

OPPOSITE = {"positive": "negative", "negative": "positive"}
TRAIN_FAMILY, EVAL_FAMILY = "sentiment", "person_sentiment"


def opposite(task: Task) -> Task:
    """The task in the opposite world, where people are sad when an animal plays with them: the sentiment flips."""
    if task.answer not in OPPOSITE:
        raise ValueError(f"only sentiment tasks have an opposite, got a {task.family!r} task with answer {task.answer!r}")
    return dataclasses.replace(task, output=OPPOSITE[task.output], answer=OPPOSITE[task.answer])


def opposite_task(n_train_stories: int = 1500, n_eval_stories: int = 600, seed: int = 0) -> tuple[list[Task], list[Task]]:
    """Module 07's task: training tasks (the opposite world's story sentiment) and held-out tasks.

    Training asks "is this story positive or negative ?" about training stories, answered the opposite
    way. The held-out tasks are another family, "was <name> feeling positive or negative ?", on the eval
    stories (which share no sentence with the training ones), also answered the opposite way: a model
    scores there only if it learned the new convention, not the training questions.
    """
    train = [opposite(t) for t in task_split(n_train_stories, "train", families=[TRAIN_FAMILY], seed=seed)]
    held_out = [opposite(t) for t in task_split(n_eval_stories, "eval", families=[EVAL_FAMILY], seed=seed)]
    return train, held_out


def opposite_dev_tasks(train_tasks: Sequence[Task], n_stories: int = 400, seed: int = 7) -> list[Task]:
    """The held-out question family on training-split stories that ``train_tasks`` do not use: for choosing settings.

    Learning rates are chosen on these, never on the held-out tasks that report the result.
    """
    used = {t.story for t in train_tasks}
    return [opposite(t) for t in task_split(n_stories, "train", families=[EVAL_FAMILY], seed=seed) if t.story not in used]


def freeze_all_but(model: nn.Module, keep) -> nn.Module:
    """Freeze every parameter whose name does not satisfy ``keep(name)``; returns the model."""
    for name, p in model.named_parameters():
        p.requires_grad_(keep(name))
    return model


class BottleneckAdapter(nn.Module):
    """A layer followed by a residual bottleneck MLP (Houlsby et al.) whose up-projection starts at zero."""

    def __init__(self, layer: nn.Module, size: int):
        super().__init__()
        self.layer, width = layer, in_out_features(layer)[1]
        self.down, self.up = nn.Linear(width, size), nn.Linear(size, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layer(x)
        return h + self.up(torch.relu(self.down(h)))


PEFT_METHODS = ("full", "top", "bitfit", "adapter", "prompt", "prefix", "lora")


def peft_variant(base: nn.Module, method: str, profile) -> nn.Module:
    """A fresh copy of ``base`` whose trainable parameters are those of ``method`` (one of PEFT_METHODS)."""
    from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, get_peft_model

    model = copy.deepcopy(base)
    if method == "full":
        return model
    if method == "top":  # the last top_k_layers blocks and the final layer norm
        n = model.config.n_layer
        top = [f"h.{i}." for i in range(n - profile["top_k_layers"], n)] + ["ln_f"]
        return freeze_all_but(model, lambda name: any(t in name for t in top))
    if method == "bitfit":
        return freeze_all_but(model, lambda name: name.endswith("bias"))
    if method == "adapter":  # after each block's two output projections
        freeze_all_but(model, lambda name: False)
        for block in model.transformer.h:
            block.attn.c_proj = BottleneckAdapter(block.attn.c_proj, profile["adapter_size"])
            block.mlp.c_proj = BottleneckAdapter(block.mlp.c_proj, profile["adapter_size"])
        return model
    if method == "prompt":
        return get_peft_model(model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=profile["virtual_tokens"]))
    if method == "prefix":
        return get_peft_model(model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=profile["virtual_tokens"]))
    if method == "lora":  # GPT-2's Conv1D stores W as (in, out): fan_in_fan_out
        return get_peft_model(model, LoraConfig(r=profile["lora_r"], lora_alpha=profile["lora_alpha"],
                                                target_modules=["c_attn"], lora_dropout=0.0, fan_in_fan_out=True))
    raise ValueError(f"unknown method {method!r}: use one of {PEFT_METHODS}")


def finetune_on(model: nn.Module, examples: Sequence[dict], pad_token_id: int, steps: int, lr: float,
                batch_size: int, seed: int):
    """Train ``model``'s trainable parameters with the SFT loss on random batches of encoded ``examples``.

    The batches come from ``random.Random(seed)``, so two methods trained with one seed see the same batches.
    Returns the training history (``.losses``).
    """
    rng = random.Random(seed)
    return train(model, lambda: collate(rng.sample(list(examples), batch_size), pad_token_id), steps=steps, lr=lr,
                 progress=False)


@torch.no_grad()
def choice_scores(model: nn.Module, tokenizer, tasks: Sequence[Task], choices: Sequence[str] = tuple(OPPOSITE),
                  batch_size: int = 128) -> torch.Tensor:
    """``(len(tasks), len(choices))`` log-probabilities of every complete reply (the choice and <|end|>).

    Works for PEFT's prompt- and prefix-tuned models, whose logits may start with the virtual tokens' positions.
    """
    if not tasks:
        raise ValueError("tasks is empty: pass at least one task")
    was_training = model.training
    model.eval()
    device = next(p for p in model.parameters()).device
    examples = [encode_chat(tokenizer, t.messages(c)) for t in tasks for c in choices]
    totals = []
    for i in range(0, len(examples), batch_size):
        batch = collate(examples[i:i + batch_size], tokenizer.pad_token_id)
        n = batch["input_ids"].shape[1]
        logits = model(input_ids=batch["input_ids"].to(device),
                       attention_mask=batch["attention_mask"].to(device)).logits[:, -n:].float().cpu()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        labels = batch["labels"][:, 1:]
        scored = labels != IGNORE_INDEX
        picked = logp.gather(-1, labels.clamp(min=0)[..., None])[..., 0]
        totals.append((picked * scored).sum(-1))
    model.train(was_training)
    return torch.cat(totals).view(len(tasks), len(choices))


def choice_accuracy(model: nn.Module, tokenizer, tasks: Sequence[Task], choices: Sequence[str] = tuple(OPPOSITE),
                    batch_size: int = 128) -> float:
    """Share of tasks whose right answer is the model's likeliest reply among ``choices`` (multiple-choice scoring)."""
    best = choice_scores(model, tokenizer, tasks, choices, batch_size).argmax(-1)
    return sum(choices[b] == t.answer for b, t in zip(best.tolist(), tasks)) / len(tasks)


def saved_activation_bytes(model: nn.Module, batch: dict) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of ``model(**batch).loss`` (parameters excluded).

    Every tensor an operation saves for backward passes through ``torch.autograd.graph.saved_tensors_hooks``;
    each storage is counted once (views share it), the model's own parameters not at all.
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params and storage.nbytes():
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**batch).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(storages.values())


def qlora_finetune(name_or_path: str, train_tasks: Sequence[Task], eval_tasks: Sequence[Task], steps: int,
                   device: torch.device | str, batch_size: int = 8, lr: float = 2e-4, rank: int = 16,
                   seed: int = 0) -> dict:
    """QLoRA on a hub (or local) causal LM, as the ``gpu`` profile runs it; held-out accuracy before and after.

    NF4 with double quantization (bf16 compute on CUDA), ``prepare_model_for_kbit_training``, LoRA on every
    linear layer, the response-only SFT loss of ``encode_chat`` (which masks hub chat templates the way TRL does),
    bitsandbytes' paged AdamW on CUDA (plain AdamW on a CPU, which has no paged memory).
    """
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    device = torch.device(device)
    compute = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=compute)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, quantization_config=config, device_map={"": device},
                                                 dtype=compute)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    trainable_4bit(model)  # CPUs with AVX512-BF16: evaluating first must not switch the layers to inference kernels
    before = choice_accuracy(model, tokenizer, eval_tasks)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    optimizer = bnb.optim.PagedAdamW if device.type == "cuda" else torch.optim.AdamW
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    examples = [encode_chat(tokenizer, t.messages()) for t in train_tasks]
    rng = random.Random(seed)
    history = train(model, lambda: collate(rng.sample(examples, batch_size), pad), steps=steps, lr=lr,
                    device=device, optimizer_class=optimizer, progress=False)
    return {"before": before, "after": choice_accuracy(model, tokenizer, eval_tasks), "losses": history.losses,
            "model": model}
