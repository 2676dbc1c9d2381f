"""Checks for lab 04 (instruction tuning); TRL's SFT pipeline and the world's scorers are the oracles.

Oracles: the scorer of the world's task families (is the output the right answer?), the ``labels`` that
TRL's ``SFTTrainer`` builds with ``assistant_only_loss=True`` for the same chat (for a template without
``{% generation %}``, such as Llama 3's, TRL's own training copy of it), and the loss TRL's
``SFTTrainer.compute_loss`` returns on the same batch. When a result is wrong, the checks compare it with
typical mistakes (training on the prompt or the turn markers, masking the end-of-turn token, only the last
reply, labels shifted by hand, an off-by-one at the boundary, no shift in the loss, a mean of per-sequence
means) and name the one that matches.
"""
from __future__ import annotations

import copy
import random
import re
import tempfile
from collections.abc import Callable

import torch

from . import CheckError, assert_unchanged, drawn_seed, fenced, forbids_modules, passed, trained_copy
from .gpt import assert_stable_on_confident_logits
from ..sft import COURSE_MARKERS, IGNORE_INDEX, LLAMA3_MARKERS, collate, quiet_hf, with_llama3_template
from ..world.corpus import make_split_stories
from ..world.instructions import SEEN_FAMILIES, Task, score, task_split

# The course's own answers live in course_utils.sft (lecture 04 uses them) and TRL is the oracle: when
# `course grade` calls the student's functions, code from either may not run.
ANSWERS = ("course_utils.sft", "trl")
ORACLES = ("trl.trainer.sft_trainer",)  # loaded once by `course grade`'s check server (checkproc.preload)
YES_NO = ("no", "yes")  # the verbaliser of the lab's new family: label 1 -> "yes", 0 -> "no"
CHATS = [
    [{"role": "user", "content": "mia has two cups .\nhow many cups does mia have ?"},
     {"role": "assistant", "content": "two"}],
    [{"role": "user", "content": "tom gave the hat to eva at the park .\nwho gave the hat to eva ?"},
     {"role": "assistant", "content": "tom"}],
    [{"role": "user", "content": "the red fox saw the cat in the park .\nwhere did the fox see the cat ?"},
     {"role": "assistant", "content": "park"},
     {"role": "user", "content": "and what color was the fox ?"},
     {"role": "assistant", "content": "red"}],
]


@drawn_seed
def check_template(fn: Callable[[str, int], tuple[str, str]], seed: int = 11) -> None:
    """The (text, label) -> (instruction, output) template of the 'happy' family: is someone happy in the story?"""
    stories = make_split_stories(60, "train", seed=seed)
    outputs = {}
    for story in stories:
        label = int(any(f.get("sentiment") == 1 for f in story.facts))
        got = fn(story.text, label)
        if not (isinstance(got, tuple) and len(got) == 2 and all(isinstance(x, str) for x in got)):
            raise CheckError(f"return a tuple (instruction, output) of two strings, got {fenced(repr(got))}")
        instruction, output = got
        if story.text not in instruction:
            raise CheckError("the instruction must contain the story text unchanged, so the model can read it")
        if instruction.strip() == story.text.strip():
            raise CheckError("the instruction is only the story: add the question or command for the task")
        if story.text in output:
            raise CheckError("the output repeats the story: it should be the answer alone")
        task = Task("happy", instruction, YES_NO[label], YES_NO[label], story.text)
        if not _yes_no_right(task, output):
            swapped = _yes_no_right(Task("happy", instruction, YES_NO[1 - label], YES_NO[1 - label], story.text), output)
            hint = " (it is the answer for the other label: did you swap 0 and 1?)" if swapped else ""
            raise CheckError(f"for label {label} the output should say {YES_NO[label]!r}, got {fenced(repr(output))}{hint}")
        if output != YES_NO[label]:
            raise CheckError(f"the output must be the verbalised label alone, {YES_NO[label]!r}, got "
                             f"{fenced(repr(output))}: the scorer and the model's training target are that one word "
                             "(no spaces or punctuation)")
        outputs.setdefault(label, set()).add(output)
    instructions = {fn(stories[0].text, 0)[0], fn(stories[0].text, 1)[0]}
    if len(instructions) != 1:
        raise CheckError("the instruction must not depend on the label, or the model could read the answer from it")
    passed("template (text, label) -> (instruction, output)")


