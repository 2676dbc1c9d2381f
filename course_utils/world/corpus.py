"""The course's offline text world: short seeded stories with known ground truth.

Each story is a few simple English sentences built from templates, together with the facts that
generated it (who did what to whom, where, how many, how someone felt). Small models learn this
world on a CPU in about a minute, and because the facts are known, later lessons can measure what a
model got right instead of eyeballing it. ``make_corpus`` returns plain strings; any user text file
can take its place (see ``read_text_file``).
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

NAMES = ["mia", "tom", "sam", "ana", "leo", "zoe", "max", "ivy", "ben", "eva"]
ANIMALS = ["cat", "dog", "bird", "fox", "rabbit", "horse", "mouse", "duck"]
OBJECTS = ["ball", "apple", "book", "box", "hat", "kite", "cake", "cup"]
PLACES = ["park", "garden", "house", "forest", "school", "river", "kitchen", "village"]
COLORS = ["red", "blue", "green", "yellow", "brown", "white"]
ACTIONS = ["chased", "found", "saw", "followed", "helped", "watched"]
POSITIVE = ["happy", "glad", "excited", "proud"]
NEGATIVE = ["sad", "angry", "scared", "upset"]
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# Bumped whenever the generated text changes (the shipped course models must then be rebuilt: `course models build`).
WORLD_VERSION = 2  # 2: "boxes", not "boxs"


def plural(noun: str) -> str:
    """The plural of one of the world's nouns: 'boxes', 'cups'."""
    return noun + ("es" if noun.endswith(("s", "x", "ch", "sh")) else "s")


@dataclass(frozen=True)
class Story:
    """One generated story: its text and the facts (ground truth) it was built from."""

    text: str
    facts: list[dict] = field(default_factory=list)


def _chase(rng: random.Random) -> tuple[str, dict]:
    color, animal, other = rng.choice(COLORS), *rng.sample(ANIMALS, 2)
    action, place = rng.choice(ACTIONS), rng.choice(PLACES)
    text = f"the {color} {animal} {action} the {other} in the {place} ."
    return text, {"kind": "action", "subject": animal, "color": color, "verb": action, "object": other, "place": place}


def _count(rng: random.Random) -> tuple[str, dict]:
    name, obj, n = rng.choice(NAMES), rng.choice(OBJECTS), rng.randint(1, 9)
    noun = obj if n == 1 else plural(obj)
    text = f"{name} has {NUMBERS[n - 1]} {noun} ."
    return text, {"kind": "count", "subject": name, "object": obj, "count": n}


def _feeling(rng: random.Random) -> tuple[str, dict]:
    name, animal = rng.choice(NAMES), rng.choice(ANIMALS)
    positive = rng.random() < 0.5
    feeling = rng.choice(POSITIVE if positive else NEGATIVE)
    reason = "played with" if positive else "ran away from"
    text = f"{name} was {feeling} because the {animal} {reason} {name} ."
    return text, {"kind": "feeling", "subject": name, "feeling": feeling, "sentiment": 1 if positive else 0, "animal": animal}


def _give(rng: random.Random) -> tuple[str, dict]:
    giver, taker = rng.sample(NAMES, 2)
    obj, place = rng.choice(OBJECTS), rng.choice(PLACES)
    text = f"{giver} gave the {obj} to {taker} at the {place} ."
    return text, {"kind": "give", "subject": giver, "object": obj, "recipient": taker, "place": place}


SENTENCE_MAKERS = (_chase, _count, _feeling, _give)


def make_stories(n: int, seed: int = 0, min_sentences: int = 2, max_sentences: int = 4) -> list[Story]:
    """Generate ``n`` stories of ``min_sentences``..``max_sentences`` sentences, deterministically from ``seed``."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not 1 <= min_sentences <= max_sentences:
        raise ValueError(f"need 1 <= min_sentences <= max_sentences, got {min_sentences}, {max_sentences}")
    rng = random.Random(seed)
    stories = []
    for _ in range(n):
        parts = [rng.choice(SENTENCE_MAKERS)(rng) for _ in range(rng.randint(min_sentences, max_sentences))]
        stories.append(Story(text=" ".join(t for t, _ in parts), facts=[f for _, f in parts]))
    return stories


SPLITS = ("train", "eval")
EVAL_FRACTION = 0.2  # share of all possible sentences that belong to evaluation stories


def sentence_split(sentence: str) -> str:
    """'eval' or 'train' for one sentence, fixed by a hash, so no sentence is ever on both sides."""
    if not isinstance(sentence, str) or not sentence.strip():
        raise ValueError("sentence must be a non-empty string such as 'mia has two cups .'")
    bucket = int(hashlib.sha256(sentence.strip().encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "eval" if bucket < EVAL_FRACTION else "train"


def make_split_stories(n: int, split: str = "train", seed: int = 0, min_sentences: int = 1,
                       max_sentences: int = 2) -> list[Story]:
    """Like ``make_stories`` but every sentence belongs to ``split``: train and eval stories share no sentence."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not 1 <= min_sentences <= max_sentences:
        raise ValueError(f"need 1 <= min_sentences <= max_sentences, got {min_sentences}, {max_sentences}")
    rng = random.Random(f"{split}-{seed}")
    stories = []
    for _ in range(n):
        parts, k = [], rng.randint(min_sentences, max_sentences)
        while len(parts) < k:
            text, fact = rng.choice(SENTENCE_MAKERS)(rng)
            if sentence_split(text) == split:
                parts.append((text, fact))
        stories.append(Story(text=" ".join(t for t, _ in parts), facts=[f for _, f in parts]))
    return stories


def sentences(text: str) -> list[str]:
    """The sentences of a world text (each ends with ' .')."""
    return [s.strip() + " ." for s in text.split(" .") if s.strip()]


def make_corpus(n: int, seed: int = 0) -> list[str]:
    """The texts of ``make_stories(n, seed)``: a list of strings ready for a tokenizer."""
    return [story.text for story in make_stories(n, seed)]


def vocabulary() -> list[str]:
    """Every word the generator can emit (a closed world: useful for baselines and checks)."""
    words = {".", "the", "in", "has", "was", "because", "played", "with", "ran", "away", "from", "gave", "to", "at"}
    for group in (NAMES, ANIMALS, PLACES, COLORS, ACTIONS, POSITIVE, NEGATIVE, NUMBERS):
        words.update(group)
    words.update(OBJECTS)
    words.update(plural(o) for o in OBJECTS)
    return sorted(words)


def read_text_file(path: str | Path, min_chars: int = 100) -> str:
    """Read a user's UTF-8 text file to train on, with a clear error when it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} is not a file: pass the path of a plain UTF-8 text file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text ({exc}); convert it, e.g. with iconv -t utf-8") from None
    if len(text) < min_chars:
        raise ValueError(f"{path} has {len(text)} characters; give at least {min_chars} to train on")
    return text
