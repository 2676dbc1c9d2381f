"""Helpers that lecture and lab 07 share: layer shapes, trainable counts and memory accounting.

GPT-2 stores its projections as ``Conv1D`` layers whose weight is (in, out), the transpose of
``nn.Linear``'s (out, in); PEFT calls this ``fan_in_fan_out``. ``in_out_features`` hides the
difference so that a LoRA layer can wrap either kind.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

__all__ = ["in_out_features", "is_fan_in_fan_out", "trainable_parameters", "full_finetune_bytes", "feeling_sentences",
           "feeling_task",
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


# ---------------------------------------------------------------- the fine-tuning task of module 07

def feeling_sentences(n_stories: int, seed: int = 0) -> list[str]:
    """The distinct "X was <feeling> because the <animal> ..." sentences of ``make_stories(n_stories, seed)``, sorted."""
    from .world.corpus import make_stories

    if not isinstance(n_stories, int) or n_stories < 1:
        raise ValueError(f"n_stories must be a positive int, got {n_stories!r}")
    return sorted({s.strip() + " ." for story in make_stories(n_stories, seed=seed)
                   for s, fact in zip(story.text.split(" ."), story.facts) if fact["kind"] == "feeling"})


def feeling_task(tokenizer, n_stories: int = 2000, n_eval: int = 256, seed: int = 7) -> tuple[list[dict], dict]:
    """Module 07's fine-tuning task: encoded feeling sentences to train on, and one fixed masked batch held out.

    The held-out sentences come from another seed and share no sentence with the training ones; the
    batch is masked once (15%, seeded), so every method is scored on the same positions.
    """
    from transformers import DataCollatorForLanguageModeling

    train_texts = feeling_sentences(n_stories, seed)
    seen = set(train_texts)
    eval_texts = [t for t in feeling_sentences(n_stories, seed + 1) if t not in seen][:n_eval]
    if not eval_texts:
        raise ValueError("no held-out sentence left: use more stories")
    encode = lambda texts: [{"input_ids": ids} for ids in tokenizer(texts)["input_ids"]]  # noqa: E731
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    eval_batch = collator(encode(eval_texts))
    torch.random.set_rng_state(state)
    return encode(train_texts), eval_batch