def _yes_no_right(task: Task, response: str) -> bool:
    words = set(response.lower().replace(".", " ").split())
    return task.answer in words and (set(YES_NO) - {task.answer}).isdisjoint(words)


def _trl_trainer(tokenizer, dataset, out_dir: str, **extra):
    quiet_hf()
    from datasets import Dataset
    from transformers import GPT2Config, GPT2LMHeadModel
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=1, n_head=2,
                                       resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                       pad_token_id=tokenizer.pad_token_id))
    args = SFTConfig(output_dir=out_dir, assistant_only_loss=True, bf16=False, activation_checkpointing=False,
                     use_cpu=True, report_to="none", disable_tqdm=True, save_strategy="no", max_length=512,
                     dataloader_pin_memory=False, per_device_train_batch_size=len(dataset), **extra)
    return SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(dataset), processing_class=tokenizer)


def tokenizer_of(tokenizer):
    """``tokenizer`` itself, or the tokenizer of the model it names (a course model such as 'tiny-gpt', or a hub id).

    Lab 04's check cells pass the model's name, so that `course grade` checks with its own tokenizer rather
    than with the student's object.
    """
    if not isinstance(tokenizer, str):
        return tokenizer
    if tokenizer not in _TOKENIZERS:
        from ..models import RECIPES, hub_reachable, load_pretrained

        if tokenizer in RECIPES:
            _TOKENIZERS[tokenizer] = load_pretrained(tokenizer, progress=False)[1]
        else:
            from transformers import AutoTokenizer

            _TOKENIZERS[tokenizer] = AutoTokenizer.from_pretrained(tokenizer, local_files_only=not hub_reachable())
    return _TOKENIZERS[tokenizer]


_TOKENIZERS: dict = {}


def trl_labels(tokenizer, chats: list[list[dict]]) -> list[dict]:
    """``input_ids`` and ``labels`` that TRL's SFT pipeline (assistant_only_loss=True) makes of each chat."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trl_trainer(tokenizer, [{"messages": c} for c in chats], tmp)
        return [{"input_ids": list(r["input_ids"]), "labels": list(r["labels"])} for r in trainer.train_dataset]


def drawn_chats(seed: int) -> list[list[dict]]:
    """Six chats of one to three exchanges, made of the world's training tasks drawn with ``seed``."""
    tasks = task_split(8, "train", SEEN_FAMILIES, seed=seed)
    random.Random(seed).shuffle(tasks)
    chats, used = [], 0
    for exchanges in (1, 2, 3, 1, 2, 3):
        chats.append([m for t in tasks[used:used + exchanges] for m in t.messages()])
        used += exchanges
    return chats


def _marker_positions(tokenizer, messages: list[dict], marker: str) -> set[int]:
    """Token positions inside the occurrences of ``marker`` in the rendered chat."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = [(m.start(), m.end()) for m in re.finditer(re.escape(marker), text)]
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return {i for i, (s, e) in enumerate(offsets) if any(b <= s and e <= f for b, f in spans)}


def _label_mistake(ids: list[int], labels: list[int], want: list[int], markers: set[int], end_id: int,
                   turn_end: str) -> str:
    """Name the mistake that turns the right trained positions ``want`` into the student's ``labels``."""
    trained = [i for i, lab in enumerate(labels) if lab != IGNORE_INDEX]
    if set(trained) == {i - 1 for i in want} and all(labels[i] == ids[i + 1] for i in trained):
        return ("you shifted the labels yourself: labels[t] must equal input_ids[t] (the model shifts them: the "
                "logits at t are compared with the label at t+1)")
    if any(labels[i] not in (IGNORE_INDEX, ids[i]) for i in range(len(ids))):
        return "a kept label must equal its input token (the model shifts labels itself)"
    if not trained:
        return ("no token is trained: this template has no {% generation %} block, so assistant_masks is all 0; "
                "find each reply from reply_start and turn_end")
    extra = set(trained) - set(want)
    if extra and extra <= markers and set(want) <= set(trained):
        return ("the turn markers are trained: the text that opens a reply is the prompt's, keep it -100 and train "
                "only what follows it")
    if set(want) < set(trained):
        return "you train on prompt tokens too: every token outside the assistant's replies must be -100"
    if set(trained) == {i for i in want if ids[i] != end_id}:
        return (f"the {turn_end} closing each reply is masked: keep it (up to and including the end-of-turn "
                "token), or the model never learns to stop")
    replies = [i for i in want if i - 1 not in want]  # the first position of each reply
    if len(replies) > 1 and set(trained) == {i for i in want if i >= replies[-1]}:
        return "only the last reply is trained: a chat with several exchanges has a reply after every marker"
    if len(replies) > 1 and set(trained) == {i for i in want if i < replies[1]}:
        return ("only the first reply is trained: keep searching for reply_start after each turn_end, a chat with "
                "several exchanges has a reply after every marker")
    if set(trained) == set(want) - set(replies):
        return ("the first token of each reply is not trained: the reply starts right after reply_start, keep every "
                "token from there up to and including turn_end")
    if set(trained) in ({i + 1 for i in want}, {i - 1 for i in want}):
        return "off by one at the boundary: the reply starts right after the marker, whose tokens are -100"
    return f"you train positions {trained}, TRL trains {want}"


