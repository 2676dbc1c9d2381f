"""Lab 05 plausible wrong submissions (issue 24 §6): each loses its exercise's check; correct variants pass."""
from pathlib import Path

import pytest
import torch

from course_utils import rlhf
from course_utils.checks import CheckError
from course_utils.checks import rlhf as checks
from catch_rate import catch_rate_tests
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


# ------------------------------------------------------------------ exercises 1-4: wrong versions vs right ones
# (the targeted tests above stay; exercise 6 has its five wrong versions above)

SOL = solution_namespace(SOLUTION, "checks import rlhf")
F = torch.nn.functional


def check_ppo_policy(fn):
    """The PPO check with ``fn`` as the policy loss and the solution's value loss."""
    checks.check_ppo_losses(fn, SOL["ppo_value_loss"])


def check_ppo_value(fn):
    """The PPO check with the solution's policy loss and ``fn`` as the value loss."""
    checks.check_ppo_losses(SOL["ppo_policy_loss"], fn)


def reward_loss_of(loss_of_diff, margin_sign=-1.0):
    """A reward_loss computing ``loss_of_diff(chosen - rejected +/- margin)``."""
    def reward_loss(chosen, rejected, margin=None):
        diff = chosen - rejected
        return loss_of_diff(diff if margin is None else diff + margin_sign * margin)
    return reward_loss


def reward_loss_in_place(chosen, rejected, margin=None):
    chosen -= rejected
    if margin is not None:
        chosen -= margin
    return -F.logsigmoid(chosen).mean()


def reward_loss_margin_truthiness(chosen, rejected, margin=None):
    """``if margin:`` (a tensor of several margins has no truth value)."""
    return -F.logsigmoid(chosen - rejected - margin if margin else chosen - rejected).mean()


def rewards_score_replaces_kl(logprobs, ref_logprobs, scores, mask, beta):
    rewards = -beta * (logprobs - ref_logprobs) * mask
    rewards[torch.arange(len(mask)), mask.sum(-1).long() - 1] = scores
    return rewards


def reward_loss_no_grad(chosen, rejected, margin=None):
    with torch.no_grad():
        return SOL["reward_loss"](chosen, rejected, margin)


def rewards_with_last(last_of):
    """per_token_rewards with the score on column ``last_of(mask)`` of each row."""
    def per_token_rewards(logprobs, ref_logprobs, scores, mask, beta):
        rewards = -beta * (logprobs - ref_logprobs) * mask
        rewards[torch.arange(len(mask)), last_of(mask)] += scores
        return rewards
    return per_token_rewards


def rewards_score_scaled_by_beta(logprobs, ref_logprobs, scores, mask, beta):
    return SOL["per_token_rewards"](logprobs, ref_logprobs, beta * scores, mask, beta)


def rewards_kl_sign(logprobs, ref_logprobs, scores, mask, beta):
    return SOL["per_token_rewards"](logprobs, ref_logprobs, scores, mask, -beta)


def gae_with(stop_early=False, terminated=False, returns_of=None, in_place=False):
    """The solution's GAE with one rule changed: the loop stops one step early, every end treated as terminal,
    other returns, or the values masked in place."""
    def gae(rewards, values, mask, gamma, lam, last_values=None):
        if in_place:
            values *= mask
        T = rewards.shape[1]
        last_values = torch.zeros_like(rewards[:, 0]) if last_values is None or terminated else last_values
        advantages, running = torch.zeros_like(rewards), torch.zeros_like(rewards[:, 0])
        for t in reversed(range(T - 1 if stop_early else T)):
            alive = mask[:, t + 1] if t + 1 < T else torch.zeros_like(mask[:, 0])
            next_value = values[:, t + 1] * alive if t + 1 < T else torch.zeros_like(values[:, 0])
            next_value = next_value + (mask[:, t] - alive) * last_values
            delta = rewards[:, t] + gamma * next_value - values[:, t]
            running = (delta + gamma * lam * alive * running) * mask[:, t]
            advantages[:, t] = running
        returns = (advantages + values) * mask if returns_of is None else returns_of(advantages, values, rewards, mask)
        return advantages, returns
    return gae


def discounted_returns(advantages, values, rewards, mask):
    """Monte-Carlo returns (sum of discounted rewards) instead of advantages + values."""
    out, running = torch.zeros_like(rewards), torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = (rewards[:, t] + running) * mask[:, t]
        out[:, t] = running
    return out


