"""Checks for lab 03's byte-level BPE trainer: its merges, in order, against the `tokenizers` library's.

Oracle: ``tokenizers``' ``BpeTrainer`` on a ``ByteLevel`` pre-tokenizer (GPT-2's), with all 256 bytes
as the initial alphabet, so that its vocabulary grows by exactly one token per merge. Its merges (pairs
of byte-level strings) are turned into pairs of byte strings and compared with the student's, which
are pairs of token ids (0-255: the bytes; 256 + i: the token made by merge i).

Tie-breaking (read from tokenizers' ``trainer.rs``, ``impl Ord for Merge``; installed version 0.23):
the pair with the highest count wins and, among equal counts, the pair with the smallest
(left id, right id) in the library's vocabulary. There the 256 initial symbols are numbered in the
code-point order of their byte-level characters (printable bytes keep their order, but the space byte
becomes 'Ġ', U+0120, and sorts after every printable byte; see ``BYTE_RANK``) and merged tokens are
numbered in creation order, as the student's 256 + i. Ties are frequent on real text (after "th" is
merged, ("th", "e") often ties with another pair), so the lab states this rule and gives ``tie_key``;
``tests/test_bpe_checks.py`` shows that a trainer following it reproduces the library's merges exactly.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable

from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from . import CheckError, drawn_seed, fenced, forbids_modules, passed
# The exercise calls tie_key and is given byte_words: they live in course_utils.handed, outside the modules the check
# forbids (this one holds reference_merges and library_merges, the answers).
from ..handed import BYTE_OF_CHAR, BYTE_RANK, byte_words, tie_key  # noqa: F401

# The oracle (the library, Rust: its calls are seen as C calls) and the check's own references.
ANSWERS = ("tokenizers", "course_utils.checks")

_PRE = pre_tokenizers.ByteLevel(add_prefix_space=False)


def library_merges(text: str, num_merges: int) -> list[tuple[bytes, bytes]]:
    """The first ``num_merges`` merges of ``tokenizers``' byte-level BPE trainer, as pairs of byte strings."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = _PRE
    trainer = trainers.BpeTrainer(vocab_size=256 + num_merges, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  min_frequency=0, show_progress=False, special_tokens=[])
    tok.train_from_iterator([text], trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    to_bytes = lambda s: bytes(BYTE_OF_CHAR[c] for c in s)  # noqa: E731
    return [(to_bytes(a), to_bytes(b)) for a, b in (m.split(" ") if isinstance(m, str) else m for m in merges)]


def _merge(word: list[int], pair: tuple[int, int], new: int) -> list[int]:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(new)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def reference_merges(words: list[list[int]], num_merges: int, across_words: bool = False, weighted: bool = True,
                     recount: bool = True, ties: str = "library") -> list[tuple[int, int]]:
    """Textbook BPE with the library's tie rule (or one typical mistake, for the diagnosis of wrong answers)."""
    if across_words:
        counts = Counter({tuple(b for w in words for b in w): 1})
    else:
        counts = Counter(tuple(w) for w in words) if weighted else Counter(set(tuple(w) for w in words))
    seqs = {w: list(w) for w in counts}
    key = {"library": tie_key, "ids": lambda p: p}.get(ties)
    merges, first = [], None
    for i in range(num_merges):
        if recount or first is None:
            pairs = Counter()
            for w, c in counts.items():
                for pair in zip(seqs[w], seqs[w][1:]):
                    pairs[pair] += c
            first = first if first is not None else pairs
        if not recount:
            pairs = Counter({p: c for p, c in first.items() if p not in merges})
        if not pairs:
            break
        pair = max(pairs, key=pairs.get) if key is None else min(pairs, key=lambda p: (-pairs[p], key(p)))
        merges.append(pair)
        for w in seqs:
            seqs[w] = _merge(seqs[w], pair, 256 + i)
    return merges


def check_texts(seed: int) -> list[str]:
    """The texts a check trains on: stories of the course's world, made-up words with repeated letters, and a
    few words only, where the merges run out of pairs seen twice (then of pairs at all) before ``num_merges``."""
    import random

    from ..world.corpus import make_corpus

    rng = random.Random(seed)
    lexicon = ["".join(rng.choice("aabdeilmnorst") for _ in range(rng.randint(2, 8))) for _ in range(50)]
    return ["\n".join(make_corpus(40, seed=seed)), " ".join(rng.choice(lexicon) for _ in range(600)) + ".",
            " ".join(rng.sample(lexicon, 4))]


def _as_bytes(merges, what: str) -> list[tuple[bytes, bytes]]:
    """Turn the student's id pairs into byte-string pairs (ids 0-255 are bytes, 256 + i is merge i)."""
    if not isinstance(merges, (list, tuple)):
        raise CheckError(f"{what}: return a list of merges, each a pair (left_id, right_id), got {type(merges).__name__}")
    vocab = {b: bytes([b]) for b in range(256)}
    out = []
    for i, m in enumerate(merges):
        if not (isinstance(m, (list, tuple)) and len(m) == 2 and all(isinstance(t, int) for t in m)):
            raise CheckError(f"{what}: merge {i} is {fenced(repr(m))}; each merge must be a pair of int token ids")
        for t in m:
            if t not in vocab:
                raise CheckError(f"{what}: merge {i} uses token id {t}, which does not exist yet: ids 0-255 are the "
                                 f"bytes and merge number j (counting from 0) creates token 256 + j")
        vocab[256 + i] = vocab[m[0]] + vocab[m[1]]
        out.append((vocab[m[0]], vocab[m[1]]))
    return out


@drawn_seed
@forbids_modules(*ANSWERS)
def check_bpe_trainer(fn: Callable, seed: int = 0, num_merges: int = 40) -> None:
    """``fn(words, num_merges)`` -> merges in order, against ``tokenizers``' BpeTrainer on the same texts."""
    for t, text in enumerate(check_texts(seed)):
        words = byte_words(text)
        what = f"train_bpe on text {t} ({len(words)} words), {num_merges} merges"
        expected = library_merges(text, num_merges)
        got_ids = fn([list(w) for w in words], num_merges)
        got = _as_bytes(got_ids, what)
        if got == expected:
            continue
        if len(got) < len(expected) and got == expected[:len(got)]:
            raise CheckError(f"{what}: {len(got)} merges returned, expected {len(expected)}: the merges stopped early; "
                             "keep merging while any adjacent pair is left, pairs seen only once included, up to "
                             "num_merges")
        if len(got) != len(expected):
            raise CheckError(f"{what}: {len(got)} merges returned, expected {len(expected)}")
        mistakes = {
            "pairs were counted across word boundaries: count pairs inside each word only (a merge never joins "
            "two words)": dict(across_words=True),
            "each distinct word was counted once: weight every pair by how often its word occurs":
                dict(weighted=False),
            "the pairs were counted only once, before the first merge: after each merge, count the pairs again "
            "(merging creates new pairs and removes old ones)": dict(recount=False),
            "pairs with equal counts must be ordered as the library does: the smallest tie_key(pair) first "
            "(you took the first one found)": dict(ties=None),
            "pairs with equal counts must be ordered with tie_key(pair), not by their ids: the library ranks the "
            "space byte after the printable ones": dict(ties="ids"),
        }
        for message, kwargs in mistakes.items():
            if got == _as_bytes(reference_merges(words, num_merges, **kwargs), what):
                raise CheckError(f"{what}: {message}")
        i = next(i for i, (a, b) in enumerate(zip(got, expected)) if a != b)
        raise CheckError(f"{what}: merge {i} is {fenced(repr(got[i][0]), 30)} + {fenced(repr(got[i][1]), 30)}, the library's is {expected[i][0]!r} + "
                         f"{expected[i][1]!r}: the most frequent adjacent pair inside words after the earlier merges "
                         "(ties: smallest tie_key)")
    passed("train_bpe (merges in order equal to the tokenizers library's BPE trainer)")
