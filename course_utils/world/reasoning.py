"""Prompting data for module 08: few-shot episodes with changing label words, and multi-step word problems.

A tiny GPT pretrained on this mixture does in-context learning and benefits from chain-of-thought:
- **classification episodes**: k demonstrations and a query of one task (the feeling of a story sentence,
  or its topic), written with one prompt template; the label words change from episode to episode
  (bursty data with varying label mappings), so the model must read the demonstrations to answer;
- **word problems** from the story world ("mia has three cups . on day one she gets two . on day two she loses
  one ."), written with
  the answer alone, with the intermediate steps, or with a "let's think step by step" trigger first;
  every episode keeps one format, so demonstrations decide the format of the answer;
- **rules**: an instruction naming the label words ("rule : happy is X , sad is Y .") before or after the
  demonstrations, which lets a prompt state the mapping and lets the model propose instructions (APE).

Evaluation sentences and problems are disjoint from the training ones (``corpus.sentence_split`` of the
sentence, or of a problem's opening sentence): ``split="eval"`` never returns anything ``split="train"`` can.
Within one call ``make_examples`` returns distinct sentences, so ``disjoint_sets`` can cut one draw into a
test set, a demonstration pool and dev sets that share no sentence.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from .corpus import (ANIMALS, COLORS, NAMES, NEGATIVE, NUMBERS, OBJECTS, PLACES, POSITIVE, _chase, _count, _feeling,
                     _give, plural, sentence_split)

SPLITS = ("train", "eval")
REASONING_VERSION = 5  # 5: each day of a word problem adds or takes 1-3 (no one-operation shortcut); 4: ten sentiment patterns; bumped whenever the generated text changes (then run `course models build`)
NUMBER_WORDS = ["zero", *NUMBERS]
DELIMITER = "\n"
# Prompt templates: {x} the input, {y} the label words. "cloze" templates put text after the label.
TEMPLATES = {
    "plain": "{x} {y}",
    "review": "review : {x} label : {y}",
    "input": "input : {x} output : {y}",
    "arrow": "{x} => {y}",
    "cloze": "{x} so it was {y} .",
}
TRAIN_TEMPLATES = ("plain", "plain", "review", "input", "arrow", "cloze")
ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth"]
# Each task: its classes and its natural verbaliser (the words a reader would expect).
TASKS = {
    "sentiment": {"classes": ("negative", "positive"), "natural": ("bad", "good")},
    "topic": {"classes": ("action", "count", "feeling", "give"), "natural": ("animals", "numbers", "feelings", "gifts")},
}
# Label words drawn at random per episode (some are several BPE tokens long).
LABEL_POOL = ["bad", "good", "yes", "no", "foo", "bar", "red", "blue", "cat", "dog", "sun", "moon", "up",
              "down", "left", "right", "zip", "zap", "pink", "gold", "tea", "jam", "wig", "fig"]
VERBALIZERS = {  # sentiment verbalisers the lecture compares (negative word, positive word)
    "bad/good": ("bad", "good"), "sad/happy": ("sad", "happy"), "no/yes": ("no", "yes"),
    "foo/bar": ("foo", "bar"), "good/bad (flipped)": ("good", "bad"), "terrible/wonderful": ("terrible", "wonderful"),
}
GAIN = ("gets", "finds")
LOSE = ("gives", "loses")
TRIGGER = "let 's think step by step ."


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


@dataclass(frozen=True)
class Example:
    """One labelled sentence of a classification task: its text, class index and task name."""

    text: str
    label: int
    task: str
    cue: str = ""  # the word that carries the label (a sentiment sentence's feeling word)


# The sentence patterns of the sentiment task ({f} the feeling word, always last, right before the final '.', so the
# word that carries the label keeps one distance from the label slot): about 4,400 distinct sentences, a fifth of
# them on the evaluation side, so test sets, demonstration pools and dev sets can all be distinct.
SENTIMENT_PATTERNS = (
    "{name} was {f} .", "{name} felt {f} .", "{name} looked {f} .", "the {color} {animal} was {f} .",
    "the {animal} in the {place} was {f} .", "{name} and {other} were {f} .", "at the {place} {name} was {f} .",
    "in the {place} {name} felt {f} .", "with the {obj} {name} looked {f} .", "after the {obj} {name} was {f} .",
)


def core(text: str) -> str:
    """The shortest sentiment pattern a sentence ends with: 'mia felt sad .' for 'in the park mia felt sad .'.

    A sentiment sentence belongs to its core's split, so no evaluation sentence sits inside a training one."""
    words = text.split()
    if len(words) > 4 and words[-4] in NAMES and words[-3] in ("was", "felt", "looked"):
        return " ".join(words[-4:])
    return text


