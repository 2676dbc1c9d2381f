"""Lab 02's masking checks accept correct masking functions and reject each plausible wrong one with
a message naming the broken rule; plus unit tests of course_utils.mlm.

The correct function is the solution notebook's own cell; each wrong version is that cell with a
small edit (``WRONG``), the mistakes students make. tests/test_grading_02.py grades two of them end to end.
"""
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling

from course_utils.checks import CheckError
from course_utils.checks import mlm as checks
from course_utils.mlm import masked_token_accuracy, mlm_batches, special_mask, unigram_baseline
from course_utils.instructor.notebooks import nbgrader_meta, read_notebook

SOLUTION = Path(__file__).resolve().parents[1] / "solutions" / "02_bert_mlm.ipynb"
IMPL = "mask_tokens_impl"
CHECKS = {"selection": checks.check_mask_selection, "split": checks.check_mask_split,
          "random": checks.check_random_tokens, "reproducible": checks.check_reproducible}

# name: (edits of the solution's code, {check that must fail: fragment of its message}); other checks pass.
WRONG = {
    "always_mask": ([("input_ids[selected & (fate < 0.8)] =", "input_ids[selected] ="),
                     ("input_ids[to_random] = random_ids[to_random]", "pass")],
                    {"split": "80% should become [MASK], found 100.0%",
                     "random": "10% should become a random token, found none"}),
    "masks_specials": ([("probability[special] = 0.0", "pass")],
                       {"selection": "[CLS]/[SEP]/padding and other special tokens must never be selected"}),
    "masks_unk": ([("torch.tensor(tokenizer.all_special_ids))",
                    "torch.tensor([tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id]))")],
                  {"selection": "must never be selected: selected [UNK]"}),
    "labels_everywhere": ([("labels[~selected] = -100", "pass")],
                          {"selection": "labels must be -100 except at the selected positions",
                           "split": "labels must be -100 except at the selected positions"}),
    "random_from_specials": ([("real[torch.randint(len(real), input_ids.shape, generator=generator)]",
                               "torch.randint(len(tokenizer), input_ids.shape, generator=generator)")],
                             {"random": "random replacements must come from the real vocabulary, not special tokens"}),
}
# Mistakes that only test_mlm covers (grading them all would be slow).
MORE_WRONG = {
    "random_overwrites_masks": ([("to_random = selected & (fate >= 0.8) & (fate < 0.9)",
                                  "to_random = selected & (torch.rand(input_ids.shape, generator=generator) < 0.1)")],
                                {"split": "10% should stay unchanged, found 17"}),
    "random_from_a_few_ids": ([("real[torch.randint(len(real), input_ids.shape, generator=generator)]",
                                "real[torch.randint(20, input_ids.shape, generator=generator)]")],
                              {"random": "should be drawn uniformly from all 248 real tokens"}),
    "ignores_generator": ([("torch.rand(input_ids.shape, generator=generator)", "torch.rand(input_ids.shape)")],
                          {"reproducible": "two calls with torch.Generator().manual_seed(seed) gave different"}),
    "reseeds_global_state": ([("input_ids = input_ids.clone()\n", "input_ids = input_ids.clone()\ntorch.manual_seed(0)\n")],
                             {"reproducible": "generator=None: two calls gave the same mask"}),
    "fixed_seed_without_generator": ([("input_ids = input_ids.clone()\n",
                                       "input_ids = input_ids.clone()\n"
                                       "generator = generator or torch.Generator().manual_seed(0)\n")],
                                     {"reproducible": "generator=None: two calls gave the same mask"}),
    "changes_input_in_place": ([("input_ids = input_ids.clone()\n", "")],
                               {name: "changed the input_ids passed to it" for name in CHECKS}),
    "mask_rate_ignored": ([("torch.full(input_ids.shape, mlm_probability)", "torch.full(input_ids.shape, 0.15)")],
                          {}),  # passes at 15%; the hidden test with mlm_probability=0.3 catches it (below)
}


def solution_code() -> str:
    """The code between the solution markers of the solution notebook's mask_tokens cell, dedented."""
    cell = next(c for c in read_notebook(SOLUTION).cells if nbgrader_meta(c).get("grade_id") == IMPL)
    lines = cell.source.split("\n")
    begin = next(i for i, line in enumerate(lines) if line.strip() == "### BEGIN SOLUTION")
    end = next(i for i, line in enumerate(lines) if line.strip() == "### END SOLUTION")
    return textwrap.dedent("\n".join(lines[begin + 1:end]))


