"""Grading lab 05 end to end: the solution gets full marks, the untouched lab 0, and plausible
mistakes lose exactly the points of the exercises they break, with a message naming the mistake.
The second wrong notebook also cheats: its reward_loss and gae call the course's own answers
(course_utils.rlhf, which the lab imports) and its find_blind_spot calls the check's own measurement
(course_utils.checks); traced, they lose those exercises and nothing else. The outcome
check re-measures the trained model: a policy loss without gradient to the policy loses it, even in a notebook that
types in, after its run, the numbers the check used to read."""
import copy
from pathlib import Path

import pytest

from course_utils.instructor.notebooks import read_notebook
from course_utils.instructor.release import replace_solution
from notebook_helpers import assert_lost_exactly, total

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "05_rlhf_ppo.ipynb"
TOTAL = 18

SWAPPED_PAIR = """
d = rejected - chosen
return -F.logsigmoid(d if margin is None else d - margin).mean()
"""
GAE_NO_BOOTSTRAP = """
B, T = rewards.shape
advantages = torch.zeros_like(rewards)
running = torch.zeros(B)
for t in reversed(range(T)):
    alive = mask[:, t + 1] if t + 1 < T else torch.zeros(B)
    next_value = values[:, t + 1] * alive if t + 1 < T else torch.zeros(B)
    delta = rewards[:, t] + gamma * next_value - values[:, t]
    running = (delta + gamma * lam * alive * running) * mask[:, t]
    advantages[:, t] = running
return advantages, (advantages + values) * mask
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
NO_POLICY_GRADIENT = """
advantages = advantages.detach()
ratio = torch.exp(logprobs.detach() - old_logprobs)
losses = torch.max(-ratio * advantages, -ratio.clamp(1 - clip, 1 + clip) * advantages)
return (losses * mask).sum() / mask.sum()
"""
# appended to the run cell: the numbers the old outcome check read, typed in over the run's own
REPORTED = """
history = rlhf.PPOHistory(true_reward=[0.3] * 7 + [1.2] * 7, kl=[0.5] * 14)
print("r* per rollout:", history.true_reward)
"""
# exercise 6: the experiment with its sign turned round, and one that calls the check's own measurement
BLIND_SPOT_LEAST_LIKED = """
before = rlhf.rm_scores(rm, tokenizer, prompts, replies)
gain = {w: (rlhf.rm_scores(rm, tokenizer, prompts, [f"{w} , {r}" for r in replies]) - before).mean().item()
        for w in candidates}
return min(gain, key=gain.get)
"""
BLIND_SPOT_FROM_THE_CHECKS = """
gain = checks.opening_gains(rm, tokenizer, prompts, replies, candidates)
return max(gain, key=gain.get)
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


def _numbers_reported(nb):
    """``nb`` whose run cell ends by typing in a history that looks trained."""
    nb = copy.deepcopy(nb)
    run = next(c for c in nb.cells if "history = rlhf.ppo(" in c.source)
    run.source += "\n" + REPORTED
    return nb


@pytest.fixture(scope="module")
def gradebook(grade_notebooks):
    solution = read_notebook(SOLUTION)
    wrong_versions = {
        "swapped_pair_gae_no_bootstrap_value_unclipped": _replace(solution, reward_loss_impl=SWAPPED_PAIR,
                                                                  gae_impl=GAE_NO_BOOTSTRAP,
                                                                  value_loss_impl=VALUE_UNCLIPPED,
                                                                  blind_spot_impl=BLIND_SPOT_LEAST_LIKED),
        "kl_flipped_min_not_max_answers_called": _replace(
            solution, rewards_impl=KL_FLIPPED, policy_loss_impl=MIN_NOT_MAX, reward_loss_impl=ANSWER_REWARD_LOSS,
            gae_impl=ANSWER_GAE, blind_spot_impl=BLIND_SPOT_FROM_THE_CHECKS),
        "no_policy_gradient_numbers_reported": _numbers_reported(_replace(solution,
                                                                          policy_loss_impl=NO_POLICY_GRADIENT)),
    }
    return grade_notebooks(SOLUTION, wrong_versions)


def test_solution_gets_full_marks(gradebook):
    assert total(gradebook["solution"]) == (TOTAL, TOTAL), {k: r.message for k, r in gradebook["solution"].items()}


def test_untouched_lab_gets_zero(gradebook):
    assert total(gradebook["untouched_lab"]) == (0, TOTAL)


@pytest.mark.parametrize("name, lost", [  # exercise -> words its message must contain
    # the lecture's GAE (no bootstrap) is right for the loop, which passes no last_values, so the outcome check passes;
    # only the GAE check (cut-off rows) catches it
    ("swapped_pair_gae_no_bootstrap_value_unclipped", {"reward_loss_check": "swapped",
                                                       "gae_check": "bootstrap is missing",
                                                       "ppo_check": "not clipped",
                                                       "blind_spot_check": "likes LEAST"}),
    # the course's answers are right, so PPO still trains (the outcome check passes), but calling them loses
    # their points
    ("kl_flipped_min_not_max_answers_called", {
        "rewards_check": "wrong sign", "ppo_check": "min instead of max",
        "reward_loss_check": "forbidden call: the exercise may not use course_utils.rlhf: reward_loss",
        "gae_check": "forbidden call: the exercise may not use course_utils.rlhf: gae",
        "blind_spot_check": "forbidden call: the exercise may not use course_utils.checks: opening_gains"}),
    # the right value with no gradient to the policy: the loss check names it, and the re-measured policy does not
    # beat SFT on the grader's tasks (benchmarks/lab_outcome_margins.txt: -0.12 to -0.22 over seeds 0-2), whatever
    # numbers the notebook typed in after its run
    ("no_policy_gradient_numbers_reported", {"ppo_check": "keep the gradient of logprobs",
                                             "outcome_check": "less than"}),
])
def test_plausible_mistakes_lose_the_points_they_break(gradebook, name, lost):
    rows = gradebook[name]
    assert_lost_exactly(rows, lost)