def sentiment_sentence(rng: random.Random, label: int) -> tuple[str, str]:
    """One sentence of the sentiment task with class ``label`` (0 negative, 1 positive) and its feeling word."""
    feeling = rng.choice(POSITIVE if label else NEGATIVE)
    name, other = rng.sample(NAMES, 2)
    text = rng.choice(SENTIMENT_PATTERNS).format(name=name, other=other, f=feeling, place=rng.choice(PLACES),
                                                 color=rng.choice(COLORS), animal=rng.choice(ANIMALS),
                                                 obj=rng.choice(OBJECTS))
    return text, feeling


_MAKERS = {"action": _chase, "count": _count, "feeling": _feeling, "give": _give}


def make_examples(n: int, task: str = "sentiment", split: str = "train", seed: int = 0) -> list[Example]:
    """``n`` distinct labelled sentences of ``task`` from ``split`` (balanced classes, deterministic from ``seed``)."""
    out = _draw(n, task, split, seed)
    random.Random(f"{task}-{split}-{seed}-order").shuffle(out)
    return out


def _draw(n: int, task: str, split: str, seed: int) -> list[Example]:
    """``n`` distinct examples with the classes in turn (0, 1, 0, 1, ...): any slice of it is balanced."""
    _check_split(split)
    if task not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
    rng, out, seen, tries = random.Random(f"{task}-{split}-{seed}"), [], set(), 0
    n_classes = len(TASKS[task]["classes"])
    while len(out) < n:
        tries += 1
        if tries > 200 * n:
            raise ValueError(f"could not find {n} distinct {split} sentences of {task!r}; ask for fewer")
        label, cue = len(out) % n_classes, ""
        if task == "sentiment":
            text, cue = sentiment_sentence(rng, label)
        else:
            text, _ = _MAKERS[TASKS[task]["classes"][label]](rng)
        if text not in seen and sentence_split(core(text)) == split:
            seen.add(text)
            out.append(Example(text, label, task, cue))
    return out


def disjoint_sets(sizes: dict[str, int], task: str = "sentiment", split: str = "eval", seed: int = 0) -> dict:
    """Named sets of examples that share no sentence, e.g. ``{"test": 96, "pool": 200, "dev": 48}``, cut from one draw."""
    if any(not isinstance(n, int) or n < 0 for n in sizes.values()):
        raise ValueError(f"sizes must be non-negative ints, got {sizes!r}")
    items, rng = _draw(sum(sizes.values()), task, split, seed), random.Random(f"sets-{task}-{split}-{seed}")
    out, start = {}, 0
    for name, n in sizes.items():
        out[name], start = items[start:start + n], start + n
        rng.shuffle(out[name])  # balanced classes (a slice of classes in turn), in random order
    return out


def fill(template: str, x: str, y: str = "") -> str:
    """A template with its input and label filled in; ``y=""`` leaves the prompt ending before the label."""
    if template in TEMPLATES:
        template = TEMPLATES[template]
    if "{x}" not in template or "{y}" not in template:
        raise ValueError("a template needs the fields {x} (input) and {y} (label), e.g. 'review : {x} label : {y}'")
    if not y:
        return template[:template.index("{y}")].format(x=x).rstrip()
    return template.format(x=x, y=y)


def rule_text(words: tuple[str, ...], task: str = "sentiment") -> str:
    """The instruction that states a label mapping: 'rule : sad is foo , happy is bar .'."""
    names = {"sentiment": ("sad", "happy"), "topic": TASKS["topic"]["classes"]}[task]
    return "rule : " + " , ".join(f"{c} is {w}" for c, w in zip(names, words)) + " ."


