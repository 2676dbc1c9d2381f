"""Instruction tasks with verifiable answers, built from the stories' facts (FLAN/T0-style templates).

A *family* is one kind of task (where did it happen? how many? is the story positive?). Each family
turns a story into template fields (the story, the question's words and the answer) and phrases them
with one of several instruction templates, so the same task is asked in different words. Every family
has a scorer: ``score(task, response)`` says whether a response is right, so models are *measured*.
``SEEN_FAMILIES`` are used for supervised fine-tuning; ``HELD_OUT_FAMILIES`` are never trained on and
measure whether instruction tuning generalises to new tasks (T0/FLAN's held-out task clusters).
"""
from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from collections.abc import Callable, Sequence

from .corpus import NAMES, NEGATIVE, NUMBERS, PLACES, POSITIVE, Story, make_split_stories, plural

SENTIMENTS = ("positive", "negative")
BASE_FORM = {"chased": "chase", "found": "find", "saw": "see", "followed": "follow", "helped": "help",
             "watched": "watch"}  # "where did the fox chase the dog ?"


@dataclass(frozen=True)
class Template:
    """A FLAN-style template: ``instruction`` and ``output`` are format strings over a record's fields."""

    instruction: str
    output: str = "{answer}"

    def apply(self, fields: dict) -> tuple[str, str]:
        """Turn one record's fields (text, label, ...) into an (instruction, output) pair."""
        try:
            return self.instruction.format(**fields), self.output.format(**fields)
        except KeyError as exc:
            raise ValueError(f"template needs field {exc} but the record has {sorted(fields)}") from None


@dataclass(frozen=True)
class Task:
    """One instruction with its reference output and the answer the scorer checks."""

    family: str
    instruction: str
    output: str
    answer: str
    story: str

    def messages(self, response: str | None = None) -> list[dict]:
        """The chat messages: the user's instruction, and the assistant's reply (the reference by default)."""
        return [{"role": "user", "content": self.instruction},
                {"role": "assistant", "content": self.output if response is None else response}]


@dataclass(frozen=True)
class Family:
    """A task family: how to read template fields off a story, its templates and its answer vocabulary."""

    name: str
    records: Callable[[Story], list[dict]]  # story -> template fields, each with an 'answer'
    templates: tuple[Template, ...]
    choices: tuple[str, ...]  # every possible answer word; naming another one makes a response wrong
    is_list: bool = False  # the answer is a set of words (in any order)


def words(text: str) -> list[str]:
    """Lower-case words of a response, punctuation dropped."""
    return re.findall(r"[a-z]+", text.lower())


def _facts(story: Story, kind: str) -> list[dict]:
    return [f for f in story.facts if f["kind"] == kind]


def _where(story: Story) -> list[dict]:
    return [{"story": story.text, "subject": f["subject"], "verb": BASE_FORM[f["verb"]], "object": f["object"],
             "answer": f["place"]} for f in _facts(story, "action")]


def _how_many(story: Story) -> list[dict]:
    return [{"story": story.text, "subject": f["subject"], "objects": plural(f["object"]),
             "answer": NUMBERS[f["count"] - 1]} for f in _facts(story, "count")]


def _sentiment(story: Story) -> list[dict]:
    feelings = {f["sentiment"] for f in _facts(story, "feeling")}
    if len(feelings) != 1:  # no feeling, or mixed feelings: the story has no single sentiment
        return []
    return [{"story": story.text, "text": story.text, "answer": SENTIMENTS[1 - feelings.pop()]}]


def _who_gave(story: Story) -> list[dict]:
    return [{"story": story.text, "object": f["object"], "recipient": f["recipient"], "answer": f["subject"]}
            for f in _facts(story, "give")]


def _names(story: Story) -> list[dict]:
    found = [w for w in story.text.split() if w in NAMES]
    unique = list(dict.fromkeys(found))
    return [{"story": story.text, "answer": " , ".join(unique)}] if unique else []


def _give_place(story: Story) -> list[dict]:
    return [{"story": story.text, "giver": f["subject"], "object": f["object"], "recipient": f["recipient"],
             "answer": f["place"]} for f in _facts(story, "give")]