def edited_code(edits: list[tuple[str, str]]) -> str:
    """The solution's code with each (old, new) edit applied exactly once."""
    code = solution_code()
    for old, new in edits:
        assert code.count(old) == 1, f"the solution no longer contains {old!r} exactly once: update WRONG"
        code = code.replace(old, new)
    return code


def make_function(code: str):
    """A mask_tokens function whose body is ``code``."""
    source = "def mask_tokens(input_ids, tokenizer, mlm_probability=0.15, generator=None):\n"
    namespace = {"torch": torch}
    exec(source + textwrap.indent(code, "    "), namespace)
    return namespace["mask_tokens"]


def failures(mask_tokens, **kwargs) -> dict[str, str]:
    """{check name: its CheckError message} for the checks that fail."""
    out = {}
    for name, check in CHECKS.items():
        try:
            check(mask_tokens, **kwargs)
        except CheckError as exc:
            out[name] = str(exc)
    return out


def hf_style(input_ids, tokenizer, mlm_probability=0.15, generator=None):
    """A second correct version written like transformers' collator (nested Bernoulli draws)."""
    input_ids, labels = input_ids.clone(), input_ids.clone()
    special = special_mask(input_ids, tokenizer)
    selected = torch.bernoulli(torch.full(input_ids.shape, mlm_probability).masked_fill(special, 0),
                               generator=generator).bool()
    labels[~selected] = -100
    to_mask = torch.bernoulli(torch.full(input_ids.shape, 0.8), generator=generator).bool() & selected
    input_ids[to_mask] = tokenizer.mask_token_id
    to_random = torch.bernoulli(torch.full(input_ids.shape, 0.5), generator=generator).bool() & selected & ~to_mask
    real = torch.tensor(sorted(set(range(len(tokenizer))) - set(tokenizer.all_special_ids)))
    input_ids[to_random] = real[torch.randint(len(real), (int(to_random.sum()),), generator=generator)]
    return input_ids, labels


def hf_collator(input_ids, tokenizer, mlm_probability=0.15, generator=None):
    """transformers' own collator as a 'student' (its random draws include special tokens)."""
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability)
    collator.generator = generator
    return collator.torch_mask_tokens(input_ids.clone())


@pytest.fixture(scope="module")
def solution():
    return make_function(solution_code())


def test_solution_passes_every_check(solution, capsys):
    assert failures(solution) == {}
    assert capsys.readouterr().out.count("all checks passed") == len(CHECKS)


@pytest.mark.parametrize("kwargs", [dict(tokenizer=checks.course_tokenizer(150, extra_special=True), seed=2),
                                    dict(seed=7)], ids=["extra-special-tokenizer", "seed7"])
def test_correct_versions_pass_with_other_tokenizers_and_seeds(solution, kwargs):
    assert failures(solution, **kwargs) == {}
    assert failures(hf_style, **kwargs) == {}


def test_other_rates_and_unpadded_batches(solution):
    checks.check_mask_selection(solution, mlm_probability=0.3, seed=1, pairs=False)
    checks.check_mask_split(solution, seed=3, pairs=False)


@pytest.mark.parametrize("name", list(WRONG) + list(MORE_WRONG))
def test_wrong_versions_fail_with_the_broken_rule(name):
    edits, expected = {**WRONG, **MORE_WRONG}[name]
    found = failures(make_function(edited_code(edits)))
    assert set(found) == set(expected), f"{name}: failed {sorted(found)}, expected {sorted(expected)}: {found}"
    for check, fragment in expected.items():
        assert fragment in found[check], f"{name}/{check}: {found[check]!r} lacks {fragment!r}"


def test_ignoring_the_rate_fails_the_hidden_test():
    wrong = make_function(edited_code(MORE_WRONG["mask_rate_ignored"][0]))
    with pytest.raises(CheckError, match=r"30% of the ordinary tokens should be selected, found 1[45]\."):
        checks.check_mask_selection(wrong, mlm_probability=0.3, seed=1, pairs=False)


def test_transformers_collator_differs_only_in_random_tokens():
    found = failures(hf_collator)
    assert set(found) == {"random"} and "not special tokens" in found["random"], found


def test_wrong_return_values_are_explained(solution):
    with pytest.raises(CheckError, match="must return a tuple"):
        checks.check_mask_selection(lambda ids, tok, **kw: ids)
    with pytest.raises(CheckError, match="labels must be a torch.long tensor"):
        checks.check_mask_split(lambda ids, tok, **kw: (ids, ids.float()))
    with pytest.raises(CheckError, match="masked_input_ids has shape"):
        checks.check_reproducible(lambda ids, tok, **kw: (ids[:, 1:], ids))


