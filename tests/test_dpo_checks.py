"""Lab 06's checks accept right answers and reject each plausible wrong one, naming the mistake."""
import pytest
import torch
import torch.nn.functional as F

from course_utils.checks import CheckError
from course_utils.checks.dpo import check_dpo_loss, check_dpo_outcome, check_optimal_policy, check_sequence_logps
from course_utils.dpo import dpo_loss, optimal_policy, sequence_logps


def _token_logps(logits, ids):
    return torch.log_softmax(logits, -1)[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)


def logps_with_prompt(logits, ids, completion_mask):
    """Sums over the prompt tokens too (every real token)."""
    prompt_and_response = torch.cumsum(completion_mask.flip(-1), -1).flip(-1).clamp(max=1)
    return (_token_logps(logits, ids) * prompt_and_response[:, 1:]).sum(-1)


def logps_mean(logits, ids, completion_mask):
    """Mean instead of sum of the response's token log-probs."""
    mask = completion_mask[:, 1:]
    return (_token_logps(logits, ids) * mask).sum(-1) / mask.sum(-1)


def logps_unshifted(logits, ids, completion_mask):
    return (torch.log_softmax(logits, -1).gather(-1, ids[:, :, None]).squeeze(-1) * completion_mask).sum(-1)


@pytest.mark.parametrize("fn, message", [
    (logps_with_prompt, "prompt"),
    (logps_mean, "mean over the response tokens"),
    (logps_unshifted, "no shift"),
    (lambda logits, ids, mask: _token_logps(logits, ids).sum(-1), "every token"),
    (lambda logits, ids, mask: (_token_logps(logits, ids) * mask[:, :-1]).sum(-1), "off by one"),
    (lambda logits, ids, mask: sequence_logps(logits, ids, mask)[:2], "shape"),
    (lambda logits, ids, mask: sequence_logps(logits.detach(), ids, mask), "no gradient"),
])
def test_sequence_logps_check(fn, message):
    check_sequence_logps(sequence_logps)
    with pytest.raises(CheckError, match=message):
        check_sequence_logps(fn)


def beta_outside(pc, pr, rc, rr, beta):
    return -beta * F.logsigmoid((pc - rc) - (pr - rr)).mean(), beta * (pc - rc), beta * (pr - rr)


def swapped(pc, pr, rc, rr, beta):
    return dpo_loss(pr, pc, rr, rc, beta)


def no_reference(pc, pr, rc, rr, beta):
    return -F.logsigmoid(beta * (pc - pr)).mean(), beta * pc, beta * pr


def rewards_without_beta(pc, pr, rc, rr, beta):
    loss, _, _ = dpo_loss(pc, pr, rc, rr, beta)
    return loss, pc - rc, pr - rr


def summed(pc, pr, rc, rr, beta):
    loss, c, r = dpo_loss(pc, pr, rc, rr, beta)
    return loss * len(pc), c, r


def log_of_sigmoid(pc, pr, rc, rr, beta):  # right on the batch, log(0) for large log-ratio gaps
    loss, c, r = dpo_loss(pc, pr, rc, rr, beta)
    return -torch.log(torch.sigmoid(beta * ((pc - rc) - (pr - rr)))).mean(), c, r


def rejected_detached(pc, pr, rc, rr, beta):
    return dpo_loss(pc, pr.detach(), rc, rr, beta)


def softplus_form(pc, pr, rc, rr, beta):  # a correct variant: -log sigmoid(x) = softplus(-x)
    _, c, r = dpo_loss(pc, pr, rc, rr, beta)
    return F.softplus(-beta * ((pc - rc) - (pr - rr))).mean(), c, r


def loss_from_detached_rewards(pc, pr, rc, rr, beta):  # right value, but the rewards it uses are detached
    _, c, r = dpo_loss(pc, pr, rc, rr, beta)
    return F.softplus(-(c - r)).mean(), c, r


def test_a_correct_variant_keeps_full_marks():
    check_dpo_loss(softplus_form)


@pytest.mark.parametrize("fn, message", [
    (log_of_sigmoid, "underflows"),
    (rejected_detached, "reaches policy_rejected_logps"),
    (loss_from_detached_rewards, "carries no gradient"),
    (beta_outside, "beta is outside the log-sigmoid"),
    (swapped, "swapped"),
    (no_reference, "no reference model"),
    (rewards_without_beta, "multiply the log-ratio by beta"),
    (summed, "sum over pairs"),
    (lambda *args: dpo_loss(*args)[0], "tuple"),
])
def test_dpo_loss_check(fn, message):
    check_dpo_loss(dpo_loss)
    with pytest.raises(CheckError, match=message):
        check_dpo_loss(fn)


@pytest.mark.parametrize("fn, message", [
    (lambda ref, r, beta: torch.softmax(ref.log() + beta * r, -1), "exp\\(beta \\* r\\)"),
    (lambda ref, r, beta: torch.softmax(r / beta, -1), "pi_ref is missing"),
    (lambda ref, r, beta: ref * torch.exp(r / beta), "not normalised"),
    (lambda ref, r, beta: ref * torch.exp(r / beta) / (ref * torch.exp(r / beta)).sum(0), "wrong axis"),
    (lambda ref, r, beta: torch.softmax(ref.log() + r, -1), "not the maximiser"),
    (lambda ref, r, beta: ref, "not the maximiser"),
])
def test_optimal_policy_check(fn, message):
    check_optimal_policy(optimal_policy)
    with pytest.raises(CheckError, match=message):
        check_optimal_policy(fn)


def test_outcome_check():
    check_dpo_outcome(0.8, 2.0, min_win_rate=0.6, max_kl=5.0)
    with pytest.raises(CheckError, match="below"):
        check_dpo_outcome(0.5, 2.0, min_win_rate=0.6, max_kl=5.0)
    with pytest.raises(CheckError, match="drifted"):
        check_dpo_outcome(0.9, 9.0, min_win_rate=0.6, max_kl=5.0)
    with pytest.raises(CheckError, match="below.*; the KL .* drifted"):
        check_dpo_outcome(0.3, 9.0, min_win_rate=0.6, max_kl=5.0)
    with pytest.raises(CheckError, match="number"):
        check_dpo_outcome("0.9", 1.0, min_win_rate=0.6, max_kl=5.0)


def test_checks_leave_the_global_generator_alone():
    state = torch.random.get_rng_state()
    check_sequence_logps(sequence_logps)
    assert torch.equal(state, torch.random.get_rng_state())
