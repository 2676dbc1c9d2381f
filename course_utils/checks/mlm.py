"""Checks for lab 02: BERT's masking rule (15% selection, 80-10-10, labels), tested with statistics.

Each check runs the student's ``mask_tokens(input_ids, tokenizer, mlm_probability, generator)`` on a
padded batch of course sentence pairs with at least ``MIN_CANDIDATES`` maskable tokens and tests the
counts with scipy.stats at the strict level ``ALPHA``: a correct function passes essentially always,
a wrong one fails reliably, and fixed seeds make every check deterministic. The independent oracle
is `transformers`' ``DataCollatorForLanguageModeling``, run on the same batch and compared with
two-sample tests on what both do alike: the selection rate and the [MASK] / random / unchanged split.
It differs on purpose in one place: it draws random replacements from the whole vocabulary, special
tokens included, while the lab draws them from the real (non-special) vocabulary only.

The rules (special = any id in ``tokenizer.all_special_ids``: [PAD], [CLS], [SEP], [MASK], [UNK], ...):
selection: each non-special token is selected independently with probability ``mlm_probability``;
special tokens never are. labels: the original id at selected positions, -100 everywhere else.
split: a selected token becomes [MASK] with probability 0.8, a random real token with 0.1, else stays.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from scipy import stats
from transformers import DataCollatorForLanguageModeling

from ..world.corpus import make_corpus
from ..mlm import special_mask
from ..world.tokenization import train_wordpiece
from . import CheckError, drawn_seed, forbids_modules, passed

# The oracle is transformers' DataCollatorForLanguageModeling (transformers.data) and this module holds the runs
# built on it (collator_run): when `course grade` calls the student's mask_tokens, code from neither may run. Only
# transformers.data: mask_tokens legitimately calls the tokenizer it is given (transformers' tokenization code).
ANSWERS = ("transformers.data", "course_utils.checks")

ALPHA = 1e-4  # significance level: a correct implementation fails a test with probability 1e-4
MIN_CANDIDATES = 100_000  # maskable tokens per statistical test
SPLIT = {"[MASK]": 0.8, "random": 0.1, "unchanged": 0.1}


@functools.lru_cache(maxsize=None)
def course_tokenizer(vocab_size: int = 300, extra_special: bool = False):
    """The lab's WordPiece tokenizer; ``extra_special`` appends a special token [EXTRA] to the vocabulary."""
    tokenizer = train_wordpiece(make_corpus(2000, seed=0), vocab_size=vocab_size)
    if extra_special:
        tokenizer.add_special_tokens({"additional_special_tokens": ["[EXTRA]"]})
    return tokenizer


def make_batch(tokenizer, n_candidates: int = MIN_CANDIDATES, seed: int = 0, pairs: bool = True) -> torch.Tensor:
    """A padded [B, T] batch of course stories (as sentence pairs when ``pairs``) with a few rare specials mixed in."""
    return _cached_batch(tokenizer, n_candidates, seed, pairs).clone()


@functools.lru_cache(maxsize=8)
def _cached_batch(tokenizer, n_candidates: int, seed: int, pairs: bool) -> torch.Tensor:
    n_stories = n_candidates // 20 + 10  # a story has about 26 ordinary tokens
    while True:
        texts = make_corpus(n_stories, seed=seed)
        args = (texts[0::2], texts[1::2]) if pairs else (texts,)
        batch = tokenizer(*args, padding=True, return_tensors="pt")["input_ids"]
        if (~special_mask(batch, tokenizer)).sum() >= n_candidates:
            break
        n_stories *= 2
    # Specials other than padding/[CLS]/[SEP]/[MASK] (e.g. [UNK]) on about 1% of the ordinary tokens.
    common = (tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id)
    rare = [i for i in tokenizer.all_special_ids if i not in common]
    gen = torch.Generator().manual_seed(2**31 - 1 - seed)  # a stream unrelated to the masking's seeds
    where = ~special_mask(batch, tokenizer) & (torch.rand(batch.shape, generator=gen) < 0.01)
    batch[where] = torch.tensor(rare)[torch.randint(len(rare), (int(where.sum()),), generator=gen)]
    return batch


