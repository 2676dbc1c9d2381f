"""The prompting world of module 08: deterministic, well-formed, and its eval split disjoint from training."""
import random
import re

import pytest

from course_utils.world import reasoning as R
from course_utils.world.corpus import NEGATIVE, POSITIVE, sentence_split

FEELINGS = set(POSITIVE + NEGATIVE)


def test_examples_are_balanced_deterministic_and_in_their_split():
    a = R.make_examples(40, "sentiment", "eval", seed=1)
    assert a == R.make_examples(40, "sentiment", "eval", seed=1)
    assert sum(e.label for e in a) == 20
    assert all(sentence_split(R.core(e.text)) == "eval" for e in a)  # the split of its shortest pattern
    assert R.core("in the park mia felt sad .") == "mia felt sad ." == R.core("mia felt sad .")
    assert R.core("mia and tom were sad .") == "mia and tom were sad ."
    topics = R.make_examples(40, "topic", "train")
    assert {e.label for e in topics} == {0, 1, 2, 3}


def test_problem_steps_and_chain_are_right():
    amounts = set()
    for p in R.make_problems(200, (1, 2, 3, 4)):
        assert len(p.steps) == len(p.days) == len(p.totals) - 1 and all(0 <= t <= 9 for t in p.totals)
        total = p.totals[0]
        for i, ((op, amount), after) in enumerate(zip(p.steps, p.totals[1:]), start=1):
            total = total + amount if op == "plus" else total - amount
            assert total == after and f"on day {R.NUMBER_WORDS[i]} {p.days[i - 1]} ." in p.text
            amounts.add(amount)
        assert p.direct().endswith(f"answer : {p.answer} .")
        chain = p.chain()
        assert chain.count(" is ") == len(p.steps) and chain.endswith(f"is {p.answer} .")
        assert p.cot(trigger=True).split(R.TRIGGER)[1].strip().startswith(chain)
    assert amounts == set(R.AMOUNTS)  # no one-operation shortcut: a day adds or takes away one to three


def test_one_day_sub_problems_chain_to_the_answer():
    for p in R.make_problems(40, (2, 3, 4), "eval", seed=2):
        count = p.totals[0]
        for day in range(1, len(p.steps) + 1):
            sub = p.one_day(day, count)
            assert sub.question.endswith("after one day ?") and sub.text.count(" . ") == 1
            count = R.NUMBER_WORDS.index(sub.answer)
        assert R.NUMBER_WORDS[count] == p.answer
    p = R.make_problems(1, 2, "eval", seed=2)[0]
    with pytest.raises(ValueError, match="day must be"):
        p.one_day(3, 0)
    off = p.one_day(1, 0 if p.steps[0][0] == "minus" else 9)  # a wrong earlier count can leave the range
    with pytest.raises(ValueError, match="no answer"):
        off.answer


def _training_text() -> str:
    return "\n".join(R.make_mixture(3000, "train", seed=0))


def test_no_eval_sentence_or_problem_appears_in_the_training_mixture():
    text = _training_text()
    assert "was happy" in text or "was glad" in text, "the mixture should contain classification sentences"
    for e in R.make_examples(200, "sentiment", "eval", seed=0) + R.make_examples(100, "topic", "eval", seed=0):
        assert re.search(rf"\b{re.escape(e.text)}(?=\W|$)", text) is None, e.text
    for p in R.make_problems(200, (1, 2, 3, 4), "eval", seed=0):  # a problem is its text and its question
        assert p.text.split(" . ")[0] not in text, p.text  # not even its opening sentence


def test_eval_and_train_generators_never_overlap():
    train = {p.text for p in R.make_problems(500, (1, 2, 3), "train")}
    assert not train & {p.text for p in R.make_problems(300, (1, 2, 3), "eval")}
    assert not {e.text for e in R.make_examples(300)} & {e.text for e in R.make_examples(60, split="eval")}


def test_episodes_are_bursty_one_template_and_one_mapping():
    rng = random.Random(0)
    patterns = {name: re.compile(re.escape(t).replace(re.escape("{x}"), "(.+?)").replace(re.escape("{y}"), r"(\w+)") + "$")
                for name, t in R.TEMPLATES.items()}
    for _ in range(100):
        lines = [line for line in R.classification_episode(rng).split(R.DELIMITER) if not line.startswith("rule")]
        names = [{n for n, pat in patterns.items() if pat.match(line)} for line in lines]
        assert set.intersection(*names), lines  # one template for the whole episode
        name = sorted(set.intersection(*names))[0]
        mapping = {}
        for line in lines:
            x, y = patterns[name].match(line).groups()
            mapping.setdefault(y, set()).update(set(x.split()) & FEELINGS or {x})
        if all(set(patterns[name].match(line).group(1).split()) & FEELINGS for line in lines):
            positive = {w for w, xs in mapping.items() if xs & set(POSITIVE)}
            negative = {w for w, xs in mapping.items() if xs & set(NEGATIVE)}
            assert len(positive) <= 1 and len(negative) <= 1 and not positive & negative, lines


def test_evaluation_items_are_many_distinct_and_disjoint():
    sizes = {"test": 200, "pool": 200, "dev": 48, "held_out": 200}  # the cpu profile's sets in lecture 08
    sets = R.disjoint_sets(sizes, "sentiment", "eval", seed=1)
    texts = {name: [e.text for e in items] for name, items in sets.items()}
    assert {name: len(set(t)) for name, t in texts.items()} == sizes  # no sentence twice within a set
    names = list(texts)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not set(texts[a]) & set(texts[b]), (a, b)  # no sentence in two sets
    assert all(e.cue in e.text.split() for items in sets.values() for e in items)
    assert sum(e.label for e in sets["test"]) == 100
    assert len({e.text for e in R.make_examples(600, "sentiment", "eval", seed=0)}) == 600
    with pytest.raises(ValueError, match="distinct"):
        R.make_examples(5000, "sentiment", "eval")


def test_copy_lists_stay_in_the_mixture():
    docs = R.make_mixture(1000, "train", seed=0)
    copies = [d for d in docs if " | " in d]
    assert 50 < len(copies) < 150
    assert all(d.split(" | ")[0] == d.split(" | ")[1].removesuffix(" .") for d in copies)


def test_fill_and_errors():
    assert R.fill("review", "mia was happy .") == "review : mia was happy . label :"
    assert R.fill("cloze", "mia was happy .", "good") == "mia was happy . so it was good ."
    with pytest.raises(ValueError, match="split"):
        R.make_problems(3, split="test")
    with pytest.raises(ValueError, match="steps"):
        R.make_problems(3, steps=9)
    with pytest.raises(ValueError, match="template"):
        R.fill("no fields", "x")


def test_name_gender_follows_the_pronouns_of_the_problems():
    assert R.name_gender("in the park mia felt sad .") == 1 and R.name_gender("tom was glad .") == 0
    assert R.name_gender("the white fox was happy .") is None
    for p in R.make_problems(40, (1, 2), "eval", seed=5):
        assert R.name_gender(p.text) == (p.days[0].split()[0] == "she")