def gae_vectorised(rewards, values, mask, gamma, lam, last_values=None):
    """Deltas for all tokens at once, then the recursion: right."""
    alive = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], 1)
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], 1) * alive
    if last_values is not None:
        next_values = next_values + (mask - alive) * last_values[:, None]
    deltas = (rewards + gamma * next_values - values) * mask
    advantages, running = torch.zeros_like(rewards), torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = deltas[:, t] + gamma * lam * alive[:, t] * running
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def policy_loss_with(ratio_of=lambda lp, old: torch.exp(lp - old), combine=torch.max, reduce=None,
                     clamp=lambda r, c: r.clamp(1 - c, 1 + c), detach_adv=True):
    """The solution's policy loss with its ratio, its pessimistic bound, its reduction or its clipping replaced."""
    def ppo_policy_loss(logprobs, old_logprobs, advantages, mask, clip):
        advantages = advantages.detach() if detach_adv else advantages
        ratio = ratio_of(logprobs, old_logprobs)
        losses = combine(-ratio * advantages, -clamp(ratio, clip) * advantages)
        return (losses * mask).sum() / mask.sum() if reduce is None else reduce(losses, mask)
    return ppo_policy_loss


def policy_loss_in_place(logprobs, old_logprobs, advantages, mask, clip):
    logprobs -= old_logprobs
    return SOL["ppo_policy_loss"](logprobs, torch.zeros_like(old_logprobs), advantages, mask, clip)


def value_loss_with(clipped_of=lambda v, old, c: old + (v - old).clamp(-c, c), combine=torch.max, scale=1.0):
    """The solution's value loss with its clipping, its bound or a factor replaced."""
    def ppo_value_loss(values, old_values, returns, mask, clip):
        losses = combine((values - returns) ** 2, (clipped_of(values, old_values, clip) - returns) ** 2)
        return scale * (losses * mask).sum() / mask.sum()
    return ppo_value_loss