@dataclass
class MaskingRun:
    """One call of a masking function: the batch before, the masked batch and labels it returned."""

    tokenizer: object
    original: torch.Tensor
    masked: torch.Tensor
    labels: torch.Tensor

    @property
    def special(self) -> torch.Tensor:
        return special_mask(self.original, self.tokenizer)

    @property
    def selected(self) -> torch.Tensor:
        return self.labels != -100

    def split_counts(self) -> list[int]:
        """How many selected ordinary tokens became [MASK], a random token, or stayed unchanged."""
        sel = self.selected & ~self.special
        is_mask = self.masked == self.tokenizer.mask_token_id
        changed = self.masked != self.original
        return [int((sel & is_mask).sum()), int((sel & changed & ~is_mask).sum()), int((sel & ~changed).sum())]


def run_masking(mask_tokens: Callable, tokenizer, batch: torch.Tensor, mlm_probability: float = 0.15,
                generator: torch.Generator | None = None) -> MaskingRun:
    """Call ``mask_tokens`` on a copy of ``batch`` and check the types and shapes of what it returns."""
    given = batch.clone()
    out = mask_tokens(given, tokenizer, mlm_probability=mlm_probability, generator=generator)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise CheckError(f"mask_tokens must return a tuple (masked_input_ids, labels), got {type(out).__name__}")
    for name, t in zip(("masked_input_ids", "labels"), out):
        if not torch.is_tensor(t) or t.dtype != torch.long:
            raise CheckError(f"{name} must be a torch.long tensor, got "
                             f"{t.dtype if torch.is_tensor(t) else type(t).__name__}")
        if t.shape != batch.shape:
            raise CheckError(f"{name} has shape {tuple(t.shape)} but input_ids has {tuple(batch.shape)}")
    if not torch.equal(given, batch):
        raise CheckError("mask_tokens changed the input_ids passed to it: work on a copy (input_ids.clone())")
    masked, labels = out
    if masked.min() < 0 or masked.max() >= len(tokenizer):
        raise CheckError(f"masked_input_ids must be ids of the vocabulary (0..{len(tokenizer) - 1}), "
                         f"found {int(masked.min())}..{int(masked.max())}")
    return MaskingRun(tokenizer, batch, masked, labels)


def collator_run(tokenizer, batch: torch.Tensor, mlm_probability: float = 0.15, seed: int = 0) -> MaskingRun:
    """The oracle: `transformers`' DataCollatorForLanguageModeling on the same batch."""
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability, seed=seed)
    out = collator([{"input_ids": row} for row in batch.tolist()])
    return MaskingRun(tokenizer, batch, out["input_ids"], out["labels"])


@functools.lru_cache(maxsize=16)
def _oracle_counts(tokenizer, seed: int, pairs: bool, mlm_probability: float) -> tuple[int, list[int]]:
    """The collator's number of selected tokens and its split on ``make_batch(tokenizer, seed=seed, pairs=pairs)``."""
    run = collator_run(tokenizer, make_batch(tokenizer, seed=seed, pairs=pairs), mlm_probability, seed=seed + 1)
    return int(run.selected.sum()), run.split_counts()


def _names(tokenizer, ids: torch.Tensor) -> str:
    """'[PAD] 12 times, [CLS] 3 times' for the ids in ``ids``."""
    values, counts = ids.unique(return_counts=True)
    return ", ".join(f"{tokenizer.convert_ids_to_tokens(int(v))} {int(c)} times" for v, c in zip(values, counts))


def _check_labels(run: MaskingRun, mlm_probability: float) -> None:
    """Labels: not on every token; the original id where set; set wherever the input was changed."""
    labelled = run.selected.float().mean().item()
    if labelled > max(0.5, 2 * mlm_probability):
        raise CheckError(f"labels must be -100 except at the selected positions: found labels on {labelled:.1%} "
                         f"of all positions, expected about {mlm_probability:.0%} of the ordinary tokens")
    wrong = run.selected & (run.labels != run.original)
    if wrong.any():
        raise CheckError(f"labels must hold the original token id at selected positions: {int(wrong.sum())} "
                         "selected positions have another id (set labels from input_ids before replacing tokens)")
    unlabelled = (run.masked != run.original) & ~run.selected
    if unlabelled.any():
        raise CheckError(f"labels must be set wherever a token was replaced: {int(unlabelled.sum())} tokens were "
                         "changed but their label is -100 (only change selected tokens)")