def classification_episode(rng: random.Random, split: str = "train") -> str:
    """One bursty episode: optional rule, k demonstrations and a query, one template and one label mapping."""
    task = "sentiment" if rng.random() < 0.9 else "topic"
    n_classes = len(TASKS[task]["classes"])
    words = TASKS[task]["natural"] if rng.random() < 0.25 else tuple(rng.sample(LABEL_POOL, n_classes))
    template = rng.choice(TRAIN_TEMPLATES)
    k = rng.randint(2, 8) if rng.random() < 0.9 else rng.randint(0, 1)
    items = make_examples(k + 1, task, split, seed=rng.randrange(10**9))
    lines = [fill(template, e.text, words[e.label]) for e in items]
    r = rng.random()
    if task == "sentiment" and r < 0.2:
        lines.insert(0, rule_text(words))
    elif task == "sentiment" and r < 0.3 and k >= 2:
        lines.insert(len(lines) - 1, rule_text(words))  # after the demonstrations: the model learns to state it
    return DELIMITER.join(lines)


@dataclass(frozen=True)
class Problem:
    """A multi-step word problem: its text, the steps (op, amount), every intermediate total and each day's clause."""

    text: str
    question: str
    totals: tuple[int, ...]
    steps: tuple[tuple[str, int], ...]
    days: tuple[str, ...]  # each day's event without its day: 'she loses two'

    @property
    def answer(self) -> str:
        """The final count as a number word."""
        if not 0 <= self.totals[-1] <= 9:
            raise ValueError(f"this problem's count ends at {self.totals[-1]}, outside zero..nine: it has no answer")
        return NUMBER_WORDS[self.totals[-1]]

    def chain(self) -> str:
        """The intermediate steps, one small update each: 'day one she gets two , three plus two is five .'."""
        return " ".join(f"day {NUMBER_WORDS[i]} {day} , {NUMBER_WORDS[before]} {op} {NUMBER_WORDS[amount]} is "
                        f"{NUMBER_WORDS[after]} ." for i, (day, (op, amount), before, after)
                        in enumerate(zip(self.days, self.steps, self.totals, self.totals[1:]), start=1))

    def unit(self, n: int) -> str:
        """The counted object in singular or plural: 'cup' or 'cups'."""
        obj = self.question.split()[2]
        return obj if n != 1 else obj[:-2] if obj.endswith("xes") else obj[:-1]

    def direct(self) -> str:
        """The problem answered directly."""
        return f"{self.text} {self.question} answer : {self.answer} ."

    def cot(self, trigger: bool = False) -> str:
        """The problem answered with its intermediate steps (after the step-by-step trigger if ``trigger``)."""
        return " ".join([self.text, self.question] + [TRIGGER] * trigger + [self.chain(), f"answer : {self.answer} ."])

    def one_day(self, day: int, count: int) -> "Problem":
        """Day ``day`` (1-based) alone as a one-day problem starting from ``count``: a decomposition's sub-problem."""
        if not 1 <= day <= len(self.days) or not 0 <= count <= 9:
            raise ValueError(f"day must be 1..{len(self.days)} and count 0..9, got day={day}, count={count}")
        (op, amount), name = self.steps[day - 1], self.text.split()[0]
        after = count + amount if op == "plus" else count - amount  # may leave zero..nine after a wrong count
        return Problem(f"{name} has {NUMBER_WORDS[count]} {self.unit(count)} . on day one {self.days[day - 1]} .",
                       f"how many {self.unit(2)} does {name} have after one day ?", (count, after),
                       (self.steps[day - 1],), (self.days[day - 1],))


AMOUNTS = (1, 2, 3)  # what one day adds or takes away
SHE_NAMES = ("mia", "ana", "zoe", "ivy", "eva")  # the names the world's problems call "she" (the others "he")


def name_gender(text: str) -> int | None:
    """1 if the first name in ``text`` is one of SHE_NAMES, 0 for another name, None for a sentence without one."""
    name = next((w for w in text.split() if w in NAMES), None)
    return None if name is None else int(name in SHE_NAMES)


def _make_problem(rng: random.Random, steps: int) -> Problem:
    name, obj = rng.choice(NAMES), rng.choice(OBJECTS)
    pronoun = "she" if name in SHE_NAMES else "he"
    totals, ops, days = [rng.randint(0, 9)], [], []
    for _ in range(steps):  # each day gains or loses 1-3, the count staying within zero..nine
        op, amount = rng.choice([(o, a) for o in ("plus", "minus") for a in AMOUNTS
                                 if 0 <= totals[-1] + (a if o == "plus" else -a) <= 9])
        totals.append(totals[-1] + (amount if op == "plus" else -amount))
        ops.append((op, amount))
        days.append(f"{pronoun} {rng.choice(GAIN if op == 'plus' else LOSE)} {NUMBER_WORDS[amount]}")
    start = totals[0]
    text = " ".join([f"{name} has {NUMBER_WORDS[start]} {obj if start == 1 else plural(obj)} ."]
                    + [f"on day {NUMBER_WORDS[i]} {day} ." for i, day in enumerate(days, start=1)])
    question = f"how many {plural(obj)} does {name} have after {NUMBER_WORDS[steps]} {'day' if steps == 1 else 'days'} ?"
    return Problem(text, question, tuple(totals), tuple(ops), tuple(days))


