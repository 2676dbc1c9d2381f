"""Lab 04 plausible wrong submissions (issue 24 §6): each loses its exercise's check; correct variants pass."""
from pathlib import Path

import torch
import torch.nn.functional as F

from course_utils.checks import sft as checks
from catch_rate import catch_rate_tests, solution_functions

SOLUTION = Path(__file__).resolve().parents[1] / "solutions" / "04_instruction_tuning.ipynb"
SOL = solution_functions(SOLUTION, {"torch": torch, "F": F})
BASE = "tiny-gpt"  # the notebooks' base model: the checks load its tokenizer themselves


def check_encode_chat(fn):
    """The visible and a hidden encode_chat check."""
    checks.check_encode_chat(fn, BASE)
    checks.check_encode_chat(fn, BASE, seed=8)


def check_sft_loss(fn):
    """The sft_loss check on the base model's tokenizer."""
    checks.check_sft_loss(fn, BASE)


def _template(output_of):
    """A happy_template whose instruction is right and whose output is ``output_of(label)``."""
    return lambda text, label: (f"{text}\nis anyone happy in this story ? answer yes or no .", output_of(label))


def _encode(keep):
    """An encode_chat that tokenises like the solution and keeps a token's label where
    ``keep(text, start, end, reply_start, turn_end)`` says (the rendered chat, the token's character span, the markers)."""
    def encode_chat(tokenizer, messages, reply_start, turn_end):
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        return {"input_ids": ids, "labels": [t if keep(text, s, e, reply_start, turn_end) else -100
                                             for t, (s, e) in zip(ids, enc["offset_mapping"])]}
    return encode_chat


def _replies(text, reply_start, turn_end, include_marker=False, include_end=True, first_only=False):
    """Character spans of the replies, the solution's way, with one of its rules changed."""
    spans, start = [], text.find(reply_start)
    while start != -1:
        begin = start if include_marker else start + len(reply_start)
        end = text.index(turn_end, begin) + (len(turn_end) if include_end else 0)
        spans.append((begin, end))
        start = -1 if first_only else text.find(reply_start, end)
    return spans


def _replies_one_char_late(text, reply_start, turn_end):
    """Skips one character after each reply_start (as if a separator followed it)."""
    return [(b + 1, e) for b, e in _replies(text, reply_start, turn_end)]


def _in_replies(**rule):
    """An encode_chat that keeps the tokens inside ``_replies(..., **rule)``."""
    return _encode(lambda text, s, e, rs, te: any(b <= s and e <= f for b, f in _replies(text, rs, te, **rule)))


def encode_messages_edited(tokenizer, messages, reply_start, turn_end):
    for m in messages:
        m["content"] = m["content"].strip() + " "
    return SOL["encode_chat"](tokenizer, messages, reply_start, turn_end)


def loss_labels_edited(logits, labels):
    mask = labels[:, 1:] != -100
    labels[labels == -100] = 0
    per_token = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], reduction="none")
    return (per_token * mask).sum() / mask.sum()


def loss_logsumexp_without_max(logits, labels):
    logp = logits - logits.exp().sum(-1, keepdim=True).log()
    return F.nll_loss(logp[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100)


def loss_mask_unshifted(logits, labels):
    mask = labels[:, :-1] != -100
    per_token = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:].clamp(min=0), reduction="none")
    return (per_token * mask).sum() / mask.sum()


def loss_over_all_positions(logits, labels):
    mask = labels[:, 1:] != -100
    per_token = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none")
    return (per_token * mask).sum() / mask.numel()


def loss_no_grad(logits, labels):
    with torch.no_grad():
        return SOL["sft_loss"](logits, labels)