@drawn_seed
@forbids_modules(*ANSWERS)
def check_encode_chat(fn: Callable, tokenizer, seed: int = 5) -> None:
    """``fn(tokenizer, messages, reply_start, turn_end)`` must give TRL's input_ids and labels, for two templates.

    The course's template (TRL reads its {% generation %} markers) and Llama 3's, which has none (TRL swaps in
    its training copy), on chats drawn from the world's training tasks. ``tokenizer``: the tokenizer, or the
    name of the model whose tokenizer to use (see ``tokenizer_of``).
    """
    course = tokenizer_of(tokenizer)
    chats = drawn_chats(seed)
    for name, tok, (reply_start, turn_end) in (("the course's", course, COURSE_MARKERS),
                                               ("Llama 3's", with_llama3_template(course), LLAMA3_MARKERS)):
        end_id = tok.convert_tokens_to_ids(turn_end)
        for chat, exp in zip(chats, trl_labels(tok, chats)):
            original = copy.deepcopy(chat)
            got = fn(tok, chat, reply_start, turn_end)
            if chat != original:
                raise CheckError("encode_chat changed messages in place: build new strings and leave the messages as "
                                 "they were (the caller uses them again)")
            if not isinstance(got, dict) or not {"input_ids", "labels"} <= set(got):
                raise CheckError("return a dict with 'input_ids' and 'labels' (lists of ints)")
            ids, labels = [int(i) for i in got["input_ids"]], [int(i) for i in got["labels"]]
            if ids != exp["input_ids"]:
                raise CheckError(f"with {name} template, input_ids differ from the chat template's tokens: tokenise "
                                 "the text tokenizer.apply_chat_template renders (with add_special_tokens=False)")
            if len(labels) != len(ids):
                raise CheckError(f"labels must have one entry per token: {len(labels)} labels for {len(ids)} tokens")
            if labels != exp["labels"]:
                want = [i for i, lab in enumerate(exp["labels"]) if lab != IGNORE_INDEX]
                hint = _label_mistake(ids, labels, want, _marker_positions(tok, chat, reply_start), end_id, turn_end)
                raise CheckError(f"with {name} template (reply_start={reply_start!r}), on a chat of "
                                 f"{len(chat) // 2} exchange(s): {hint}")
    passed("response-only labels from the turn markers, same as TRL's, with and without {% generation %} markers")


