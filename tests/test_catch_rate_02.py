"""Lab 02 plausible wrong submissions (issue 24 §6): each loses one of mask_tokens' checks; correct variants pass."""
from pathlib import Path

import torch

from course_utils.checks import mlm as checks
from catch_rate import catch_rate_tests, solution_functions

SOLUTION = Path(__file__).resolve().parents[1] / "solutions" / "02_bert_mlm.ipynb"
SOL = solution_functions(SOLUTION, {"torch": torch})


def check_mask_tokens(fn):
    """The visible and the hidden checks of the lab, in the notebook's order."""
    extra = checks.course_tokenizer(150, extra_special=True)
    checks.check_mask_selection(fn)
    checks.check_mask_selection(fn, mlm_probability=0.3, seed=1, pairs=False)
    checks.check_mask_selection(fn, tokenizer=extra, seed=2)
    checks.check_mask_split(fn)
    checks.check_mask_split(fn, seed=3, pairs=False)
    checks.check_mask_split(fn, tokenizer=extra, seed=4)
    checks.check_random_tokens(fn)
    checks.check_random_tokens(fn, tokenizer=extra, seed=5)
    checks.check_reproducible(fn)
    checks.check_reproducible(fn, tokenizer=extra, seed=6)


def _masking(special=lambda ids, tok: torch.isin(ids, torch.tensor(tok.all_special_ids)),
             real=lambda tok: torch.tensor([i for i in range(len(tok)) if i not in tok.all_special_ids]),
             fates=lambda fate, selected: (selected & (fate < 0.8), selected & (fate >= 0.8) & (fate < 0.9)),
             probability=None, labels_where=lambda selected, changed: selected, in_place=False, draw=None):
    """The solution's mask_tokens with one of its rules replaced (each keyword is one rule)."""
    def mask_tokens(input_ids, tokenizer, mlm_probability=0.15, generator=None):
        input_ids = input_ids if in_place else input_ids.clone()
        original = input_ids.clone()
        p = torch.full(input_ids.shape, probability or mlm_probability)
        p[special(input_ids, tokenizer)] = 0.0
        selected = torch.bernoulli(p, generator=generator).bool()
        to_mask, to_random = fates(torch.rand(input_ids.shape, generator=generator), selected)
        input_ids[to_mask] = tokenizer.mask_token_id
        ids = real(tokenizer)
        index = draw(len(ids), input_ids.shape, generator) if draw else torch.randint(len(ids), input_ids.shape,
                                                                                       generator=generator)
        input_ids[to_random] = ids[index][to_random]
        labels = torch.where(labels_where(selected, input_ids != original), original, -100)
        return input_ids, labels
    return mask_tokens


def _first_specials(ids, tok):
    """[PAD] [UNK] [CLS] [SEP] [MASK]: the first five ids, as the course's tokenizer numbers them."""
    return ids < 5


def masking_without_the_generator(input_ids, tokenizer, mlm_probability=0.15, generator=None):
    return SOL["mask_tokens"](input_ids, tokenizer, mlm_probability)


def masking_reseeded(input_ids, tokenizer, mlm_probability=0.15, generator=None):
    return SOL["mask_tokens"](input_ids, tokenizer, mlm_probability, torch.Generator().manual_seed(0))