WRONG = {
    "template labels swapped": (checks.check_template, _template(lambda label: ("yes", "no")[label]), "swap 0 and 1"),
    "template Yes/No": (checks.check_template, _template(lambda label: ("No", "Yes")[label]), "label alone"),
    "template leading space": (checks.check_template, _template(lambda label: " " + ("no", "yes")[label]),
                               "label alone"),
    "template full stop": (checks.check_template, _template(lambda label: ("no", "yes")[label] + " ."), "label alone"),
    "template hint in the instruction": (checks.check_template,
                                         lambda text, label: (f"{text}\nhappy ({label}) ?", ("no", "yes")[label]),
                                         "not depend on the label"),
    "encode prompt trained": (check_encode_chat, _encode(lambda *_: True), "prompt tokens"),
    "encode markers trained": (check_encode_chat, _in_replies(include_marker=True), "turn markers are trained"),
    "encode turn end masked": (check_encode_chat, _in_replies(include_end=False), "closing each reply is masked"),
    "encode one character late": (check_encode_chat, _encode(lambda text, s, e, rs, te: any(
        b <= s and e <= f for b, f in _replies_one_char_late(text, rs, te))), "first token of each reply"),
    "encode first reply only": (check_encode_chat, _in_replies(first_only=True), "only the first reply"),
    "encode messages edited in place": (check_encode_chat, encode_messages_edited, "changed messages in place"),
    "loss no shift": (check_sft_loss, lambda lg, lb: F.cross_entropy(lg.flatten(0, 1), lb.flatten()), "no shift"),
    "loss sum": (check_sft_loss, lambda lg, lb: F.cross_entropy(lg[:, :-1].flatten(0, 1), lb[:, 1:].flatten(),
                                                                 reduction="sum"), "a sum"),
    "loss log(softmax)": (check_sft_loss, lambda lg, lb: F.nll_loss(torch.log(lg[:, :-1].softmax(-1)).transpose(1, 2),
                                                                     lb[:, 1:]), "underflows"),
    "loss logsumexp without max": (check_sft_loss, loss_logsumexp_without_max, "without the max"),
    "loss softmax over positions": (check_sft_loss, lambda lg, lb: F.nll_loss(lg[:, :-1].log_softmax(1).transpose(1, 2),
                                                                             lb[:, 1:]), "TRL gives"),
    "loss shifted the wrong way": (check_sft_loss, lambda lg, lb: F.cross_entropy(lg[:, 1:].flatten(0, 1),
                                                                                   lb[:, :-1].flatten()), "TRL gives"),
    "loss labels edited in place": (check_sft_loss, loss_labels_edited, "changed labels in place"),
    "loss mask unshifted": (check_sft_loss, loss_mask_unshifted, "TRL gives"),
    "loss over all positions": (check_sft_loss, loss_over_all_positions, "TRL gives"),
    "loss no grad": (check_sft_loss, loss_no_grad, "no gradient"),
}


def encode_by_token_ids(tokenizer, messages, reply_start, turn_end):
    """Finds the markers' token ids in the chat's ids (no character offsets)."""
    ids = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
    start = tokenizer(reply_start, add_special_tokens=False)["input_ids"]
    end = tokenizer.convert_tokens_to_ids(turn_end)
    labels, inside, i = [-100] * len(ids), False, 0
    while i < len(ids):
        if not inside and ids[i:i + len(start)] == start:
            inside, i = True, i + len(start)
            continue
        if inside:
            labels[i] = ids[i]
            inside = ids[i] != end
        i += 1
    return {"input_ids": ids, "labels": labels}


def loss_per_token_loop(logits, labels):
    total, count = logits.new_zeros(()), 0
    for row in range(labels.size(0)):
        for t in range(1, labels.size(1)):
            if labels[row, t] != -100:
                total = total - logits[row, t - 1].log_softmax(-1)[labels[row, t]]
                count += 1
    return total / count


RIGHT = {
    "solution template": (checks.check_template, SOL["happy_template"]),
    "template if/else": (checks.check_template, lambda text, label: (f"story: {text}\nis someone happy ?",
                                                                      "yes" if label == 1 else "no")),
    "solution encode": (check_encode_chat, SOL["encode_chat"]),
    "encode by token ids": (check_encode_chat, encode_by_token_ids),
    "solution loss": (check_sft_loss, SOL["sft_loss"]),
    "loss loop": (check_sft_loss, loss_per_token_loop),
    "loss masked mean": (check_sft_loss, lambda lg, lb: (lambda m: (F.cross_entropy(
        lg[:, :-1].transpose(1, 2), lb[:, 1:].clamp(min=0), reduction="none") * m).sum() / m.sum())(lb[:, 1:] != -100)),
}


test_a_plausible_wrong_version_loses_its_check, test_a_correct_version_passes = catch_rate_tests(WRONG, RIGHT)