@forbids_modules(*ANSWERS)
def check_sft_loss(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], tokenizer) -> None:
    """``fn(logits, labels)`` must equal TRL's SFT loss on the same batch (``tokenizer``: as for ``check_encode_chat``)."""
    tokenizer = tokenizer_of(tokenizer)
    chats = CHATS + [[{"role": "user", "content": "mia was sad because the dog ran away from mia .\nhow did mia feel ?"},
                      {"role": "assistant", "content": "she was very sad and upset about it"}]]
    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trl_trainer(tokenizer, [{"messages": c} for c in chats], tmp)
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(chats))])
        trainer.model.eval()
        with torch.no_grad():
            expected = trainer.compute_loss(trainer.model, dict(batch))
            logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"]
    given = {"logits": logits.clone(), "labels": labels.clone()}
    got = fn(*given.values())
    assert_unchanged(given, {"logits": logits, "labels": labels}, "sft_loss")
    if not torch.is_tensor(got) or got.dim() != 0:
        raise CheckError(f"return the loss as a scalar tensor, got {fenced(repr(got))}")
    if torch.allclose(got.double(), expected.double(), atol=1e-5, rtol=1e-4):
        assert_stable_on_confident_logits(fn, logits, labels, "sft_loss")
        return passed("response-only SFT loss (same as TRL's)")
    ce = torch.nn.functional.cross_entropy
    flat = lambda lg, lb: ce(lg.reshape(-1, lg.size(-1)), lb.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none")
    per_token = flat(logits[:, :-1], labels[:, 1:]).view(labels.size(0), -1)
    mask = labels[:, 1:] != IGNORE_INDEX
    mistakes = {
        "no shift: the logits at position t predict the token at t+1, so compare logits[:, :-1] with labels[:, 1:]":
            ce(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE_INDEX),
        "a mean of per-sequence means: TRL averages over all response tokens of the batch at once":
            ((per_token * mask).sum(1) / mask.sum(1)).mean(),
        "a sum, not a mean: divide by the number of response tokens":
            (per_token * mask).sum(),
        "the loss also covers the prompt: only labels that are not -100 count":
            ce(logits[:, :-1].reshape(-1, logits.size(-1)), batch["input_ids"][:, 1:].reshape(-1)),
    }
    for hint, value in mistakes.items():
        if torch.allclose(got.double(), value.double(), atol=1e-5, rtol=1e-4):
            raise CheckError(f"loss {got.item():.5f} but TRL gives {expected.item():.5f}: {hint}")
    raise CheckError(f"loss {got.item():.5f} but TRL gives {expected.item():.5f} on the same batch")


@drawn_seed
def check_sft_outcome(model, base_model: str, eval_stories: int, seen_margin: float = 0.3,
                      unseen_margin: float = 0.0, seed: int = 1) -> None:
    """SFT must beat the base model: far above on seen families, above on held-out ones (re-measured here).

    Accuracies are measured by the check on evaluation tasks it draws itself (``seed``, shifted by the
    grader's secret draw), from the weights of the student's ``model``: numbers the notebook printed count for nothing.
    """
    from ..models import load_pretrained
    from ..sft import evaluate
    from ..world.instructions import HELD_OUT_FAMILIES, SEEN_FAMILIES, task_split

    tuned = trained_copy(model, base_model)
    base, tokenizer = load_pretrained(base_model, progress=False)
    accuracy = {}
    for key, families in (("seen", SEEN_FAMILIES), ("unseen", HELD_OUT_FAMILIES)):
        tasks = task_split(eval_stories, "eval", families, seed=seed)
        accuracy[key] = evaluate(base, tokenizer, tasks)["all"], evaluate(tuned, tokenizer, tasks)["all"]
    (base_seen, seen), (base_unseen, unseen) = accuracy["seen"], accuracy["unseen"]
    if seen < base_seen + seen_margin:
        raise CheckError(f"SFT accuracy on seen families {seen:.2f} is not {seen_margin} above the base model's "
                         f"{base_seen:.2f} (measured by the check on its own tasks): check the labels and the "
                         "loss, or train longer")
    if unseen <= base_unseen + unseen_margin:
        raise CheckError(f"SFT accuracy on held-out families {unseen:.2f} is not {unseen_margin} above the base "
                         f"model's {base_unseen:.2f} (measured by the check on its own tasks)")
    passed(f"SFT beats the base model (seen {base_seen:.2f} -> {seen:.2f}, unseen {base_unseen:.2f} -> {unseen:.2f})")


__all__ = ["CHATS", "YES_NO", "check_encode_chat", "check_sft_loss", "check_sft_outcome", "check_template", "collate",
           "drawn_chats", "score", "tokenizer_of", "trl_labels"]
