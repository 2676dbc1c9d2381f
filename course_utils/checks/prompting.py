"""Checks for lab 08 (prompting, in-context learning, chain-of-thought).

Oracles: the label log-probabilities ``transformers`` computes itself (the model's own loss with labels
-100 outside the label, one sequence at a time, the forward done here), the course's reference prompt
builder and ensembling/voting rules (``course_utils.prompting``), and chains sampled here with a seeded
generator. When a result is wrong the checks compare it with typical mistakes (first label token only,
a per-token mean, no shift, log-probs averaged across templates, ties broken another way, selecting on
the test set) and name the one that matches.
"""
from __future__ import annotations

import random
from collections.abc import Callable

import torch

from . import CheckError, assert_unchanged, forbids_modules, passed
from .. import prompting as ref
from ..handed import TableScorer

# The course's own answers live in course_utils.prompting (lecture 08 uses them: sequence_scores, build_prompt,
# ensemble, extract_answer and vote, ape_select) and this module computes the references from them: when
# `course grade` calls the student's functions, code from neither may run. The label scores' oracle is the model's
# own loss in transformers, which the student's function (tensors in, tensors out) has no reason to run either.
# check_ape hands the student's function a scorer to call: it lives in course_utils.handed.
ANSWERS = ("course_utils.prompting", "course_utils.checks")
from ..world.reasoning import DELIMITER, TEMPLATES, TRIGGER, make_examples, make_problems

MODEL = "tiny-gpt-reasoner"
MULTI_TOKEN_LABELS = ["terrible", "wonderful", "no", "yes"]
HIDDEN_LABELS = ["foo .", "wonderful .", "pink .", "terrible ."]  # cloze continuations: label word and final '.'



def _model():
    from ..models import load_pretrained

    return load_pretrained(MODEL, progress=False)


def _tensor(x, name: str) -> torch.Tensor:
    if not torch.is_tensor(x):
        raise CheckError(f"{name} must return a torch tensor, got {type(x).__name__}")
    return x.detach().float()


