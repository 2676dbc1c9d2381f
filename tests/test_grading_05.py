"""Grading lab 05 end to end: the solution gets full marks, the untouched lab 0, and plausible
mistakes lose exactly the points of the exercises they break, with a message naming the mistake.
The second wrong notebook also cheats: its reward_loss and gae call the course's own answers
(course_utils.rlhf, which the lab imports); traced, they lose those exercises and nothing else."""
from pathlib import Path

import pytest

from course_utils.instructor.notebooks import read_notebook
from course_utils.instructor.release import replace_solution
from notebook_helpers import assert_lost_exactly, total

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "05_rlhf_ppo.ipynb"
TOTAL = 15

SWAPPED_PAIR = """
d = rejected - chosen
return -F.logsigmoid(d if margin is None else d - margin).mean()
"""
GAE_NO_MASK = """
B, T = rewards.shape
advantages = torch.zeros_like(rewards)
running = torch.zeros(B)
for t in reversed(range(T)):
    next_value = values[:, t + 1] if t + 1 < T else torch.zeros(B)
    delta = rewards[:, t] + gamma * next_value - values[:, t]
    running = delta + gamma * lam * running
    advantages[:, t] = running
return advantages, advantages + values
"""
VALUE_UNCLIPPED = """
return (((values - returns) ** 2) * mask).sum() / mask.sum()
"""
KL_FLIPPED = """
rewards = beta * (logprobs - ref_logprobs) * mask
last = mask.sum(-1).long() - 1
rows = torch.arange(len(mask))
rewards[rows, last] = rewards[rows, last] + scores
return rewards
"""
ANSWER_REWARD_LOSS = """
return rlhf.reward_loss(chosen, rejected, margin)
"""
ANSWER_GAE = """
return rlhf.gae(rewards, values, mask, gamma, lam)
"""
MIN_NOT_MAX = """
ratio = torch.exp(logprobs - old_logprobs)
losses = torch.min(-ratio * advantages, -ratio.clamp(1 - clip, 1 + clip) * advantages)
return (losses * mask).sum() / mask.sum()
"""


def _replace(nb, **regions):
    for grade_id, code in regions.items():
        nb = replace_solution(nb, grade_id, code)
    return nb


@pytest.fixture(scope="module")
def gradebook(grade_notebooks):
    solution = read_notebook(SOLUTION)
    wrong_versions = {
        "swapped_pair_gae_no_mask_value_unclipped": _replace(solution, reward_loss_impl=SWAPPED_PAIR,
                                                             gae_impl=GAE_NO_MASK, value_loss_impl=VALUE_UNCLIPPED),
        "kl_flipped_min_not_max_answers_called": _replace(
            solution, rewards_impl=KL_FLIPPED, policy_loss_impl=MIN_NOT_MAX, reward_loss_impl=ANSWER_REWARD_LOSS,
            gae_impl=ANSWER_GAE),
    }
    return grade_notebooks(SOLUTION, wrong_versions)



def test_solution_gets_full_marks(gradebook):
    assert total(gradebook["solution"]) == (TOTAL, TOTAL), {k: r.message for k, r in gradebook["solution"].items()}


def test_untouched_lab_gets_zero(gradebook):
    assert total(gradebook["untouched_lab"]) == (0, TOTAL)


@pytest.mark.parametrize("name, lost", [  # exercise -> words its message must contain
    # the loop multiplies values by the mask before GAE, so a GAE without the mask still trains: only the
    # GAE check (random values in the padding) catches it, and the outcome check passes
    ("swapped_pair_gae_no_mask_value_unclipped", {"reward_loss_check": "swapped", "gae_check": "mask is ignored",
                                                  "ppo_check": "not clipped"}),
    # the course's answers are right, so PPO still trains (the outcome check passes), but calling them loses
    # their points
    ("kl_flipped_min_not_max_answers_called", {
        "rewards_check": "wrong sign", "ppo_check": "min instead of max",
        "reward_loss_check": "forbidden call: the exercise may not use course_utils.rlhf: reward_loss",
        "gae_check": "forbidden call: the exercise may not use course_utils.rlhf: gae"}),
])
def test_plausible_mistakes_lose_the_points_they_break(gradebook, name, lost):
    rows = gradebook[name]
    assert_lost_exactly(rows, lost)
