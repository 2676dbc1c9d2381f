"""Lab 05 wrong submissions found by re-measuring the catch rate (issue 24 §6): each loses its exercise's check."""
from pathlib import Path

import pytest

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