def _extreme_label_scores(fn: Callable, logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> None:
    """The logits scaled x200: far-below-best tokens get softmax 0 in float32 and exp(logit) overflows."""
    extreme = logits * 200
    nll = torch.nn.functional.cross_entropy(extreme[:, :-1].double().transpose(1, 2), ids[:, 1:], reduction="none")
    want = -(nll * mask[:, 1:]).sum(1)
    got = _tensor(fn(extreme.clone(), ids.clone(), mask.clone()), "label_scores")
    if not (got.shape == want.shape and torch.isfinite(got).all() and torch.allclose(got.double(), want, rtol=1e-4)):
        raise CheckError(f"on logits 200x larger (gaps of thousands between tokens) the scores are {got[:4].tolist()}, "
                         f"expected {[round(v, 1) for v in want[:4].tolist()]}: log(softmax(x)) underflows to log(0) "
                         "and exp(x) overflows; use log_softmax (it subtracts the max)")


def _oracle_logprob(model, ids: torch.Tensor, mask: torch.Tensor) -> float:
    """log P(label | prompt) of one row from the model's own loss (labels -100 outside the label)."""
    n = int(mask.sum())
    labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
    length = int(mask.nonzero().max()) + 1
    with torch.no_grad():
        loss = model(input_ids=ids[None, :length], attention_mask=torch.ones(1, length, dtype=torch.long),
                     labels=labels[None, :length]).loss
    return -float(loss) * n


@forbids_modules(*ANSWERS, "transformers")
def check_label_scores(fn: Callable, hidden: bool = False) -> None:
    """``fn(logits, input_ids, label_mask)`` -> summed log-probs of every label token, per row.

    The hidden test scores other sentences, with a cloze template whose continuations ('foo .') are several
    tokens long, so a function fitted to the visible rows fails it."""
    model, tokenizer = _model()
    template, labels, seed = ("cloze", HIDDEN_LABELS, 11) if hidden else ("review", MULTI_TOKEN_LABELS, 4)
    demos = [(e.text, w) for e, w in zip(make_examples(2, seed=seed - 1), ("terrible", "wonderful"))]
    prompts = [ref.build_prompt(demos, q.text, TEMPLATES[template]) for q in make_examples(3, "sentiment", "eval", seed)]
    batch = ref.label_batch(tokenizer, prompts, labels)
    if int(batch["label_mask"].sum(1).max()) < 2:
        raise RuntimeError("the check needs a multi-token label; the tokenizer changed")
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    given = {"logits": logits.clone(), "input_ids": batch["input_ids"].clone(),
             "label_mask": batch["label_mask"].clone()}
    got = _tensor(fn(*given.values()), "label_scores")
    assert_unchanged(given, {"logits": logits, "input_ids": batch["input_ids"], "label_mask": batch["label_mask"]},
                     "label_scores")
    want = torch.tensor([_oracle_logprob(model, i, m) for i, m in zip(batch["input_ids"], batch["label_mask"])])
    if got.shape != want.shape:
        raise CheckError(f"return one score per row, shape {tuple(want.shape)}, got {tuple(got.shape)}")
    if torch.allclose(got, want, atol=1e-3):
        _extreme_label_scores(fn, logits, batch["input_ids"], batch["label_mask"])
        passed("label log-probabilities (every token of a multi-token label)")
        return
    logprobs = logits[:, :-1].log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    mask = batch["label_mask"][:, 1:].float()
    first = mask * (mask.cumsum(1) == 1)
    mistakes = {
        "only the first token of each label is scored: add the log-probs of all its tokens":
            (logprobs * first).sum(1),
        "this is the mean log-prob per label token: log P(label | prompt) is the sum over its tokens":
            (logprobs * mask).sum(1) / mask.sum(1),
        "no shift: the logits at position t predict the token at t + 1":
            (logits.log_softmax(-1).gather(-1, batch["input_ids"][:, :, None]).squeeze(-1)
             * batch["label_mask"]).sum(1),
        "these are probabilities, not log-probabilities": (logprobs.exp() * mask).sum(1),
    }
    for message, wrong in mistakes.items():
        if got.shape == wrong.shape and torch.allclose(got, wrong.float(), atol=1e-3):
            raise CheckError(message)
    raise CheckError(f"scores differ from log P(label | prompt) computed by the model: got {got[:4].tolist()}, "
                     f"expected {want[:4].tolist()}")


CASES = [  # (demos, query, template, delimiter)
    ([("sam was proud .", "foo"), ("ivy was scared .", "bar"), ("ben was angry .", "bar")], "eva was excited .",
     TEMPLATES["cloze"], " | "),
    ([("mia was happy .", "good"), ("tom was sad .", "bad")], "ana was glad .", TEMPLATES["review"], "\n"),
    ([], "leo was upset .", TEMPLATES["input"], "\n"),
    ([("max was glad .", "wonderful")], "zoe was sad .", "### {x} ### means {y}", "\n\n"),
]


INSTRUCTION_CASES = [(demos, query, template, delimiter, instruction) for (demos, query, template, delimiter), instruction
                     in zip(CASES, ["rule : sad is foo , happy is bar .", None, "classify the feeling .", ""])]


@forbids_modules(*ANSWERS)
def check_build_prompt(fn: Callable) -> None:
    """``fn(demos, query, template, delimiter, instruction)`` must equal the reference k-shot prompt exactly."""
    for demos, query, template, delimiter, instruction in INSTRUCTION_CASES:
        got = fn([tuple(d) for d in demos], query, template, delimiter, instruction)
        want = ref.build_prompt(demos, query, template, delimiter, instruction=instruction)
        if not isinstance(got, str):
            raise CheckError(f"return the prompt as a string, got {type(got).__name__}")
        if got == want:
            continue
        if got.startswith(want) and got[len(want):].strip():
            raise CheckError(f"the query must stop where its label goes (nothing after the slot). Expected {want!r}, "
                             f"got {got!r}")
        if instruction and not got.startswith(instruction + delimiter):
            raise CheckError(f"an instruction comes first, on its own line (then the delimiter {delimiter!r}). "
                             f"Expected {want!r}, got {got!r}")
        if not instruction and got.startswith(delimiter):
            raise CheckError("with no instruction (None or '') the prompt starts with the first demonstration, not with "
                             f"the delimiter. Expected {want!r}, got {got!r}")
        if got.rstrip() == want:
            raise CheckError("the prompt ends with whitespace: stop right before the label slot (the label "
                             f"word brings its own leading space). Expected {want!r}")
        if demos and delimiter not in got:
            raise CheckError(f"separate the demonstrations with the delimiter {delimiter!r}")
        if demos and got.find(demos[0][0]) > got.find(demos[-1][0]):
            raise CheckError("keep the demonstrations in the order given")
        raise CheckError(f"for template {template!r}, delimiter {delimiter!r} and {len(demos)} demonstrations "
                         f"expected {want!r}, got {got!r}")
    passed("k-shot prompt building")


def _ensemble_cases() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    cases = [torch.randn(5, 40, 3, generator=g) * 2 for _ in range(2)]
    scaled = torch.randn(3, 40, 2, generator=g)
    scaled[0] = scaled[0] * 8 - 10  # one template with long labels: large negative log-probs of wide spread
    cases.append(scaled)
    ties = torch.tensor([[[0.0, -0.1], [-2.0, 0.0], [0.0, -3.0]],  # 2 templates: votes 1-1 on every example
                         [[-0.2, 0.0], [0.0, -0.05], [-0.1, 0.0]]])
    cases.append(ties)
    four = torch.randn(4, 60, 4, generator=g)
    cases.append(four)
    far = torch.randn(3, 40, 3, generator=g) * 3  # two templates' labels ~1000 nats unlikely: exp underflows to 0
    far[1:] -= 1000
    cases.append(far)
    return cases


@forbids_modules(*ANSWERS)
def check_ensemble(fn: Callable) -> None:
    """``fn(logprobs)`` (templates, examples, labels) -> (average-probability predictions, vote predictions)."""
    for lp in _ensemble_cases():
        given = lp.clone()
        got = fn(given)
        assert_unchanged({"logprobs": given}, {"logprobs": lp}, "ensemble")
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            raise CheckError("return a pair (average-probability predictions, majority-vote predictions)")
        avg, voted = (_tensor(g, "ensemble").long() for g in got)
        want_avg, want_vote = ref.ensemble(lp)
        if avg.shape != want_avg.shape or voted.shape != want_vote.shape:
            raise CheckError(f"return one prediction per example, shape {tuple(want_avg.shape)}")
        if not torch.equal(avg, want_avg):
            if torch.equal(avg, lp.mean(0).argmax(-1)):
                raise CheckError("you averaged raw log-probs across templates: templates with long labels dominate; "
                                 "normalise each template over the labels (softmax) and average probabilities")
            if torch.equal(avg, lp.log_softmax(-1).mean(0).argmax(-1)):
                raise CheckError("you averaged log-probabilities (a geometric mean): average the probabilities")
            if bool((lp.amax(dim=(1, 2)) < -100).any()):
                raise CheckError("the probability-averaging predictions are wrong on templates whose log-probs are "
                                 "near -1000: exp(log-prob) underflows to 0 (0/0 = nan); use softmax (it subtracts "
                                 "the max)")
            raise CheckError("the probability-averaging predictions are wrong: softmax over labels per template, "
                             "mean over templates, argmax")
        if not torch.equal(voted, want_vote):
            votes = torch.nn.functional.one_hot(lp.argmax(-1), lp.size(-1)).sum(0)
            among_tied = votes.gather(-1, voted[:, None].clamp(0, lp.size(-1) - 1)).squeeze(-1) == votes.max(-1).values
            if bool(among_tied.all()):
                raise CheckError("the majority vote is right but ties are broken another way: the stated rule gives "
                                 "a tie to the tied label with the highest averaged probability")
            raise CheckError("the majority-vote predictions are wrong: each template votes for its argmax label")
    passed("prompt ensembling (probability averaging and majority vote with the tie rule)")


def _chains(n_problems: int = 6, n: int = 5, seed: int = 0) -> list[list[str]]:
    model, tokenizer = _model()
    problems = make_problems(n_problems, (2, 3), "eval", seed=seed)
    return [ref.sample_chains(model, tokenizer, f"{p.text} {p.question} {TRIGGER}", n, seed=seed + i)
            for i, p in enumerate(problems)]


TIE_CASES = [
    ["x answer : four .", "answer : six .", "answer : six . answer : four .", "answer : four ."],
    ["answer : two .", "answer : nine .", "no answer here", "answer : nine .", "answer : two ."],
    ["answer : seven .", "answer : one .", "answer : three .", "answer : one .", "answer : seven ."],
    ["answer : eight .", "answer : five .", "answer : five .", "answer : eight ."],
    ["no answer", "still none"],
    ["answer : zero .", "answer : zebra", "answer : zebra", "answer : zero ."],
    ["answer : five .", "answer : three .", "answer : three .", "answer : five ."],
    ["answer : one .", "answer : two .", "answer : three .", "answer : four ."],
    ["answer : two . answer : five .", "answer : two .", "answer : five ."],  # the first answer of a chain counts
    ["answer : six.", "answer : four .", "answer : six ."],  # 'six.' is 'six': trailing periods are dropped
    ["no answer", "none here", "still none", "answer : two ."],  # chains without an answer do not vote
    ["answer: six .", "answer :six", "answer : four ."],  # only 'answer' ':' as two words is an answer
]
ANSWER_CASES = {  # text -> the answer by the lab's rule (split on whitespace, word after 'answer' ':', periods off)
    "day one : four cups . day two : five cups . answer : five .": "five", "answer : four.": "four",
    "answer : seven . answer : two .": "seven", "so the answer : nine ...": "nine", "answer : three cups": "three",
    "no answer here": None, "answer :": None, "answer : .": None, "answer: four": None, "answer :four": None,
    "the answer is six .": None, "answer\t:\nzero": "zero", "my answers : six .": None, "Answer : Four .": None,
    "answer : .four .": ".four",  # whole words, exact case; only TRAILING periods are dropped
}


@forbids_modules(*ANSWERS)
def check_extract_answer(fn: Callable) -> None:
    """``fn(text)`` -> the answer word by the lab's rule, or None; on stated cases and on the model's own chains."""
    chains = [c for cs in _chains(4, 3, seed=7) for c in cs]
    for text, want in list(ANSWER_CASES.items()) + [(c, ref.extract_answer(c)) for c in chains]:
        got = fn(text)
        if got == want:
            continue
        if want is None:
            raise CheckError(f"{text!r} has no answer by the rule (the words 'answer' and ':' in a row, then a word "
                             f"that is not only periods): return None, got {got!r}")
        if isinstance(got, str) and got.rstrip(".") == want:
            raise CheckError(f"drop the trailing periods: {text!r} answers {want!r}, got {got!r}")
        if text.count("answer :") > 1 and got == ref.extract_answer(text[text.rindex("answer :"):]):
            raise CheckError(f"the first 'answer :' counts: {text!r} answers {want!r}, got {got!r}")
        raise CheckError(f"{text!r} answers {want!r} by the rule (split on whitespace, the word after the first "
                         f"'answer' ':', trailing periods dropped), got {got!r}")
    passed("answer extraction: one stated rule")


def _cot_cases() -> list[tuple]:
    problems = make_problems(6, (1, 2, 3, 4), "eval", seed=12)
    demos = make_problems(2, (2, 3), "train", seed=13)
    return [(p, style, demos[:k]) for p, (style, k) in zip(problems, [("direct", 0), ("steps", 1), ("trigger", 0),
                                                                    ("direct", 2), ("trigger", 2), ("steps", 0)])]


@forbids_modules(*ANSWERS)
def check_cot_prompt(fn: Callable) -> None:
    """``fn(problem, style, demos)`` must equal the reference prompt for every style, with and without demonstrations."""
    for problem, style, demos in _cot_cases():
        got, want = fn(problem, style, list(demos)), ref.cot_prompt(problem, style, demos)
        if not isinstance(got, str):
            raise CheckError(f"return the prompt as a string, got {type(got).__name__}")
        if got == want:
            continue
        shown = f"(style {style!r}, {len(demos)} demonstrations): expected {want!r}, got {got!r}"
        query = want.split(DELIMITER)[-1]
        if demos and got.split(DELIMITER)[-1] == query:
            raise CheckError(f"write every demonstration in the query's style, so the examples match {shown}")
        if style == "direct" and got.rstrip().endswith(problem.question):
            raise CheckError(f"a direct prompt ends with 'answer :' so the model gives the answer at once {shown}")
        if style == "trigger" and TRIGGER not in got.split(DELIMITER)[-1]:
            raise CheckError(f"the 'trigger' style puts {TRIGGER!r} after the query's question {shown}")
        if got.rstrip() == want:
            raise CheckError(f"the prompt ends with whitespace {shown}")
        raise CheckError(f"the prompt differs {shown}")
    passed("chain-of-thought prompts: direct, with steps and with the trigger, demonstrations matched")


@forbids_modules(*ANSWERS)
def check_self_consistency(fn: Callable) -> None:
    """``fn(chains)`` -> the majority answer of the chains (first 'answer : X' of each), ties to the earliest."""
    for chains in TIE_CASES + [c for cs in _chains() for c in [cs]]:
        got, want = fn(list(chains)), ref.vote([ref.extract_answer(c) for c in chains])
        if got == want:
            continue
        answers = [ref.extract_answer(c) for c in chains]
        if want is None:
            raise CheckError(f"no chain has an answer, return None (got {got!r})")
        if got is None:
            raise CheckError(f"chains without an answer do not vote: the majority of the answers given is {want!r} "
                             f"(chains: {chains!r})")
        if got is None or got not in answers:
            raise CheckError(f"{got!r} is not an answer of these chains: read each chain's answer with the rule of "
                             f"exercise 4 (chains: {chains!r})")
        counts = {a: answers.count(a) for a in answers if a is not None}
        if counts.get(got) == max(counts.values()):
            raise CheckError(f"ties are broken another way: the rule gives a tie to the answer that appears first "
                             f"(expected {want!r}, got {got!r} for {chains!r})")
        raise CheckError(f"expected the majority answer {want!r}, got {got!r} for {chains!r}")
    passed("self-consistency: answer extraction and majority vote")


@forbids_modules(*ANSWERS)
def check_ape(fn: Callable) -> None:
    """``fn(candidates, score, dev, test)`` selects on dev and reports the chosen instruction's test score."""
    rng = random.Random(0)
    candidates = [f"rule : happy is {a} , sad is {b} ." for a, b in
                  [("good", "bad"), ("yes", "no"), ("foo", "bar"), ("sun", "moon"), ("up", "down")]]
    proposals = candidates + [candidates[1], candidates[3]]  # a model proposes some instructions twice
    dev, test = [("dev sentence", 1), ("x", 0)], [("test sentence", 0), ("y", 1)]
    for trial in range(3):
        dev_acc = [round(rng.uniform(0.4, 0.9), 3) for _ in candidates]
        test_acc = [round(rng.uniform(0.4, 0.9), 3) for _ in candidates]
        best_dev = max(range(len(candidates)), key=dev_acc.__getitem__)
        best_test = max(range(len(candidates)), key=test_acc.__getitem__)
        if best_dev == best_test:
            test_acc[best_dev], test_acc[(best_dev + 1) % len(candidates)] = 0.3, 0.95
            best_test = (best_dev + 1) % len(candidates)
        if trial == 2:  # a tie on dev between two instructions: the one proposed first wins
            partner = next(i for i in range(len(candidates)) if i not in (best_dev, best_test))
            dev_acc[partner] = dev_acc[best_dev]
            best_dev = min(best_dev, partner)
        scorer = TableScorer({c: {"dev sentence": d, "test sentence": t}
                              for c, d, t in zip(candidates, dev_acc, test_acc)})
        got = fn(list(proposals), scorer, [list(x) for x in dev], [list(x) for x in test])
        if not isinstance(got, dict) or not {"best", "dev", "test"} <= set(got):
            raise CheckError("return a dict with keys 'best' (the instruction), 'dev' and 'test' (its scores) and "
                             "'dev_scores' (each distinct candidate's dev score)")
        if got["best"] == candidates[best_test] or got.get("dev") == test_acc[best_test]:
            raise CheckError("you selected the instruction on the test set: select on dev and only report test, "
                             "or the test score is optimistic")
        scores = got.get("dev_scores")
        if not isinstance(scores, dict) or list(scores) != candidates:
            raise CheckError("'dev_scores' maps each distinct candidate, once, in the order first proposed, to its "
                             f"dev score: expected keys {candidates}, got {list(scores)[:8] if isinstance(scores, dict) else scores!r}")
        if any(abs(float(scores[c]) - s) > 1e-9 for c, s in zip(candidates, dev_acc)):
            raise CheckError("'dev_scores' must hold each candidate's score on dev (call score(candidate, dev))")
        if got["best"] != candidates[best_dev]:
            tie = " (a tie on dev goes to the candidate proposed first)" if trial == 2 else ""
            raise CheckError(f"the best instruction on dev is {candidates[best_dev]!r}{tie}, got {got['best']!r}")
        if abs(float(got["dev"]) - dev_acc[best_dev]) > 1e-9:
            raise CheckError(f"'dev' must be the chosen instruction's dev score {dev_acc[best_dev]}, got {got['dev']}")
        if abs(float(got["test"]) - test_acc[best_dev]) > 1e-9:
            hint = " (that is its dev score)" if abs(float(got["test"]) - dev_acc[best_dev]) < 1e-9 else ""
            raise CheckError(f"'test' must be the chosen instruction's test score {test_acc[best_dev]}{hint}")
    passed("APE selection: chosen on dev, reported on test")
