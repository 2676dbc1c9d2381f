"""Lab 04's checks accept right answers and reject the plausible wrong ones, naming the mistake."""
import pytest
import torch
import torch.nn.functional as F

from course_utils.checks import CheckError
from course_utils.checks.sft import YES_NO, check_encode_chat, check_sft_loss, check_sft_outcome, check_template
from course_utils.sft import IGNORE_INDEX, encode_chat, sft_loss
from course_utils.world.instructions import FAMILIES, task_split
from course_utils.world.tokenization import train_chat_bpe


@pytest.fixture(scope="module")
def tok():
    tasks = task_split(300, "train", list(FAMILIES))
    return train_chat_bpe([t.instruction for t in tasks] + [t.output for t in tasks], vocab_size=400)


def good_template(text, label):
    return f"{text}\nis anyone happy in this story ? answer yes or no .", YES_NO[label]


@pytest.mark.parametrize("fn, message", [
    (lambda text, label: (f"{text}\nis anyone happy ?", YES_NO[1 - label]), "swap 0 and 1"),
    (lambda text, label: ("is anyone happy ?", YES_NO[label]), "contain the story"),
    (lambda text, label: (text, YES_NO[label]), "only the story"),
    (lambda text, label: (f"{text}\nis anyone happy ?", f"{text} {YES_NO[label]}"), "repeats the story"),
    (lambda text, label: (f"{text}\nhappy ? hint: {label}", YES_NO[label]), "not depend on the label"),
    (lambda text, label: f"{text} {YES_NO[label]}", "tuple"),
    (lambda text, label: (f"{text}\nis anyone happy ?", f"answer: {YES_NO[label]}"), "label alone"),
    (lambda text, label: (f"{text}\nis anyone happy ?", f"{YES_NO[label]} ."), "label alone"),
])
def test_template_check(fn, message):
    check_template(good_template)
    with pytest.raises(CheckError, match=message):
        check_template(fn)


def _right(tok, messages, reply_start, turn_end):  # TRL's labels: encode_chat uses TRL's training template
    return encode_chat(tok, messages)


def _keep(out, positions):
    return {"input_ids": out["input_ids"], "labels": [t if i in positions else IGNORE_INDEX
                                                      for i, t in enumerate(out["input_ids"])]}


def _trained(out):
    return [i for i, lab in enumerate(out["labels"]) if lab != IGNORE_INDEX]


def _train_on_prompt(tok, messages, reply_start, turn_end):
    out = _right(tok, messages, reply_start, turn_end)
    return {"input_ids": out["input_ids"], "labels": list(out["input_ids"])}


def _markers_trained(tok, messages, reply_start, turn_end):  # the course template's marker is one token
    out = _right(tok, messages, reply_start, turn_end)
    marker = tok.convert_tokens_to_ids(reply_start)
    return _keep(out, set(_trained(out)) | {i for i, t in enumerate(out["input_ids"]) if t == marker})


def _mask_end(tok, messages, reply_start, turn_end):
    out = _right(tok, messages, reply_start, turn_end)
    end = tok.convert_tokens_to_ids(turn_end)
    return _keep(out, {i for i in _trained(out) if out["input_ids"][i] != end})


def _last_reply_only(tok, messages, reply_start, turn_end):
    out = _right(tok, messages, reply_start, turn_end)
    trained = _trained(out)
    last = max(i for i in trained if i - 1 not in trained)
    return _keep(out, {i for i in trained if i >= last})


def _off_by_one(tok, messages, reply_start, turn_end):
    out = _right(tok, messages, reply_start, turn_end)
    return _keep(out, {i - 1 for i in _trained(out)})


def _shifted_labels(tok, messages, reply_start, turn_end):
    out = _right(tok, messages, reply_start, turn_end)
    return {"input_ids": out["input_ids"], "labels": out["labels"][1:] + [IGNORE_INDEX]}


def _generation_mask_only(tok, messages, reply_start, turn_end):  # the lecture's way: no markers, nothing trained
    enc = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids = list(enc["input_ids"])
    return {"input_ids": ids, "labels": [t if m else IGNORE_INDEX for t, m in zip(ids, enc["assistant_masks"])]}


@pytest.mark.parametrize("fn, message", [(_train_on_prompt, "prompt tokens"), (_markers_trained, "turn markers"),
                                         (_mask_end, "<|end|> closing each reply is masked"),
                                         (_last_reply_only, "only the last reply"), (_off_by_one, "off by one"),
                                         (_shifted_labels, "shifted the labels yourself"),
                                         (_generation_mask_only, "Llama 3.*no token is trained")])
def test_encode_chat_check(tok, fn, message):
    check_encode_chat(_right, tok)
    with pytest.raises(CheckError, match=message):
        check_encode_chat(fn, tok)


def _no_shift(logits, labels):
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)


def _per_sequence(logits, labels):
    lg, lb = logits[:, :-1], labels[:, 1:]
    losses = F.cross_entropy(lg.transpose(1, 2), lb, ignore_index=-100, reduction="none")
    mask = lb != -100
    return ((losses * mask).sum(1) / mask.sum(1)).mean()


def _summed(logits, labels):
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                           ignore_index=-100, reduction="sum")


def _log_of_softmax(logits, labels):  # right on ordinary logits, log(0) on confident ones
    logp = torch.log(torch.softmax(logits[:, :-1], -1))
    return F.nll_loss(logp.transpose(1, 2), labels[:, 1:], ignore_index=-100)


def _no_grad(logits, labels):
    with torch.no_grad():
        return sft_loss(logits, labels)


@pytest.mark.parametrize("fn, message", [(_no_shift, "no shift"), (_per_sequence, "per-sequence"),
                                         (_summed, "a sum"), (_log_of_softmax, "underflows"),
                                         (_no_grad, "no gradient")])
def test_sft_loss_check(tok, fn, message):
    check_sft_loss(sft_loss, tok)
    with pytest.raises(CheckError, match=message):
        check_sft_loss(fn, tok)


def test_outcome_check_measures_the_models_weights_itself():
    """The shipped SFT model beats its base on the check's own tasks; the base itself, or reported numbers, do not."""
    from course_utils.models import load_pretrained

    tuned, base = load_pretrained("tiny-gpt-sft")[0], load_pretrained("tiny-gpt")[0]
    check_sft_outcome(tuned, "tiny-gpt", 60, seen_margin=0.15, unseen_margin=0.1)
    with pytest.raises(CheckError, match="seen families 0.00 is not 0.15 above"):
        check_sft_outcome(base, "tiny-gpt", 60, seen_margin=0.15, unseen_margin=0.1)
    with pytest.raises(CheckError, match="pass the trained model itself"):
        check_sft_outcome({"seen": 1.0, "unseen": 1.0}, "tiny-gpt", 60)
    with pytest.raises(CheckError, match="did not load into tiny-gpt \\(RuntimeError: ⟪"):
        check_sft_outcome(load_pretrained("tiny-bert")[0], "tiny-gpt", 60)