def _person_sentiment(story: Story) -> list[dict]:
    return [{"story": story.text, "subject": f["subject"], "answer": SENTIMENTS[1 - f["sentiment"]]}
            for f in _facts(story, "feeling")]


def _who_felt(story: Story) -> list[dict]:
    return [{"story": story.text, "feeling": f["feeling"], "answer": f["subject"]} for f in _facts(story, "feeling")]


T = Template
FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("where", _where, (T("{story}\nwhere did the {subject} {verb} the {object} ?"),
                             T("{story}\nin which place did the {subject} {verb} the {object} ?"),
                             T("read the story and say where the {subject} {verb} the {object} .\n{story}")),
           tuple(PLACES)),
    Family("how_many", _how_many, (T("{story}\nhow many {objects} does {subject} have ?"),
                                   T("{story}\ncount the {objects} of {subject} ."),
                                   T("tell me how many {objects} {subject} has .\n{story}")),
           tuple(NUMBERS)),
    Family("sentiment", _sentiment, (T("{text}\nis this story positive or negative ?"),
                                     T("{text}\nwhat is the sentiment of the story ?"),
                                     T("classify the story as positive or negative .\n{text}")),
           SENTIMENTS),
    Family("who_gave", _who_gave, (T("{story}\nwho gave the {object} to {recipient} ?"),
                                   T("{story}\nwhich person gave {recipient} the {object} ?"),
                                   T("name who gave the {object} to {recipient} .\n{story}")),
           tuple(NAMES)),
    Family("names", _names, (T("{story}\nlist the names in the story ."),
                             T("{story}\nwho is in this story ?"),
                             T("write every name that appears in the story .\n{story}")),
           tuple(NAMES), is_list=True),
    # held-out families: never used for SFT. Each asks a NEW question (an unseen template on a different kind of
    # sentence) whose answer is of a kind a seen family answers: a place, a sentiment, a name (T0/FLAN-style
    # held-out tasks), so a model can only get them right by generalising what SFT taught it.
    Family("give_place", _give_place, (T("{story}\nat which place did {giver} give the {object} to {recipient} ?"),
                                       T("{story}\nwhere did {recipient} get the {object} from {giver} ?")),
           tuple(PLACES)),
    Family("person_sentiment", _person_sentiment, (T("{story}\nwas {subject} feeling positive or negative ?"),
                                                   T("{story}\ndescribe the mood of {subject} : positive or negative ?")),
           SENTIMENTS),
    Family("who_felt", _who_felt, (T("{story}\nwho was {feeling} ?"),
                                   T("{story}\nname the person who felt {feeling} .")),
           tuple(NAMES)),
]}
SEEN_FAMILIES = ("where", "how_many", "sentiment", "who_gave", "names")
# A digest of every family's wording: tiny-gpt's tokenizer is fitted on these texts, so the course models' recipe
# key (course_utils.models.recipes) must change whenever a template or family changes.
TEMPLATES_DIGEST = hashlib.sha256(repr([(f.name, f.templates, f.choices) for f in FAMILIES.values()]).encode()
                                  ).hexdigest()[:12]
HELD_OUT_FAMILIES = ("give_place", "person_sentiment", "who_felt")


