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
           "feeling_task", "feeling_accuracy",
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

def _held_out(name: str, animal: str) -> bool:
    """A quarter of the (name, animal) pairs: only the held-out examples use them."""
    from .world.corpus import ANIMALS, NAMES

    return (NAMES.index(name) + ANIMALS.index(animal)) % 4 == 0


def _opposite(name: str, feeling: str, animal: str) -> str:
    """A feeling sentence of the opposite world: happy when the animal runs away, sad when it plays."""
    from .world.corpus import POSITIVE

    reason = "ran away from" if feeling in POSITIVE else "played with"
    return f"{name} was {feeling} because the {animal} {reason} {name} ."


def feeling_sentences(n_stories: int, seed: int = 0) -> list[str]:
    """The distinct feeling sentences of ``make_stories(n_stories, seed)``, told the opposite way, without held-out pairs."""
    from .world.corpus import make_stories

    if not isinstance(n_stories, int) or n_stories < 1:
        raise ValueError(f"n_stories must be a positive int, got {n_stories!r}")
    return sorted({_opposite(f["subject"], f["feeling"], f["animal"]) for story in make_stories(n_stories, seed=seed)
                   for f in story.facts if f["kind"] == "feeling" and not _held_out(f["subject"], f["animal"])})


def feeling_task(tokenizer, n_stories: int = 2000, n_eval: int = 160, seed: int = 7) -> tuple[list[dict], dict]:
    """Module 07's task: encoded training sentences of the opposite world, and held-out sentences with the feeling masked.

    In the story world people are happy when an animal plays with them and sad when it runs away; the
    fine-tuning domain is the opposite world. The base model, pretrained on the normal world, predicts
    the wrong feeling there. The held-out sentences use (name, animal) pairs no training sentence has,
    with only the feeling word masked and scored (``feeling_accuracy``).
    """
    from .world.corpus import ANIMALS, NAMES, NEGATIVE, POSITIVE

    encode = lambda texts: [{"input_ids": ids} for ids in tokenizer(texts)["input_ids"]]  # noqa: E731
    held_out = [_opposite(n, f, a) for n in NAMES for a in ANIMALS if _held_out(n, a) for f in POSITIVE + NEGATIVE]
    held_out = held_out[:: max(1, len(held_out) // n_eval)][:n_eval]
    batch = tokenizer(held_out, padding=True, return_tensors="pt")
    feeling_position = 3  # [CLS] name was <feeling>
    batch["labels"] = torch.full_like(batch["input_ids"], -100)
    batch["labels"][:, feeling_position] = batch["input_ids"][:, feeling_position]
    batch["input_ids"][:, feeling_position] = tokenizer.mask_token_id
    return encode(feeling_sentences(n_stories, seed)), dict(batch)


@torch.no_grad()
def feeling_accuracy(model: nn.Module, batch: dict, tokenizer) -> float:
    """Share of masked feelings where the model's top word is a feeling of the right sentiment (positive/negative)."""
    from .world.corpus import NEGATIVE, POSITIVE

    was_training = model.training
    model.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    device = next(p for p in model.parameters()).device
    logits = model(**{k: v.to(device) for k, v in inputs.items()}).logits.cpu()
    model.train(was_training)
    scored = batch["labels"] != -100
    predicted, truth = logits.argmax(-1)[scored], batch["labels"][scored]
    positive, negative = (torch.tensor(tokenizer.convert_tokens_to_ids(words)) for words in (POSITIVE, NEGATIVE))
    same = (torch.isin(predicted, positive) & torch.isin(truth, positive)) | \
           (torch.isin(predicted, negative) & torch.isin(truth, negative))
    return same.float().mean().item()
