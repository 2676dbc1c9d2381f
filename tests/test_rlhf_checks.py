"""Lab 05's checks accept the lecture's helpers and reject each plausible wrong version, naming the mistake."""
import pytest
import torch
import torch.nn.functional as F

from course_utils import rlhf
from course_utils.checks import CheckError
from course_utils.checks import rlhf as checks


def test_checks_accept_the_reference_helpers():
    checks.check_reward_loss(rlhf.reward_loss)
    checks.check_reward_loss(rm_stable_by_hand)
    checks.check_per_token_rewards(rlhf.per_token_rewards)
    checks.check_gae(rlhf.gae)
    checks.check_ppo_losses(rlhf.ppo_policy_loss, rlhf.ppo_value_loss)


def rm_swapped(c, r, m=None):
    return -F.logsigmoid(r - c - (0 if m is None else m)).mean()


def rm_no_margin(c, r, m=None):
    return -F.logsigmoid(c - r).mean()


def rm_margin_plus(c, r, m=None):
    return -F.logsigmoid(c - r + (0 if m is None else m)).mean()


def rm_sum(c, r, m=None):
    return -F.logsigmoid(c - r - (0 if m is None else m)).sum()


def rm_log_of_sigmoid(c, r, m=None):  # right on small gaps, log(0) on large ones
    return -torch.log(torch.sigmoid(c - r - (0 if m is None else m))).mean()


def rm_no_grad(c, r, m=None):
    with torch.no_grad():
        return rlhf.reward_loss(c, r, m)


def rm_detached_rejected(c, r, m=None):
    return rlhf.reward_loss(c, r.detach(), m)


def rm_stable_by_hand(c, r, m=None):  # a correct variant: the stable softplus form written out
    d = c - r - (0 if m is None else m)
    return (torch.clamp(-d, min=0) + torch.log1p(torch.exp(-d.abs()))).mean()


@pytest.mark.parametrize("fn,message", [(rm_swapped, "swapped"), (rm_no_margin, "margin is ignored"),
                                        (rm_margin_plus, "wrong sign"), (rm_sum, "mean"),
                                        (rm_log_of_sigmoid, "underflows"), (rm_no_grad, "no gradient"),
                                        (rm_detached_rejected, "reaches rejected_rewards")])
def test_reward_loss_check_rejects(fn, message):
    with pytest.raises(CheckError, match=message):
        checks.check_reward_loss(fn)


def rewards_kl_flipped(lp, ref, s, m, beta):
    return rlhf.per_token_rewards(lp, ref, s, m, -beta)


def rewards_score_everywhere(lp, ref, s, m, beta):
    return -beta * (lp - ref) * m + s[:, None] * m


def rewards_last_column(lp, ref, s, m, beta):
    out = -beta * (lp - ref) * m
    out[:, -1] += s
    return out


def rewards_no_mask(lp, ref, s, m, beta):
    return rlhf.per_token_rewards(lp, ref, s, torch.ones_like(m), beta)


@pytest.mark.parametrize("fn,message", [(rewards_kl_flipped, "wrong sign"), (rewards_score_everywhere, "every token"),
                                        (rewards_last_column, "last column"), (rewards_no_mask, "mask is ignored")])
def test_per_token_rewards_check_rejects(fn, message):
    with pytest.raises(CheckError, match=message):
        checks.check_per_token_rewards(fn)


def gae_no_mask(r, v, m, gamma, lam):
    return rlhf.gae(r, v, torch.ones_like(m), gamma, lam)


def gae_swapped(r, v, m, gamma, lam):
    return rlhf.gae(r, v, m, lam, gamma)


def gae_bad_returns(r, v, m, gamma, lam):
    adv, _ = rlhf.gae(r, v, m, gamma, lam)
    return adv, adv


@pytest.mark.parametrize("fn,message", [(gae_no_mask, "mask is ignored"), (gae_swapped, "swapped"),
                                        (gae_bad_returns, "returns")])
def test_gae_check_rejects(fn, message):
    with pytest.raises(CheckError, match=message):
        checks.check_gae(fn)


def policy_min(lp, old, adv, m, clip):
    ratio = torch.exp(lp - old)
    return rlhf.masked_mean(torch.min(-ratio * adv, -ratio.clamp(1 - clip, 1 + clip) * adv), m)


def policy_not_detached(lp, old, adv, m, clip):
    ratio = torch.exp(lp - old)
    return rlhf.masked_mean(torch.max(-ratio * adv, -ratio.clamp(1 - clip, 1 + clip) * adv), m)


def policy_unclipped(lp, old, adv, m, clip):
    return rlhf.masked_mean(-torch.exp(lp - old) * adv, m)


def value_unclipped(v, old, ret, m, clip):
    return rlhf.masked_mean((v - ret) ** 2, m)


def policy_ratio_detached(lp, old, adv, m, clip):  # the right value, but no gradient reaches the policy
    return rlhf.ppo_policy_loss(lp.detach(), old, adv, m, clip)


def value_no_grad(v, old, ret, m, clip):
    with torch.no_grad():
        return rlhf.ppo_value_loss(v, old, ret, m, clip)


@pytest.mark.parametrize("pi,vf,message", [(policy_min, rlhf.ppo_value_loss, "min instead of max"),
                                           (policy_ratio_detached, rlhf.ppo_value_loss, "keep the gradient of logprobs"),
                                           (rlhf.ppo_policy_loss, value_no_grad, "value loss: the loss carries no gradient"),
                                           (policy_unclipped, rlhf.ppo_value_loss, "no clipping"),
                                           (policy_not_detached, rlhf.ppo_value_loss, "detach"),
                                           (rlhf.ppo_policy_loss, value_unclipped, "not clipped")])
def test_ppo_loss_check_rejects(pi, vf, message):
    with pytest.raises(CheckError, match=message):
        checks.check_ppo_losses(pi, vf)


def test_checks_refuse_wrong_return_types():
    with pytest.raises(CheckError, match="scalar"):
        checks.check_reward_loss(lambda c, r, m=None: F.logsigmoid(c - r))
    with pytest.raises(CheckError, match="tuple"):
        checks.check_gae(lambda r, v, m, g, l: r)


def test_outcome_check_needs_a_rise_in_r_star():
    checks.check_ppo_outcome([0.3, 0.35, 0.4, 0.5, 0.6, 0.7], margin=0.1)
    with pytest.raises(CheckError, match="should raise it"):
        checks.check_ppo_outcome([0.5, 0.5, 0.5, 0.5, 0.52, 0.5], margin=0.1)
    with pytest.raises(CheckError, match="at least 6"):
        checks.check_ppo_outcome([0.1, 0.9], margin=0.1)


def test_ppo_rejects_unknown_parts():
    with pytest.raises(ValueError, match="unknown PPO parts"):
        rlhf._parts({"reward": None}, "gae")
