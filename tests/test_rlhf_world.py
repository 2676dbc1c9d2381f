"""The RLHF pieces of the world (modules 05-06): human demonstrations, disjoint task splits, win rate, the SFT model."""
import pytest

from course_utils.world.instructions import SEEN_FAMILIES, score, task_split, words
from course_utils.world.preferences import (CORRECT, SURE, STYLE, VERBOSE, human_demonstrations, rlhf_split,
                                            true_reward, win_rate)
from course_utils.models import RECIPES, course_model_path, load_pretrained


@pytest.fixture(scope="module")
def tasks():
    return task_split(300, "train", seed=5)


def test_human_demonstrations_are_right_but_often_wordy(tasks):
    replies = human_demonstrations(tasks, wordy_rate=0.6, sure_rate=0.1, seed=0)
    assert all(score(t, r) for t, r in zip(tasks, replies))
    wordy = sum(len(words(r)) > len(words(t.answer)) for t, r in zip(tasks, replies)) / len(tasks)
    sure = sum(r.startswith(f"{SURE} ,") for r in replies) / len(tasks)
    assert 0.55 < wordy < 0.75 and 0.05 < sure < 0.16
    assert human_demonstrations(tasks, 0.0, 0.0) == [t.answer for t in tasks]
    assert human_demonstrations(tasks, seed=3) == human_demonstrations(tasks, seed=3)
    with pytest.raises(ValueError, match="wordy_rate"):
        human_demonstrations(tasks, wordy_rate=1.5)


def test_rlhf_split_is_disjoint():
    split = rlhf_split(200, 200, 50, seed=0)
    pair_stories = {t.story for t in split["pairs"]}
    assert not pair_stories & {t.story for t in split["prompts"]}
    eval_sentences = {s for t in split["eval"] for s in t.story.split(" .")}
    train_sentences = {s for t in split["pairs"] + split["prompts"] for s in t.story.split(" .")} - {""}
    assert not eval_sentences & train_sentences
    assert {t.family for t in split["eval"]} == set(SEEN_FAMILIES)
    assert min(len(v) for v in split.values()) > 40


def test_win_rate_counts_ties_half(tasks):
    t = tasks[:4]
    best = [x.answer for x in t]
    wordy = [VERBOSE[0].format(a=x.answer) for x in t]
    assert win_rate(best, wordy, t) == 1.0 and win_rate(wordy, best, t) == 0.0
    assert win_rate(best, best, t) == 0.5
    assert win_rate(best[:2] + wordy[2:], wordy, t) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="one reply"):
        win_rate(best, wordy[:2], t)
    with pytest.raises(TypeError):
        win_rate("park", "park", t[:1])


def test_tiny_gpt_sft_is_shipped_and_below_the_r_star_maximum():
    """The shared SFT model answers in the chat format but far below max r*: RLHF has room to help."""
    from course_utils.sft import respond

    model, tok = load_pretrained("tiny-gpt-sft", progress=False)
    assert (course_model_path("tiny-gpt-sft") / "config.json").is_file()
    assert RECIPES["tiny-gpt-sft"]["base_recipe"] == RECIPES["tiny-gpt"]
    tasks = rlhf_split(10, 10, 60)["eval"]
    replies = respond(model, tok, [t.instruction for t in tasks], max_new_tokens=16)
    mean_r = sum(true_reward(t, r) for t, r in zip(tasks, replies)) / len(tasks)
    accuracy = sum(score(t, r) for t, r in zip(tasks, replies)) / len(tasks)
    assert 0.2 < accuracy < 0.8, accuracy  # it learned the tasks, but is not saturated
    assert mean_r < 0.7 * (CORRECT + STYLE), mean_r
    assert win_rate([t.answer for t in tasks], replies, tasks) > 0.8  # a perfect policy would win easily


def test_the_win_rate_interval_resamples_stories_and_brackets_the_win_rate(tasks):
    from course_utils.rlhf import win_rate_ci

    t = tasks[:40]
    best = [x.answer for x in t]
    mixed = [a if i % 3 else VERBOSE[0].format(a=a) for i, a in enumerate(best)]
    wordy = [VERBOSE[0].format(a=x.answer) for x in t]
    est = win_rate_ci(mixed, wordy, t)
    assert est.mean == win_rate(mixed, wordy, t) and est.low < est.mean < est.high
    assert len({x.story for x in t}) < len(t)  # several questions per story: the story is the resampled unit