WRONG = {
    "special tokens selected": (check_mask_tokens, _masking(special=lambda ids, tok: torch.zeros_like(ids).bool()),
                                "never be selected"),
    "only [CLS] [SEP] [PAD] skipped": (check_mask_tokens, _masking(special=lambda ids, tok: torch.isin(
        ids, torch.tensor([tok.cls_token_id, tok.sep_token_id, tok.pad_token_id]))), "never be selected"),
    "specials as the first five ids": (check_mask_tokens, _masking(special=_first_specials), "never be selected"),
    "random tokens from the whole vocabulary": (check_mask_tokens, _masking(real=lambda tok: torch.arange(len(tok))),
                                                "not special tokens"),
    "random tokens from id 5 on": (check_mask_tokens, _masking(real=lambda tok: torch.arange(5, len(tok))),
                                   "not special tokens"),
    "random token index off by one": (check_mask_tokens, _masking(
        draw=lambda n, shape, g: torch.randint(n - 1, shape, generator=g)), "never drawn"),
    "10% random over all tokens": (check_mask_tokens, _masking(
        fates=lambda fate, sel: (sel & (fate < 0.8), (fate >= 0.8) & (fate < 0.9))), "only change selected"),
    "random 10% of the remaining 20%": (check_mask_tokens, _masking(
        fates=lambda fate, sel: (sel & (fate < 0.8), sel & (fate >= 0.8) & (fate < 0.82))), "random token"),
    "mlm_probability ignored": (check_mask_tokens, _masking(probability=0.15), "30%"),
    "labels only where changed": (check_mask_tokens, _masking(labels_where=lambda sel, changed: changed),
                                  "selection"),
    "labels everywhere": (check_mask_tokens, _masking(labels_where=lambda sel, changed: torch.ones_like(sel)),
                          "labels must be -100"),
    "input_ids changed in place": (check_mask_tokens, _masking(in_place=True), "changed the input_ids"),
    "no generator": (check_mask_tokens, masking_without_the_generator, "reproducible"),
    "generator re-seeded": (check_mask_tokens, masking_reseeded, "different seeds"),
}


def hf_style_masking(input_ids, tokenizer, mlm_probability=0.15, generator=None):
    """DataCollatorForLanguageModeling's way: 80% [MASK], then half of the rest random, with separate draws."""
    input_ids, labels = input_ids.clone(), input_ids.clone()
    p = torch.full(input_ids.shape, mlm_probability)
    p.masked_fill_(torch.isin(input_ids, torch.tensor(tokenizer.all_special_ids)), 0.0)
    selected = torch.bernoulli(p, generator=generator).bool()
    labels[~selected] = -100
    to_mask = torch.bernoulli(torch.full(input_ids.shape, 0.8), generator=generator).bool() & selected
    input_ids[to_mask] = tokenizer.mask_token_id
    to_random = torch.bernoulli(torch.full(input_ids.shape, 0.5), generator=generator).bool() & selected & ~to_mask
    real = [i for i in range(len(tokenizer)) if i not in set(tokenizer.all_special_ids)]
    input_ids[to_random] = torch.tensor(real)[torch.randint(len(real), (int(to_random.sum()),), generator=generator)]
    return input_ids, labels


def categorical_fates(input_ids, tokenizer, mlm_probability=0.15, generator=None):
    """Each selected token's fate drawn as a category (0: [MASK], 1: random, 2: kept) with torch.multinomial."""
    special = torch.isin(input_ids, torch.tensor(tokenizer.all_special_ids))
    selected = (torch.rand(input_ids.shape, generator=generator) < mlm_probability) & ~special
    fate = torch.multinomial(torch.tensor([0.8, 0.1, 0.1]), input_ids.numel(), replacement=True,
                             generator=generator).view(input_ids.shape)
    real = torch.tensor(sorted(set(range(len(tokenizer))) - set(tokenizer.all_special_ids)))
    random_ids = real[torch.randint(len(real), input_ids.shape, generator=generator)]
    masked = torch.where(selected & (fate == 0), tokenizer.mask_token_id, input_ids)
    masked = torch.where(selected & (fate == 1), random_ids, masked)
    return masked, torch.where(selected, input_ids, -100)


RIGHT = {
    "solution": (check_mask_tokens, SOL["mask_tokens"]),
    "transformers' way": (check_mask_tokens, hf_style_masking),
    "categorical fates": (check_mask_tokens, categorical_fates),
}


test_a_plausible_wrong_version_loses_its_check, test_a_correct_version_passes = catch_rate_tests(WRONG, RIGHT)