@drawn_seed
@forbids_modules(*ANSWERS)
def check_mask_selection(mask_tokens: Callable, tokenizer=None, mlm_probability: float = 0.15, seed: int = 0,
                         pairs: bool = True) -> None:
    """Rule 1: each ordinary token selected with probability ``mlm_probability``, special ones never."""
    tokenizer = tokenizer or course_tokenizer()
    batch = make_batch(tokenizer, seed=seed, pairs=pairs)
    run = run_masking(mask_tokens, tokenizer, batch, mlm_probability, torch.Generator().manual_seed(seed))
    _check_labels(run, mlm_probability)
    special = run.special
    touched = special & (run.selected | (run.masked != run.original))
    if touched.any():
        raise CheckError("[CLS]/[SEP]/padding and other special tokens must never be selected: selected "
                         f"{_names(tokenizer, run.original[touched])} (skip ids in tokenizer.all_special_ids)")
    k, n = int(run.selected.sum()), int((~special).sum())
    test = stats.binomtest(k, n, mlm_probability)
    if test.pvalue < ALPHA:
        raise CheckError(f"selection: {mlm_probability:.0%} of the ordinary tokens should be selected, found "
                         f"{k / n:.2%} of {n} (binomial test p={test.pvalue:.1e})")
    k_hf = _oracle_counts(tokenizer, seed, pairs, mlm_probability)[0]
    p_two = stats.chi2_contingency([[k, n - k], [k_hf, n - k_hf]]).pvalue
    if p_two < ALPHA:
        raise CheckError(f"selection: your rate {k / n:.2%} differs from DataCollatorForLanguageModeling's "
                         f"{k_hf / n:.2%} on the same batch (chi-square p={p_two:.1e})")
    passed(f"selection & labels ({k / n:.2%} of {n} tokens selected; the collator: {k_hf / n:.2%})")


@drawn_seed
@forbids_modules(*ANSWERS)
def check_mask_split(mask_tokens: Callable, tokenizer=None, seed: int = 0, pairs: bool = True) -> None:
    """Rule 2: of the selected tokens 80% become [MASK], 10% a random token, 10% stay unchanged."""
    tokenizer = tokenizer or course_tokenizer()
    batch = make_batch(tokenizer, seed=seed, pairs=pairs)
    run = run_masking(mask_tokens, tokenizer, batch, 0.15, torch.Generator().manual_seed(seed))
    _check_labels(run, 0.15)
    counts = run.split_counts()
    total = sum(counts)
    if total == 0:
        raise CheckError("no token was selected (all labels are -100): select 15% of the ordinary tokens first")
    # A random draw equals the original token with probability 1/n_real: it then looks "unchanged".
    n_real = len(tokenizer) - len(set(tokenizer.all_special_ids))
    expected = [0.8, 0.1 * (1 - 1 / n_real), 0.1 * (1 + 1 / n_real)]
    p_value = stats.chisquare(counts, [e * total for e in expected]).pvalue
    found = [c / total for c in counts]
    summary = ", ".join(f"{name} {f:.1%}" for name, f in zip(SPLIT, found))
    if p_value < ALPHA:
        z = [abs(c - e * total) / (e * (1 - e) * total) ** 0.5 for c, e in zip(counts, expected)]
        worst = max(range(3), key=z.__getitem__)
        what = ["become [MASK]", "become a random token", "stay unchanged"][worst]
        raise CheckError(f"selected tokens: {list(SPLIT.values())[worst]:.0%} should {what}, found {found[worst]:.1%} "
                         f"({summary}; chi-square p={p_value:.1e})")
    oracle = _oracle_counts(tokenizer, seed, pairs, 0.15)[1]
    p_two = stats.chi2_contingency([counts, oracle]).pvalue
    if p_two < ALPHA:
        theirs = ", ".join(f"{name} {c / sum(oracle):.1%}" for name, c in zip(SPLIT, oracle))
        raise CheckError(f"selected tokens: your split ({summary}) differs from DataCollatorForLanguageModeling's "
                         f"({theirs}) (chi-square p={p_two:.1e})")
    passed(f"80-10-10 split ({summary} of {total} selected tokens)")


