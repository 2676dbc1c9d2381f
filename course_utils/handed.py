"""What the labs' exercises call while a check runs them: callables the checks hand over, helpers the labs give.

They live outside ``course_utils.checks`` on purpose: a check decorated with ``@forbids_modules`` fails
when the student's code runs code of the check's modules (``course_utils.checks`` holds the oracles), so
anything the student's code legitimately calls inside a checked function must be defined elsewhere.
Callables are classes with ``__call__`` so that the grader can pickle them to the student's kernel.
"""
from __future__ import annotations

import torch


class NextLogits:
    """``ids (B, T) -> logits (B, vocab)`` of the next token (lab 03's decoding exercises receive one).

    ``offsets`` (one number per token id, optional) adds ``offsets[last token]`` to every logit of a row: a
    constant per row, so every log-probability (hence greedy and beam search on log-probs) is unchanged, while
    sums of raw logits are not.
    """

    def __init__(self, model: torch.nn.Module, offsets: torch.Tensor | None = None):
        self.model = model
        self.offsets = offsets

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = self.model(ids).logits[:, -1, :]
        return logits if self.offsets is None else logits + self.offsets[ids[:, -1], None].to(logits.dtype)


class TableScorer:
    """A stand-in scorer: a fixed accuracy per (instruction, dataset), where dev and test disagree on the best."""

    def __init__(self, table: dict):
        self.table = table

    def __call__(self, instruction: str, examples: list) -> float:
        return self.table[instruction][str(examples[0][0])]


def _byte_decoder() -> dict[str, int]:
    """GPT-2's table from byte-level characters back to byte values."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


BYTE_OF_CHAR = _byte_decoder()
# The tokenizers library's number for each byte: the rank of its byte-level character in code-point order.
_RANK_OF_BYTE = {BYTE_OF_CHAR[c]: rank for rank, c in enumerate(sorted(BYTE_OF_CHAR))}
BYTE_RANK = [_RANK_OF_BYTE[b] for b in range(256)]


def tie_key(pair: tuple[int, int]) -> tuple[int, int]:
    """The library's order among pairs of equal count: the pair with the smaller key is merged first."""
    return tuple(BYTE_RANK[t] if t < 256 else t for t in pair)


def byte_words(text: str) -> list[list[int]]:
    """``text`` split into words as GPT-2's byte-level pre-tokenizer does, each word a list of its bytes."""
    from tokenizers import pre_tokenizers

    pre = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return [[BYTE_OF_CHAR[c] for c in word] for word, _ in pre.pre_tokenize_str(text)]
