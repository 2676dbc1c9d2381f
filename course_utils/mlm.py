"""Helpers for lecture 02 (BERT masked language modelling): batches, masked-token accuracy, baselines.

The masking itself is the lab's exercise (``solutions/02_bert_mlm.ipynb``); the lecture uses
`transformers`' ``DataCollatorForLanguageModeling`` as the library version, so nothing here masks.
"""
from __future__ import annotations

from collections.abc import Callable

import torch


def special_mask(input_ids: torch.Tensor, tokenizer) -> torch.Tensor:
    """True where ``input_ids`` holds a special token ([CLS], [SEP], [PAD], [MASK], [UNK], ...)."""
    return torch.isin(input_ids, torch.tensor(tokenizer.all_special_ids, device=input_ids.device))


def mlm_batches(encoded: list[dict], collator: Callable[[list[dict]], dict], batch_size: int,
                seed: int = 0) -> Callable[[], dict]:
    """A ``next_batch()`` function: ``batch_size`` random encoded examples, collated (and masked) afresh each call."""
    if not encoded:
        raise ValueError("encoded is empty: pass the tokenizer's output for at least one text")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    generator = torch.Generator().manual_seed(seed)

    def next_batch() -> dict:
        idx = torch.randint(len(encoded), (batch_size,), generator=generator).tolist()
        return collator([encoded[i] for i in idx])

    return next_batch


@torch.no_grad()
def masked_token_accuracy(model: torch.nn.Module, batch: dict, batch_size: int = 256) -> float:
    """Fraction of positions with a label (``labels != -100``) where the model's top prediction is the label."""
    if "labels" not in batch:
        raise ValueError("batch has no 'labels': use a masking collator or set labels (-100 = not scored)")
    model.eval()
    device = next(model.parameters()).device
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    correct = total = 0
    for start in range(0, len(batch["labels"]), batch_size):
        part = {k: v[start:start + batch_size].to(device) for k, v in inputs.items()}
        labels = batch["labels"][start:start + batch_size].to(device)
        scored = labels != -100
        predictions = model(**part).logits.argmax(-1)
        correct += (predictions[scored] == labels[scored]).sum().item()
        total += scored.sum().item()
    if total == 0:
        raise ValueError("no position has a label (all labels are -100): nothing to score")
    return correct / total


def unigram_baseline(train_ids: list[list[int]], labels: torch.Tensor, tokenizer) -> dict[str, float]:
    """Accuracy and cross-entropy (nats) on ``labels`` of the context-free unigram model of ``train_ids``."""
    flat = torch.tensor([i for ids in train_ids for i in ids], dtype=torch.long)
    flat = flat[~special_mask(flat, tokenizer)]
    if flat.numel() == 0:
        raise ValueError("train_ids has no ordinary (non-special) tokens to count")
    counts = torch.bincount(flat, minlength=len(tokenizer)).double() + 1.0  # add-one smoothing
    counts[tokenizer.all_special_ids] = 0.0
    log_probs = (counts / counts.sum()).log()
    targets = labels[labels != -100]
    if targets.numel() == 0:
        raise ValueError("no position has a label (all labels are -100): nothing to score")
    return {"accuracy": (targets == counts.argmax()).double().mean().item(),
            "cross_entropy": -log_probs[targets].mean().item(),
            "most_frequent": int(counts.argmax())}

