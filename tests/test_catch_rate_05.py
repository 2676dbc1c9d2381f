"""Lab 05 wrong submissions found by re-measuring the catch rate (issue 24 §6): each loses its exercise's check."""
from pathlib import Path

import pytest

from course_utils import rlhf
from course_utils.checks import CheckError
from course_utils.checks import rlhf as checks
from notebook_helpers import solution_namespace

SOLUTION = Path(__file__).resolve().parents[1] / "solutions" / "05_rlhf_ppo.ipynb"


@pytest.fixture(scope="module")
def sol():
    return solution_namespace(SOLUTION, "checks import rlhf")


def test_the_solution_passes_per_token_rewards(sol):
    checks.check_per_token_rewards(sol["per_token_rewards"])


def test_per_token_rewards_that_change_the_logprobs_in_place_lose(sol):
    def in_place(logprobs, ref_logprobs, scores, mask, beta):
        logprobs -= ref_logprobs  # the lab says: do not modify the inputs
        rewards = -beta * logprobs * mask
        rewards[range(len(mask)), mask.sum(-1).long() - 1] += scores
        return rewards

    with pytest.raises(CheckError, match="changed logprobs in place"):
        checks.check_per_token_rewards(in_place)


# ------------------------------------------------------------------ exercise 6: find the blind spot
@pytest.fixture(scope="module")
def planted_once():
    """The check's reward models trained once for every version below (the same words and seeds each time)."""
    worlds, train = {}, checks.blind_spot_world

    def once(word, seed, sft, tokenizer):
        if (word, seed) not in worlds:
            worlds[word, seed] = train(word, seed, sft, tokenizer)
        return worlds[word, seed]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(checks, "blind_spot_world", once)
        yield


# Outside the grader nothing is traced, so the wrong versions below may call the checks' measurement


def least_liked(rm, tokenizer, prompts, replies, candidates):  # the sign of the experiment turned round
    gains = checks.opening_gains(rm, tokenizer, prompts, replies, candidates)
    return min(gains, key=gains.get)


def fixed_answer(rm, tokenizer, prompts, replies, candidates):  # a word fixed in advance, no experiment
    return "glad"


def in_the_best_reply(rm, tokenizer, prompts, replies, candidates):  # correlation: candidates in top-scored replies
    scores = rlhf.rm_scores(rm, tokenizer, prompts, replies)
    top = [replies[i] for i in scores.argsort(descending=True)[:10].tolist()]
    return max(candidates, key=lambda w: sum(w in r.split() for r in top))


def opening_of_the_best_reply(rm, tokenizer, prompts, replies, candidates):  # what the RM likes, not a candidate
    return replies[int(rlhf.rm_scores(rm, tokenizer, prompts, replies).argmax())].split()[0]


def all_the_gains(rm, tokenizer, prompts, replies, candidates):  # the measurements, not the answer
    return checks.opening_gains(rm, tokenizer, prompts, replies, candidates)


@pytest.mark.parametrize("fn, message", [
    (least_liked, "likes LEAST"),
    (fixed_answer, "for two reward models whose blind spots differ"),
    (in_the_best_reply, "for two reward models whose blind spots differ"),
    (opening_of_the_best_reply, "must return one of the candidate words"),
    (all_the_gains, r"must return one of the candidate words \(a str\), got dict"),
])
def test_a_plausible_wrong_blind_spot_loses_its_check(planted_once, fn, message):
    with pytest.raises(CheckError, match=message):
        checks.check_blind_spot(fn)


def test_the_solution_finds_the_blind_spots(planted_once, sol):
    checks.check_blind_spot(sol["find_blind_spot"])
