"""Helpers that lecture and lab 07 share: layer shapes, trainable counts and memory accounting.

GPT-2 stores its projections as ``Conv1D`` layers whose weight is (in, out), the transpose of
``nn.Linear``'s (out, in); PEFT calls this ``fan_in_fan_out``. ``in_out_features`` hides the
difference so that a LoRA layer can wrap either kind.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

__all__ = ["in_out_features", "is_fan_in_fan_out", "trainable_parameters", "full_finetune_bytes", "feeling_task",
           "continuation_logprob", "choice_accuracy",
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

def _sentences(story) -> list[tuple[str, dict]]:
    """The (sentence, fact) pairs of a corpus story (every sentence ends with ' .')."""
    parts = [s.strip() + " ." for s in story.text.split(" .") if s.strip()]
    if len(parts) != len(story.facts):
        raise ValueError(f"could not split story {story.text!r} into its {len(story.facts)} sentences")
    return list(zip(parts, story.facts))


def _held_out(name: str, animal: str) -> bool:
    """A quarter of the (name, animal) pairs never appear in feeling sentences used for training."""
    from .world.corpus import ANIMALS, NAMES

    return (NAMES.index(name) + ANIMALS.index(animal)) % 4 == 0


def feeling_task(n_stories: int, seed: int = 0) -> tuple[str, list[str], list[tuple[str, str, str]]]:
    """Pretraining text without feelings, fine-tuning feeling sentences, and held-out choice examples.

    The base model is pretrained on every sentence kind but "X was <feeling> because the <animal> ...";
    fine-tuning teaches those sentences, and the score asks whether the model continues a positive
    feeling with "played" and a negative one with "ran" (chance: 50%). The held-out examples use
    (name, animal) pairs that no fine-tuning sentence contains, so they share no sentence with it.
    """
    from .world.corpus import ANIMALS, NAMES, NEGATIVE, POSITIVE, make_stories

    if not isinstance(n_stories, int) or n_stories < 10:
        raise ValueError(f"n_stories must be an int of at least 10, got {n_stories!r}")
    lines, feelings = [], []
    for story in make_stories(n_stories, seed=seed):
        pairs = _sentences(story)
        lines.append(" ".join(s for s, f in pairs if f["kind"] != "feeling"))
        feelings += [s for s, f in pairs if f["kind"] == "feeling" and not _held_out(f["subject"], f["animal"])]
    examples = []
    for name in NAMES:
        for animal in ANIMALS:
            if _held_out(name, animal):
                for feeling in POSITIVE + NEGATIVE:
                    right, wrong = ("played", "ran") if feeling in POSITIVE else ("ran", "played")
                    examples.append((f"{name} was {feeling} because the {animal} ", right, wrong))
    return "\n".join(line for line in lines if line), feelings, examples


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer.backend_tokenizer.encode(text).ids


@torch.no_grad()
def continuation_logprob(model: nn.Module, tokenizer, prompts: list[str], continuations: list[str]) -> torch.Tensor:
    """Sum of log-probabilities of each continuation after its prompt, one value per pair."""
    seqs = [(_encode(tokenizer, p), _encode(tokenizer, c)) for p, c in zip(prompts, continuations, strict=True)]
    width = max(len(p) + len(c) for p, c in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.bool)  # True where a continuation token is predicted
    for i, (p, c) in enumerate(seqs):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        mask[i, len(p): len(p) + len(c)] = True
    device = next(p for p in model.parameters()).device
    was_training = model.training
    model.eval()
    limit = getattr(getattr(model, "config", None), "n_positions", width)
    if width > limit:
        raise ValueError(f"prompt + continuation has {width} tokens, more than the model's {limit} positions")
    logits = model(input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device)).logits.float().cpu()
    model.train(was_training)
    logprobs = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
    return (logprobs * mask[:, 1:]).sum(1)


def choice_accuracy(model: nn.Module, tokenizer, examples: list[tuple[str, str, str]]) -> float:
    """Share of ``(prompt, right, wrong)`` examples where the model gives ``right`` the higher log-probability."""
    if not examples:
        raise ValueError("examples is empty: pass (prompt, right, wrong) triples, e.g. from feeling_task")
    prompts = [p for p, _, _ in examples]
    right = continuation_logprob(model, tokenizer, prompts, [r for _, r, _ in examples])
    wrong = continuation_logprob(model, tokenizer, prompts, [w for _, _, w in examples])
    return (right > wrong).float().mean().item()
