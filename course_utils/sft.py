"""Supervised fine-tuning on chat data: tokenise with response-only labels, the SFT loss, answer and score.

Shared by lecture 04 and its lab, and by the later modules that start from an SFT model (05-07).
``encode_chat`` is the from-scratch counterpart of what TRL's ``SFTTrainer`` does with
``assistant_only_loss=True``; ``sft_loss`` is the loss TRL computes; ``respond`` generates greedy replies
for a list of instructions and ``evaluate`` scores them per task family; ``format_and_accuracy`` gives a set of
replies' format rate and accuracy, each with its 95% interval over stories.
"""
from __future__ import annotations

import copy
import os
import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .stats import Estimate, mean_ci
from .world.instructions import Task, accuracy, in_format, score
from .world.tokenization import ASSISTANT, END

IGNORE_INDEX = -100


def quiet_hf() -> None:
    """Silence the libraries' progress bars, telemetry and warnings (the course's own bars stay)."""
    import logging
    import warnings

    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message=r".*gradient_checkpointing.*deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*'pin_memory' argument is set as true", category=UserWarning)
    import datasets
    import transformers

    datasets.disable_progress_bar()
    datasets.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("trl").setLevel(logging.ERROR)


def encode_chat(tokenizer, messages: list[dict]) -> dict:
    """``input_ids`` of the chat and ``labels`` equal to them on the assistant's tokens (reply + <|end|>), else -100."""
    enc = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
                                        chat_template=training_template(tokenizer))
    ids = list(enc["input_ids"])
    labels = [t if m else IGNORE_INDEX for t, m in zip(ids, enc["assistant_masks"])]
    if ids and all(label == IGNORE_INDEX for label in labels) and any(m["role"] == "assistant" for m in messages):
        raise ValueError("the chat template marked no assistant token: it needs {% generation %} markers")
    return {"input_ids": ids, "labels": labels}


_GENERATION_MARKER = re.compile(r"{%-?\s*generation\s*-?%}")


def training_template(tokenizer) -> str | None:
    """None if the tokenizer's chat template marks replies with {% generation %}; else TRL's training version of it.

    Hub chat templates (e.g. Qwen2.5's) have no markers, so ``return_assistant_tokens_mask`` would mask every token;
    TRL's ``SFTTrainer`` swaps in its patched copy of the template, and so do we (same labels as TRL's).
    """
    if _GENERATION_MARKER.search(tokenizer.chat_template or ""):
        return None
    from trl.chat_template_utils import get_training_chat_template  # slow import: only for hub templates

    return get_training_chat_template(tokenizer)


# The turn markers of two chat templates: (text that opens an assistant reply, token that ends a turn)
COURSE_MARKERS = (ASSISTANT, END)
LLAMA3_MARKERS = ("<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>")


def with_llama3_template(tokenizer):
    """A copy of ``tokenizer`` with Llama 3's chat template (TRL's bundled copy): turn markers, no {% generation %}."""
    from trl.chat_template_utils import llama3_chat_template

    hub_like = copy.deepcopy(tokenizer)
    markers = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    hub_like.add_special_tokens({"additional_special_tokens": markers})
    hub_like.chat_template = llama3_chat_template
    return hub_like


_JINJA_TAG = re.compile(r"({%-?.*?-?%})")


def readable_template(template: str) -> str:
    """A chat template laid out one Jinja tag or text piece per line, indented by nesting (for reading only).

    Text pieces are quoted (repr) so their spaces and newlines show; whitespace alone between two tags is left out.
    """
    lines, depth = [], 0
    for piece in (p for p in _JINJA_TAG.split(template) if p.strip()):
        word = piece.strip("{%-} ").split(" ")[0] if piece.startswith("{%") else ""
        if word.startswith("end") or word in ("elif", "else"):
            depth = max(depth - 1, 0)
        lines.append("    " * depth + (piece if word else repr(piece)))
        if word in ("if", "elif", "else", "for", "generation", "macro"):
            depth += 1
    return "\n".join(lines)


def collate(examples: Sequence[dict], pad_token_id: int) -> dict:
    """Right-pad ``input_ids`` with ``pad_token_id`` and ``labels`` with -100; add the attention mask."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e.get("labels", e["input_ids"]))
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over every label that is not -100 (token-level mean over the batch)."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                           ignore_index=IGNORE_INDEX)


def end_of_turn_ids(tokenizer) -> list[int]:
    """Token ids that end an assistant reply: the course's <|end|> (if the tokenizer has it), then end-of-text.

    A hub chat model has no <|end|>; its end of turn is its eos token (e.g. Qwen's <|im_end|>).
    """
    end = tokenizer.convert_tokens_to_ids(END)
    ids = [end] if end is not None and end != tokenizer.unk_token_id else []
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


@torch.no_grad()
def respond(model, tokenizer, instructions: Sequence[str], max_new_tokens: int = 12,
            batch_size: int = 64) -> list[str]:
    """Greedy replies of a chat model to each instruction (the text up to its <|end|>)."""
    if isinstance(instructions, str):
        raise TypeError("instructions must be a list of strings: wrap one as [instruction]")
    end_ids = end_of_turn_ids(tokenizer)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    replies = []
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        for i in range(0, len(instructions), batch_size):
            prompts = [tokenizer.apply_chat_template([{"role": "user", "content": x}], tokenize=False,
                                                     add_generation_prompt=True)
                       for x in instructions[i:i + batch_size]]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=end_ids,
                                 pad_token_id=tokenizer.pad_token_id)
            replies += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return [r.strip() for r in replies]


def evaluate(model, tokenizer, tasks: Sequence[Task], max_new_tokens: int = 12) -> dict[str, float]:
    """Accuracy of the model's greedy replies per task family (and 'all')."""
    return accuracy(tasks, respond(model, tokenizer, [t.instruction for t in tasks], max_new_tokens))


def format_and_accuracy(tasks: Sequence[Task], replies: Sequence[str]) -> dict[str, Estimate]:
    """Format rate (an answer of the asked kind, right or wrong) and accuracy of ``replies`` to ``tasks``.

    Each is a mean with its 95% bootstrap interval, the tasks of one story resampled together (``mean_ci``).
    """
    if len(tasks) != len(replies):
        raise ValueError(f"need one reply per task: {len(replies)} replies for {len(tasks)} tasks")
    stories = [t.story for t in tasks]
    return {"format": mean_ci([in_format(t, r) for t, r in zip(tasks, replies)], stories),
            "accuracy": mean_ci([score(t, r) for t, r in zip(tasks, replies)], stories)}


__all__ = ["ASSISTANT", "COURSE_MARKERS", "END", "IGNORE_INDEX", "LLAMA3_MARKERS", "collate", "encode_chat",
           "end_of_turn_ids", "evaluate", "format_and_accuracy", "quiet_hf", "readable_template", "respond",
           "sft_loss", "with_llama3_template"]