@drawn_seed
@forbids_modules(*ANSWERS)
def check_random_tokens(mask_tokens: Callable, tokenizer=None, seed: int = 0) -> None:
    """Rule 3: random replacements are drawn uniformly from the real vocabulary, never special tokens."""
    tokenizer = tokenizer or course_tokenizer()
    batch = make_batch(tokenizer, n_candidates=4 * MIN_CANDIDATES, seed=seed)
    run = run_masking(mask_tokens, tokenizer, batch, 0.15, torch.Generator().manual_seed(seed))
    replaced = (run.masked != run.original) & (run.masked != tokenizer.mask_token_id)
    if not replaced.any():
        raise CheckError("selected tokens: 10% should become a random token, found none")
    drawn = run.masked[replaced]
    specials = special_mask(drawn, tokenizer)
    if specials.any():
        raise CheckError("random replacements must come from the real vocabulary, not special tokens: drew "
                         f"{_names(tokenizer, drawn[specials])} (draw ids not in tokenizer.all_special_ids)")
    # A draw equal to the original token is invisible, so token v is expected in proportion to the
    # number of ordinary tokens that are not v (selection does not depend on the token).
    real = torch.tensor([i for i in range(len(tokenizer)) if i not in set(tokenizer.all_special_ids)])
    ordinary = run.original[~run.special]
    observed = torch.bincount(drawn, minlength=len(tokenizer))[real].double()
    weight = ordinary.numel() - torch.bincount(ordinary, minlength=len(tokenizer))[real].double()
    expected = weight / weight.sum() * observed.sum()
    p_value = stats.chisquare(observed.numpy(), expected.numpy()).pvalue
    if p_value < ALPHA:
        never = int((observed == 0).sum())
        raise CheckError(f"random replacements should be drawn uniformly from all {len(real)} real tokens "
                         f"(ids not in tokenizer.all_special_ids): {never} of them were never drawn in "
                         f"{int(observed.sum())} draws (chi-square p={p_value:.1e})")
    passed(f"random replacements ({int(observed.sum())} draws, uniform over {len(real)} real tokens)")


@drawn_seed
@forbids_modules(*ANSWERS)
def check_reproducible(mask_tokens: Callable, tokenizer=None, seed: int = 0) -> None:
    """Rule 4: the same seeded generator gives the same result; a new seed, the next call or None a new mask."""
    tokenizer = tokenizer or course_tokenizer()
    batch = make_batch(tokenizer, n_candidates=2000, seed=seed)

    def call(generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        torch.rand(7)  # move torch's global random state: a seeded generator must not depend on it
        run = run_masking(mask_tokens, tokenizer, batch, 0.15, generator)
        return run.masked, run.labels

    def same(a, b) -> bool:
        return all(torch.equal(x, y) for x, y in zip(a, b))

    first, again = call(torch.Generator().manual_seed(seed)), call(torch.Generator().manual_seed(seed))
    if not same(first, again):
        raise CheckError("reproducible: two calls with torch.Generator().manual_seed(seed) gave different results; "
                         "pass generator=generator to every torch.rand / torch.bernoulli / torch.randint call")
    if same(first, call(torch.Generator().manual_seed(seed + 1))):
        raise CheckError("reproducible: generators with different seeds gave identical masks; draw the random "
                         "numbers from the generator passed in")
    generator = torch.Generator().manual_seed(seed)
    if same(call(generator), call(generator)):
        raise CheckError("dynamic masking: two calls with the same generator gave the same mask; let the "
                         "generator advance (do not re-seed it inside mask_tokens)")
    if same(call(None), call(None)):
        raise CheckError("generator=None: two calls gave the same mask; without a generator draw from torch's "
                         "global random state and never re-seed it (no torch.manual_seed, no fixed-seed "
                         "torch.Generator inside mask_tokens)")
    passed("reproducible with a generator, random without one")


def check_mask_tokens(mask_tokens: Callable, tokenizer=None) -> None:
    """All four rules of BERT's masking (as the lab's check cells run them one by one)."""
    check_mask_selection(mask_tokens, tokenizer)
    check_mask_split(mask_tokens, tokenizer)
    check_random_tokens(mask_tokens, tokenizer)
    check_reproducible(mask_tokens, tokenizer)
