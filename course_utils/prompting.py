"""Prompting helpers shared by lecture and lab 08: label scoring, k-shot prompts, ensembling, self-consistency, APE.

Everything works with any causal LM and its tokenizer (the course's ``tiny-gpt-reasoner`` or a hub model):
``label_logprobs`` scores label words (several tokens each, summed) after prompts, ``build_prompt`` writes a
k-shot prompt, ``ensemble`` combines templates, ``cot_prompt`` + ``extract_answer`` ask and read a word
problem, ``sample_chains`` + ``vote`` do self-consistency and ``ape_select`` keeps the instruction that scores
best on a dev set and reports it on a test set.
"""
from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence

import torch

from .world.reasoning import DELIMITER, GAIN, LOSE, NUMBER_WORDS, TEMPLATES, TRIGGER, Problem, fill


def _check_model_inputs(prompts, labels) -> None:
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise TypeError("prompts must be a non-empty list of strings (wrap one prompt as [prompt])")
    if isinstance(labels, str) or not labels or not all(isinstance(w, str) and w for w in labels):
        raise TypeError("labels must be a non-empty list of label words such as ['bad', 'good']")


def label_token_ids(tokenizer, prompt: str, label: str) -> tuple[list[int], list[int]]:
    """Token ids of the prompt and of the label that follows it after one space (several ids if the word splits)."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full = tokenizer(prompt + " " + label, add_special_tokens=False)["input_ids"]
    if full[:len(p)] != p:  # a BPE merge across the boundary: tokenise the label on its own
        return p, tokenizer(" " + label, add_special_tokens=False)["input_ids"]
    return p, full[len(p):]


def sequence_scores(logits: torch.Tensor, input_ids: torch.Tensor, label_mask: torch.Tensor) -> torch.Tensor:
    """Summed log-probabilities of the tokens where ``label_mask`` is 1: logits at t predict the token at t+1."""
    logprobs = logits[:, :-1].float().log_softmax(-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (logprobs * label_mask[:, 1:].to(logprobs.dtype)).sum(1)


def label_batch(tokenizer, prompts: Sequence[str], labels: Sequence[str]) -> dict:
    """Right-padded ``input_ids``, ``attention_mask`` and ``label_mask`` for every (prompt, label) pair, prompt-major."""
    rows = [label_token_ids(tokenizer, p, w) for p in prompts for w in labels]
    width = max(len(p) + len(w) for p, w in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros_like(ids)
    label_mask = torch.zeros_like(ids)
    for i, (p, w) in enumerate(rows):
        ids[i, :len(p) + len(w)] = torch.tensor(p + w)
        attention[i, :len(p) + len(w)] = 1
        label_mask[i, len(p):len(p) + len(w)] = 1
    return {"input_ids": ids, "attention_mask": attention, "label_mask": label_mask}


@torch.no_grad()
def label_logprobs(model, tokenizer, prompts: Sequence[str], labels: Sequence[str], batch_size: int = 64,
                   scorer: Callable = sequence_scores) -> torch.Tensor:
    """(len(prompts), len(labels)) log P(label | prompt), every token of a multi-token label counted."""
    _check_model_inputs(prompts, labels)
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(prompts), max(1, batch_size // len(labels))):
        batch = label_batch(tokenizer, prompts[start:start + max(1, batch_size // len(labels))], labels)
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
        logits = logits[:, -batch["input_ids"].shape[1]:]  # a soft prompt (PEFT prompt tuning) adds positions in front
        out.append(scorer(logits.cpu(), batch["input_ids"], batch["label_mask"]).view(-1, len(labels)))
    return torch.cat(out)


def build_prompt(demos: Sequence[tuple[str, str]], query: str, template: str = "review",
                 delimiter: str = DELIMITER, instruction: str | None = None) -> str:
    """A k-shot prompt: optional instruction, the filled demonstrations, then the query up to its label slot."""
    lines = ([instruction] if instruction else []) + [fill(template, x, y) for x, y in demos] + [fill(template, query)]
    return delimiter.join(lines)


def continuations(template: str, words: Sequence[str]) -> list[str]:
    """What follows the label slot for each label word: ``words`` for a prefix template, 'foo .' for a cloze one."""
    template = TEMPLATES.get(template, template)
    return [template[template.index("{y}"):].format(y=w) for w in words]


def classify(model, tokenizer, prompts: Sequence[str], labels: Sequence[str]) -> torch.Tensor:
    """Predicted class index per prompt: the label word with the highest log-probability."""
    return label_logprobs(model, tokenizer, prompts, labels).argmax(-1)


def ensemble(logprobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(templates, examples, labels) log-probs -> (average-probability predictions, majority-vote predictions).

    Each template's scores are normalised over the labels (softmax) before averaging. A vote tie goes to the
    tied label with the highest averaged probability.
    """
    if logprobs.dim() != 3:
        raise ValueError(f"logprobs must be (templates, examples, labels), got shape {tuple(logprobs.shape)}")
    probs = logprobs.float().softmax(-1).mean(0)
    votes = torch.nn.functional.one_hot(logprobs.argmax(-1), logprobs.size(-1)).sum(0).float()
    tied = votes == votes.max(-1, keepdim=True).values
    return probs.argmax(-1), torch.where(tied, probs, torch.full_like(probs, -1.0)).argmax(-1)