def make_problems(n: int, steps: int | tuple[int, ...] = (1, 2, 3, 4), split: str = "train", seed: int = 0) -> list[Problem]:
    """``n`` distinct word problems of ``split`` with ``steps`` operations each (an int or a tuple to cycle)."""
    _check_split(split)
    steps = (steps,) if isinstance(steps, int) else tuple(steps)
    if not steps or any(not isinstance(s, int) or not 1 <= s <= 5 for s in steps):
        raise ValueError(f"steps must be ints between 1 and 5, got {steps!r}")
    rng, out, seen = random.Random(f"problems-{split}-{seed}"), [], set()
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 200 * n:
            raise ValueError(f"could not find {n} distinct {split} problems with steps={steps}; ask for fewer")
        p = _make_problem(rng, steps[len(out) % len(steps)])
        key = f"{p.text} {p.question}"
        if key not in seen and sentence_split(p.text.split(" . ")[0] + " .") == split:  # split by the opening
            seen.add(key)
            out.append(p)
    return out


def problem_episode(rng: random.Random, split: str = "train") -> str:
    """One bursty episode of 1-3 word problems, all direct, all with steps, or all with the trigger."""
    fmt = rng.choice(("direct", "cot", "trigger"))
    problems = make_problems(rng.randint(1, 2), steps=tuple(rng.randint(1, 4) for _ in range(2)), split=split,
                             seed=rng.randrange(10**9))
    write = {"direct": Problem.direct, "cot": Problem.cot, "trigger": lambda p: p.cot(trigger=True)}[fmt]
    return DELIMITER.join(write(p) for p in problems)


def arithmetic_fact(rng: random.Random) -> str:
    """One step on its own ('three plus two is five .'), the sub-prompt a decomposition asks."""
    a = rng.randint(0, 9)
    if rng.random() < 0.5 and a < 9:
        b = rng.randint(1, min(4, 9 - a))
        return f"{NUMBER_WORDS[a]} plus {NUMBER_WORDS[b]} is {NUMBER_WORDS[a + b]} ."
    b = rng.randint(0, min(4, a))
    return f"{NUMBER_WORDS[a]} minus {NUMBER_WORDS[b]} is {NUMBER_WORDS[a - b]} ."


def copy_document(rng: random.Random, length: int = 8) -> str:
    """A random list of world words, then the same list again: the data that grows induction (copy) heads."""
    words = [rng.choice(NAMES + OBJECTS + NUMBER_WORDS) for _ in range(length)]
    return " ".join(words) + " | " + " ".join(words) + " ."


# Copy lists stay in the mixture (not only a warm-up before it) so the induction heads they grow are not forgotten.
MIXTURE = {"classification": 0.45, "problems": 0.35, "facts": 0.1, "copy": 0.1}


def make_mixture(n: int, split: str = "train", seed: int = 0, mixture: dict | None = None) -> list[str]:
    """``n`` training documents (episodes) drawn from ``mixture`` (shares of classification, problems, facts)."""
    _check_split(split)
    mixture = MIXTURE if mixture is None else mixture
    if set(mixture) - set(MIXTURE) or not mixture:
        raise ValueError(f"mixture keys must be among {list(MIXTURE)}, got {list(mixture)}")
    rng = random.Random(f"mixture-{split}-{seed}")
    kinds, weights = list(mixture), list(mixture.values())
    makers = {"classification": lambda: classification_episode(rng, split),
              "problems": lambda: problem_episode(rng, split),
              "facts": lambda: " ".join(arithmetic_fact(rng) for _ in range(rng.randint(1, 4))),
              "copy": lambda: copy_document(rng, rng.randint(4, 12))}
    return [makers[rng.choices(kinds, weights)[0]]() for _ in range(n)]