WRONG = {
    "reward loss swapped": (checks.check_reward_loss, lambda c, r, m=None: SOL["reward_loss"](r, c, m), "swapped"),
    "reward loss sum": (checks.check_reward_loss, reward_loss_of(lambda d: -F.logsigmoid(d).sum()), "sum over pairs"),
    "reward loss sigmoid": (checks.check_reward_loss, reward_loss_of(lambda d: -torch.sigmoid(d).mean()),
                            "not sigmoid"),
    "reward loss positive sign": (checks.check_reward_loss, reward_loss_of(lambda d: F.logsigmoid(d).mean()),
                                  "wrong sign"),
    "reward loss margin ignored": (checks.check_reward_loss, lambda c, r, m=None: SOL["reward_loss"](c, r),
                                   "margin is ignored"),
    "reward loss margin added": (checks.check_reward_loss, reward_loss_of(lambda d: -F.logsigmoid(d).mean(), 1.0),
                                 "margin has the wrong sign"),
    "reward loss log(sigmoid)": (checks.check_reward_loss,
                                 reward_loss_of(lambda d: -torch.log(torch.sigmoid(d)).mean()), "use F.logsigmoid"),
    "reward loss log(1 + exp(-d))": (checks.check_reward_loss,
                                     reward_loss_of(lambda d: torch.log(1 + torch.exp(-d)).mean()), "F.logsigmoid"),
    "reward loss no grad": (checks.check_reward_loss, reward_loss_no_grad, "carries no gradient"),
    "reward loss in place": (checks.check_reward_loss, reward_loss_in_place, "changed chosen_rewards"),
    "reward loss if margin:": (checks.check_reward_loss, reward_loss_margin_truthiness, "margin is not None"),
    "rewards score replaces the KL": (checks.check_per_token_rewards, rewards_score_replaces_kl, "replaces"),
    "rewards KL sign": (checks.check_per_token_rewards, rewards_kl_sign, "wrong sign"),
    "rewards score on every token": (checks.check_per_token_rewards,
                                     lambda lp, ref, s, m, beta: -beta * (lp - ref) * m + s[:, None] * m,
                                     "added to every token"),
    "rewards score on the last column": (checks.check_per_token_rewards, rewards_with_last(lambda m: -1),
                                         "last column"),
    "rewards score one past the end": (checks.check_per_token_rewards,
                                       rewards_with_last(lambda m: m.sum(-1).long()),
                                       r"IndexError.*mask.sum\(-1\) - 1"),
    "rewards score one too early": (checks.check_per_token_rewards,
                                    rewards_with_last(lambda m: m.sum(-1).long() - 2), "one token early"),
    "rewards mask ignored": (checks.check_per_token_rewards, lambda lp, ref, s, m, beta: SOL["per_token_rewards"](
        lp, ref, s, torch.ones_like(m), beta), "per-token rewards"),
    "rewards score missing": (checks.check_per_token_rewards, lambda lp, ref, s, m, beta: -beta * (lp - ref) * m,
                              "score is missing"),
    "rewards score times beta": (checks.check_per_token_rewards, rewards_score_scaled_by_beta, "multiplied by beta"),
    "gae no bootstrap (every end terminal)": (checks.check_gae, gae_with(terminated=True), "bootstrap is missing"),
    "gae stops one step early": (checks.check_gae, gae_with(stop_early=True), "advantages"),
    "gae gamma and lambda swapped": (checks.check_gae, lambda r, v, m, g, l, last=None: SOL["gae"](r, v, m, l, g, last),
                                     "swapped"),
    "gae mask ignored": (checks.check_gae, lambda r, v, m, g, l, last=None: SOL["gae"](r, v, torch.ones_like(m), g, l,
                                                                                      last), "advantages"),
    "gae returns without values": (checks.check_gae, gae_with(returns_of=lambda a, v, r, m: a), "returns"),
    "gae Monte-Carlo returns": (checks.check_gae, gae_with(returns_of=discounted_returns), "returns"),
    "gae values masked in place": (checks.check_gae, gae_with(in_place=True), "changed values in place"),
    "ppo min instead of max": (check_ppo_policy, policy_loss_with(combine=torch.min), "min instead of max"),
    "ppo no clipping": (check_ppo_policy, policy_loss_with(clamp=lambda r, c: r), "no clipping"),
    "ppo clipped below only": (check_ppo_policy, policy_loss_with(clamp=lambda r, c: r.clamp(min=1 - c)),
                               "clipped below only"),
    "ppo padding averaged": (check_ppo_policy, policy_loss_with(reduce=lambda l, m: l.mean()), "padding"),
    "ppo mean per sequence": (check_ppo_policy, policy_loss_with(
        reduce=lambda l, m: ((l * m).sum(1) / m.sum(1)).mean()), "ONE mean over all real tokens"),
    "ppo ratio inverted": (check_ppo_policy, policy_loss_with(ratio_of=lambda lp, old: torch.exp(old - lp)),
                           "upside down"),
    "ppo ratio exp / exp": (check_ppo_policy, policy_loss_with(ratio_of=lambda lp, old: lp.exp() / old.exp()),
                            "200 lower.*underflows"),
    "ppo advantages not detached": (check_ppo_policy, policy_loss_with(detach_adv=False), "detach them"),
    "ppo logprobs detached": (check_ppo_policy, policy_loss_with(ratio_of=lambda lp, old: torch.exp(lp.detach() - old)),
                              "carries no gradient"),
    "ppo logprobs edited in place": (check_ppo_policy, policy_loss_in_place, "changed logprobs in place"),
    "value loss unclipped": (check_ppo_value, value_loss_with(clipped_of=lambda v, old, c: v), "not clipped"),
    "value loss half": (check_ppo_value, value_loss_with(clipped_of=lambda v, old, c: v, scale=0.5), "1/2 factor"),
    "value loss min": (check_ppo_value, value_loss_with(combine=torch.min), "min instead of max"),
    "value loss clipped change without old_values": (check_ppo_value, value_loss_with(
        clipped_of=lambda v, old, c: (v - old).clamp(-c, c)), "add the old value back"),
}


RIGHT = {
    "solution reward loss": (checks.check_reward_loss, SOL["reward_loss"]),
    "reward loss softplus": (checks.check_reward_loss, reward_loss_of(lambda d: F.softplus(-d).mean())),
    "solution rewards": (checks.check_per_token_rewards, SOL["per_token_rewards"]),
    "rewards by scatter": (checks.check_per_token_rewards, lambda lp, ref, s, m, beta: -beta * (lp - ref) * m
                           + torch.zeros_like(m).scatter(1, m.sum(-1, keepdim=True).long() - 1, s[:, None])),
    "solution gae": (checks.check_gae, SOL["gae"]),
    "gae vectorised deltas": (checks.check_gae, gae_vectorised),
    "solution ppo": (check_ppo_policy, SOL["ppo_policy_loss"]),
    "ppo clamped objective via where": (check_ppo_policy, policy_loss_with(
        combine=lambda a, b: torch.where(a > b, a, b))),
    "ppo mean of the masked tokens": (check_ppo_policy, policy_loss_with(reduce=lambda l, m: l[m.bool()].mean())),
    "value loss clamp(old - c, old + c)": (check_ppo_value, value_loss_with(
        clipped_of=lambda v, old, c: torch.max(torch.min(v, old + c), old - c))),
}


test_a_plausible_wrong_version_loses_its_check, test_a_correct_version_passes = catch_rate_tests(WRONG, RIGHT)