def extract_answer(text: str) -> str | None:
    """The course's one answer rule: split on whitespace, take the word after the first 'answer' ':' pair, drop
    its trailing periods; None when there is no such pair or no word after it ('answer : four.' -> 'four')."""
    words = text.split()
    for i in range(len(words) - 1):
        if words[i] == "answer" and words[i + 1] == ":":
            answer = words[i + 2].rstrip(".") if i + 2 < len(words) else ""
            return answer or None
    return None


COT_STYLES = ("direct", "steps", "trigger")


def cot_prompt(problem: Problem, style: str, demos: Sequence[Problem] = ()) -> str:
    """A word-problem prompt in ``style``, every demonstration solved in the same style (matched examples).

    'direct' demonstrations give the answer alone and the query ends with 'answer :'; 'steps' demonstrations
    show the daily totals and the query ends with its question; 'trigger' adds "let 's think step by step ."
    after every question (Kojima et al.'s zero-shot trigger when there are no demonstrations).
    """
    if style not in COT_STYLES:
        raise ValueError(f"style must be one of {COT_STYLES}, got {style!r}")
    solved = {"direct": Problem.direct, "steps": Problem.cot, "trigger": lambda p: p.cot(trigger=True)}[style]
    tail = {"direct": " answer :", "steps": "", "trigger": " " + TRIGGER}[style]
    return DELIMITER.join([solved(d) for d in demos] + [f"{problem.text} {problem.question}{tail}"])


def read_answer(prompt: str, continuation: str) -> str | None:
    """The answer of a generated continuation, read with ``extract_answer`` from the query's line onwards."""
    return extract_answer(prompt.split(DELIMITER)[-1] + " " + continuation)


CHAIN_ERRORS = ("another day's event", "a misread event", "a wrong carried count", "wrong arithmetic",
                "wrong length or answer")


def _event(clause: str) -> tuple[str | None, int | None]:
    """The (op, amount) an event clause means: 'he finds two' -> ('plus', 2); unknown words give None."""
    words = clause.split()
    if len(words) != 3:
        return None, None
    op = "plus" if words[1] in GAIN else "minus" if words[1] in LOSE else None
    return op, NUMBER_WORDS.index(words[2]) if words[2] in NUMBER_WORDS else None


def chain_error(problem: Problem, chain: str) -> str | None:
    """The first mistake of a generated chain ('day one he gets two , three plus two is five . ...'), or None.

    Each written step is compared with the problem's: the event it restates (by meaning: 'gets' and 'finds' both
    add), the count it starts from and the sum it writes; then the number of steps and the final answer."""
    steps = [s.split() for s in chain.split(" . ") if s.split()[:1] == ["day"]]
    number = {w: i for i, w in enumerate(NUMBER_WORDS)}.get
    for i, (words, (op, amount), before, after) in enumerate(zip(steps, problem.steps, problem.totals,
                                                                 problem.totals[1:])):
        clause, _, sums = " ".join(words[2:]).partition(" , ")
        if _event(clause) != (op, amount):
            others = problem.steps[:i] + problem.steps[i + 1:]
            return CHAIN_ERRORS[0] if _event(clause) in others else CHAIN_ERRORS[1]
        got = sums.split()  # 'three plus two is five'
        if len(got) != 5 or number(got[0]) != before:
            return CHAIN_ERRORS[2]
        if (got[1], number(got[2])) != (op, amount) or number(got[4]) != after:
            return CHAIN_ERRORS[3]
    if len(steps) != len(problem.steps) or extract_answer(chain) != problem.answer:
        return CHAIN_ERRORS[4]
    return None