def test_make_batch_has_enough_candidates_and_specials():
    tok = checks.course_tokenizer()
    batch = checks.make_batch(tok)
    assert (~special_mask(batch, tok)).sum() >= checks.MIN_CANDIDATES
    for token_id in (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.unk_token_id):
        assert (batch == token_id).any()
    batch.zero_()  # callers get a copy: changing it does not change the next batch
    assert (checks.make_batch(tok) != 0).any()


# ---------------------------------------------------------------- course_utils.mlm


@pytest.fixture(scope="module")
def tiny():
    tok = checks.course_tokenizer()
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32, pad_token_id=tok.pad_token_id))
    return model.eval(), tok


def test_special_mask():
    tok = checks.course_tokenizer()
    ids = torch.tensor([[tok.cls_token_id, 10, tok.mask_token_id, tok.unk_token_id, tok.sep_token_id, tok.pad_token_id]])
    assert special_mask(ids, tok).tolist() == [[True, False, True, True, True, True]]


def test_mlm_batches_draws_fresh_masked_batches():
    tok = checks.course_tokenizer()
    encoded = [tok(t) for t in ["mia has two cups .", "the red fox saw the dog in the park .", "tom was sad ."]]
    collator = DataCollatorForLanguageModeling(tok, mlm_probability=0.5, seed=0)
    next_batch = mlm_batches(encoded, collator, batch_size=4, seed=0)
    first, second = next_batch(), next_batch()
    assert first["input_ids"].shape[0] == 4 and "labels" in first and "attention_mask" in first
    assert not torch.equal(first["labels"], second["labels"])
    with pytest.raises(ValueError, match="empty"):
        mlm_batches([], collator, 4)
    with pytest.raises(ValueError, match="batch_size"):
        mlm_batches(encoded, collator, 0)


def test_masked_token_accuracy_counts_only_labelled_positions(tiny):
    model, tok = tiny
    ids = tok(["mia has two cups .", "the dog ran ."], padding=True, return_tensors="pt")
    with torch.no_grad():
        predicted = model(**ids).logits.argmax(-1)
    labels = torch.full_like(ids["input_ids"], -100)
    labels[0, 1], labels[1, 2] = predicted[0, 1], predicted[1, 2] + 1  # one right, one wrong
    assert masked_token_accuracy(model, {**ids, "labels": labels}, batch_size=1) == 0.5
    with pytest.raises(ValueError, match="no position has a label"):
        masked_token_accuracy(model, {**ids, "labels": torch.full_like(labels, -100)})
    with pytest.raises(ValueError, match="no 'labels'"):
        masked_token_accuracy(model, dict(ids))


def test_unigram_baseline():
    tok = checks.course_tokenizer()
    the, cat = tok.convert_tokens_to_ids(["the", "cat"])
    train_ids = [[tok.cls_token_id, the, the, the, cat, tok.sep_token_id]]
    labels = torch.tensor([[-100, the, cat, -100]])
    result = unigram_baseline(train_ids, labels, tok)
    assert result["most_frequent"] == the and result["accuracy"] == 0.5
    n_real = len(tok) - len(tok.all_special_ids)
    p_the, p_cat = 4 / (4 + n_real), 2 / (4 + n_real)  # add-one smoothing over the real tokens
    assert result["cross_entropy"] == pytest.approx(-(torch.tensor([p_the, p_cat]).log().mean().item()))
    with pytest.raises(ValueError, match="non-special"):
        unigram_baseline([[tok.cls_token_id]], labels, tok)


def exactly_15_percent(input_ids, tokenizer, mlm_probability=0.15, generator=None):
    """BERT's original data script: exactly round(rate * n) of each row's n ordinary tokens (accepted)."""
    input_ids, labels = input_ids.clone(), input_ids.clone()
    special = special_mask(input_ids, tokenizer)
    selected = torch.zeros_like(special)
    for row in range(input_ids.shape[0]):
        candidates = (~special[row]).nonzero().flatten()
        order = torch.randperm(len(candidates), generator=generator)
        selected[row, candidates[order[:round(mlm_probability * len(candidates))]]] = True
    labels[~selected] = -100
    fate = torch.rand(input_ids.shape, generator=generator)
    input_ids[selected & (fate < 0.8)] = tokenizer.mask_token_id
    real = torch.tensor(sorted(set(range(len(tokenizer))) - set(tokenizer.all_special_ids)))
    to_random = selected & (fate >= 0.8) & (fate < 0.9)
    input_ids[to_random] = real[torch.randint(len(real), (int(to_random.sum()),), generator=generator)]
    return input_ids, labels


def test_exactly_15_percent_per_sequence_is_accepted():
    assert failures(exactly_15_percent) == {}
    checks.check_mask_selection(exactly_15_percent, mlm_probability=0.3, seed=1, pairs=False)
