"""course_utils.sft.format_and_accuracy: the format rate and accuracy of replies, with intervals over stories."""
import pytest

from course_utils.sft import format_and_accuracy
from course_utils.stats import mean_ci
from course_utils.world.instructions import SEEN_FAMILIES, in_format, score, task_split


def test_format_and_accuracy_counts_each_reply_once():
    tasks = task_split(20, "eval", SEEN_FAMILIES, seed=1)
    # right, wrong but of the asked kind, not an answer at all: cycled over the tasks
    replies = [(t.answer, "nobody", "i am not sure .")[i % 3] for i, t in enumerate(tasks)]
    result = format_and_accuracy(tasks, replies)
    formats = [in_format(t, r) for t, r in zip(tasks, replies)]
    rights = [score(t, r) for t, r in zip(tasks, replies)]
    assert result["format"].mean == pytest.approx(sum(formats) / len(tasks))
    assert result["accuracy"].mean == pytest.approx(sum(rights) / len(tasks))
    assert result["accuracy"].mean <= result["format"].mean + 1e-12  # a right answer is an answer of the kind
    stories = [t.story for t in tasks]
    assert result["format"] == mean_ci(formats, stories) and result["accuracy"] == mean_ci(rights, stories)
    for est in result.values():
        assert est.low <= est.mean <= est.high


def test_format_and_accuracy_of_reference_answers():
    tasks = task_split(10, "eval", SEEN_FAMILIES, seed=2)
    result = format_and_accuracy(tasks, [t.output for t in tasks])
    assert result["format"].mean == 1.0 and result["accuracy"].mean == 1.0


def test_format_and_accuracy_needs_one_reply_per_task():
    tasks = task_split(5, "eval", SEEN_FAMILIES, seed=1)
    with pytest.raises(ValueError, match="one reply per task"):
        format_and_accuracy(tasks, [t.answer for t in tasks][:-1])