def vote(answers: Sequence[str | None]) -> str | None:
    """The most frequent answer (None ignored); a tie goes to the tied answer that came first."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 48, do_sample: bool = False,
             temperature: float = 1.0, seed: int = 0) -> list[str]:
    """Continuations of ``prompts`` (greedy, or sampled with a seeded generator), cut after the first 'answer : X .'."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings (wrap one prompt as [prompt])")
    device = next(model.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    finally:
        tokenizer.padding_side = side
    torch.manual_seed(seed)
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=do_sample,
                         temperature=temperature if do_sample else None, top_k=0 if do_sample else None,
                         top_p=None, pad_token_id=tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return [t.split(DELIMITER)[0] for t in texts]


def sample_chains(model, tokenizer, prompt: str, n: int, temperature: float = 1.0, seed: int = 0,
                  max_new_tokens: int = 48) -> list[str]:
    """``n`` sampled continuations of one prompt (reproducible from ``seed``)."""
    return generate(model, tokenizer, [prompt] * n, max_new_tokens, do_sample=True, temperature=temperature, seed=seed)


@torch.no_grad()
def prefix_matching(model, tokenizer, texts: Sequence[str]) -> torch.Tensor:
    """(layers, heads) mean attention from a repeated token to the token after its first occurrence: the
    prefix-matching score of an induction head (Olsson et al., 2022). The model must return attentions
    (load it with ``attn_implementation="eager"``)."""
    total, count = 0.0, 0
    for text in texts:
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        attentions = model(input_ids=ids.to(next(model.parameters()).device), output_attentions=True).attentions
        if attentions is None or attentions[0] is None:
            raise ValueError("the model returned no attentions: load it with attn_implementation='eager'")
        att, first = torch.stack(attentions)[:, 0].float().cpu(), {}  # (layers, heads, T, T)
        for t, token in enumerate(ids[0].tolist()):
            if token in first and first[token] + 1 < t:
                total, count = total + att[:, :, t, first[token] + 1], count + 1
            first.setdefault(token, t)
    if not count:
        raise ValueError("no token repeats in texts: give lists that repeat, e.g. R.copy_document")
    return total / count


def ape_select(candidates: Sequence[str], score: Callable[[str, list], float], dev: list, test: list) -> dict:
    """APE's selection: score each distinct candidate once on ``dev``, keep the best (the earliest on ties),
    report it on ``test``; 'dev_scores' maps every distinct candidate to its dev score, in first-seen order."""
    if not candidates:
        raise ValueError("candidates must be a non-empty list of instructions")
    dev_scores = {c: float(score(c, dev)) for c in dict.fromkeys(candidates)}
    best = max(dev_scores, key=dev_scores.get)  # max keeps the first of equal scores
    return {"best": best, "dev": dev_scores[best], "test": float(score(best, test)), "dev_scores": dev_scores}


def evolve(population: Sequence[str], score: Callable[[str, list], float], dev: list,
           mutate: Callable[[str, random.Random], str], generations: int, keep: int = 4, seed: int = 0) -> list[tuple]:
    """A small evolutionary prompt search (EvoPrompt-style): each generation keeps the ``keep`` best instructions on
    ``dev`` (earlier ones first on ties) and adds one mutant of each; returns (best, its dev score) per generation."""
    if not population or keep < 1 or generations < 1:
        raise ValueError("need a non-empty population, keep >= 1 and generations >= 1")
    rng, cache, history = random.Random(seed), {}, []
    pool = list(dict.fromkeys(population))
    for _ in range(generations):
        for c in pool:
            if c not in cache:
                cache[c] = float(score(c, dev))
        pool = sorted(pool, key=cache.get, reverse=True)[:keep]  # a stable sort keeps the earlier of equals first
        history.append((pool[0], cache[pool[0]]))
        pool = list(dict.fromkeys(pool + [mutate(c, rng) for c in pool]))
    return history


class InstructionScorer:
    """``score(instruction, examples)``: accuracy on ``[(text, label), ...]`` with the instruction before a zero-shot prompt."""

    def __init__(self, model, tokenizer, words: Sequence[str], template: str = "review"):
        self.model, self.tokenizer, self.words, self.template = model, tokenizer, list(words), template

    def __call__(self, instruction: str, examples: list) -> float:
        prompts = [build_prompt([], text, self.template, instruction=instruction) for text, _ in examples]
        predicted = label_logprobs(self.model, self.tokenizer, prompts, self.words).argmax(-1)
        return (predicted == torch.tensor([int(label) for _, label in examples])).float().mean().item()


def propose_instructions(model, tokenizer, demos: Sequence, words: Sequence[str], n: int = 8, seed: int = 0,
                         template: str = "review") -> list[str]:
    """APE's proposal step: show labelled demonstrations, then let the model write ``n`` rules ('rule : ...')."""
    prompt = build_prompt([(d.text, words[d.label]) for d in demos], demos[0].text, template)
    prompt = prompt.rsplit(DELIMITER, 1)[0] + DELIMITER + "rule :"
    outs = generate(model, tokenizer, [prompt] * n, max_new_tokens=16, do_sample=True, seed=seed)
    return ["rule :" + o.split(" .")[0] + " ." for o in outs]