def _family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown task family {name!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[name]


def family_records(family: str, story: Story) -> list[dict]:
    """The family's unambiguous records for one story (a question whose answer the story fixes)."""
    records = _family(family).records(story)
    keys = [tuple(sorted((k, v) for k, v in r.items() if k != "answer")) for r in records]
    return [r for r, k in zip(records, keys) if keys.count(k) == 1]


# Families that ask about the whole story (its one sentiment, every name) have no distractor: another word of the
# asked kind would change the answer, not compete with it. ``distractors=True`` keeps all their records.
WHOLE_STORY_FAMILIES = ("sentiment", "names")


def has_distractor(family: str, story: Story, record: dict) -> bool:
    """True if the story also holds a wrong candidate of the asked kind: another place, count or person
    (for person_sentiment: a person with the opposite feeling), so the answer needs reading the question."""
    if family in WHOLE_STORY_FAMILIES:
        return True
    if family == "person_sentiment":
        return any(f["sentiment"] == SENTIMENTS.index(record["answer"]) for f in _facts(story, "feeling"))
    return any(w in _family(family).choices and w != record["answer"] for w in story.text.split())


def make_tasks(stories: Sequence[Story], families: Sequence[str] = SEEN_FAMILIES, seed: int = 0,
               templates: str | int = "random", distractors: bool = False) -> list[Task]:
    """One task per (story, family, record), phrased by a random template (or template number ``templates``).

    ``distractors=True`` keeps only records whose story also holds a wrong candidate (``has_distractor``).
    """
    if isinstance(families, str):
        raise TypeError("families must be a list of family names, e.g. ['where', 'how_many']")
    rng = random.Random(seed)
    tasks = []
    for story in stories:
        for name in families:
            fam = _family(name)
            for record in family_records(name, story):
                if distractors and not has_distractor(name, story, record):
                    continue
                template = fam.templates[rng.randrange(len(fam.templates))] if templates == "random" \
                    else fam.templates[templates]
                instruction, output = template.apply(record)
                tasks.append(Task(name, instruction, output, record["answer"], story.text))
    return tasks


def task_split(n_stories: int, split: str = "train", families: Sequence[str] = SEEN_FAMILIES,
               seed: int = 0, min_sentences: int = 1, max_sentences: int = 2, distractors: bool = False) -> list[Task]:
    """Tasks on ``n_stories`` stories of one split ('train' or 'eval'); the two splits share no sentence."""
    stories = make_split_stories(n_stories, split, seed=seed, min_sentences=min_sentences, max_sentences=max_sentences)
    return make_tasks(stories, families, seed=seed, distractors=distractors)


def heuristic_answer(task: Task) -> str:
    """A no-reading baseline: the first word of the asked kind in the story (every name for 'names'; for the
    sentiment families, the sentiment of the first feeling word)."""
    fam = _family(task.family)
    story = task.story.split()
    if fam.is_list:
        return " , ".join(dict.fromkeys(w for w in story if w in fam.choices))
    if fam.choices == SENTIMENTS:
        feeling = next((w for w in story if w in POSITIVE + NEGATIVE), None)
        return "" if feeling is None else SENTIMENTS[0 if feeling in POSITIVE else 1]
    return next((w for w in story if w in fam.choices), "")


def score(task: Task, response: str) -> bool:
    """True if ``response`` answers ``task``: it names the answer and no other possible answer."""
    fam = _family(task.family)
    said = {w for w in words(response) if w in fam.choices}
    expected = set(words(task.answer))
    if fam.is_list:
        return said == expected
    return said == expected and len(expected) == 1


def in_format(task: Task, response: str) -> bool:
    """True if ``response`` is an answer of the asked kind, right or wrong: only the family's answer words, one of
    them (or, for a list family, at least one, none repeated)."""
    said = words(response)
    if not said or any(w not in _family(task.family).choices for w in said):
        return False
    return len(set(said)) == len(said) if _family(task.family).is_list else len(said) == 1


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F1 of two texts: the longest common subsequence of their words, against both lengths."""
    x, y = a.split(), b.split()
    if not x or not y:
        return 0.0
    prev = [0] * (len(y) + 1)
    for wx in x:
        cur = [0]
        for j, wy in enumerate(y):
            cur.append(prev[j] + 1 if wx == wy else max(prev[j + 1], cur[j]))
        prev = cur
    return 2 * prev[-1] / (len(x) + len(y))


def accuracy(tasks: Sequence[Task], responses: Sequence[str]) -> dict[str, float]:
    """Fraction of right responses per family, plus 'all'."""
    if len(tasks) != len(responses):
        raise ValueError(f"got {len(tasks)} tasks but {len(responses)} responses: pass one response per task")
    hits: dict[str, list[bool]] = {}
    for task, response in zip(tasks, responses):
        hits.setdefault(task.family, []).append(score(task, response))
    out = {fam: sum(h) / len(h) for fam, h in hits.items()}
    out["all"] = sum(sum(h) for h in hits.values()) / max(1, len(tasks))
    return out
