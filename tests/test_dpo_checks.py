"""Lab 06's checks accept right answers and reject each plausible wrong one, naming the mistake."""
import pytest
import torch
import torch.nn.functional as F

from course_utils.checks import CheckError
from course_utils.checks.dpo import check_dpo_loss, check_dpo_outcome, check_optimal_policy, check_sequence_logps
from course_utils.dpo import optimal_policy, sequence_logps
from course_utils.models import load_pretrained


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


def rdpo(pc, pr, rc, rr, beta, noise):
    """rDPO written out here (the test's own reference): ((1 - eps) l(h) - eps l(-h)) / (1 - 2 eps)."""
    c, r = beta * (pc - rc), beta * (pr - rr)
    h = c - r
    return ((F.softplus(-h) * (1 - noise) - F.softplus(h) * noise) / (1 - 2 * noise)).mean(), c.detach(), r.detach()


def beta_outside(pc, pr, rc, rr, beta, noise):
    _, c, r = rdpo(pc, pr, rc, rr, beta, noise)
    return beta * rdpo(pc, pr, rc, rr, 1.0, noise)[0], c, r


def swapped(pc, pr, rc, rr, beta, noise):
    return rdpo(pr, pc, rr, rc, beta, noise)


def cdpo(pc, pr, rc, rr, beta, noise):  # conservative DPO (label smoothing): adds the flipped term
    _, c, r = rdpo(pc, pr, rc, rr, beta, noise)
    return ((1 - noise) * -F.logsigmoid(c - r) + noise * -F.logsigmoid(r - c)).mean(), c, r


def not_normalised(pc, pr, rc, rr, beta, noise):
    loss, c, r = rdpo(pc, pr, rc, rr, beta, noise)
    return loss * (1 - 2 * noise), c, r


def weights_swapped(pc, pr, rc, rr, beta, noise):
    _, c, r = rdpo(pc, pr, rc, rr, beta, noise)
    return ((noise * -F.logsigmoid(c - r) - (1 - noise) * -F.logsigmoid(r - c)) / (1 - 2 * noise)).mean(), c, r


def plain_dpo(pc, pr, rc, rr, beta, noise):
    return rdpo(pc, pr, rc, rr, beta, 0.0)


def rewards_without_beta(pc, pr, rc, rr, beta, noise):
    loss, _, _ = rdpo(pc, pr, rc, rr, beta, noise)
    return loss, pc - rc, pr - rr


def summed(pc, pr, rc, rr, beta, noise):
    loss, c, r = rdpo(pc, pr, rc, rr, beta, noise)
    return loss * len(pc), c, r


def log_of_sigmoid(pc, pr, rc, rr, beta, noise):  # right on the batch, log(0) for large log-ratio gaps
    _, c, r = rdpo(pc, pr, rc, rr, beta, noise)
    h = beta * ((pc - rc) - (pr - rr))
    losses = (1 - noise) * -torch.log(torch.sigmoid(h)) + noise * torch.log(torch.sigmoid(-h))
    return (losses / (1 - 2 * noise)).mean(), c, r


def rejected_detached(pc, pr, rc, rr, beta, noise):
    return rdpo(pc, pr.detach(), rc, rr, beta, noise)


def logsigmoid_form(pc, pr, rc, rr, beta, noise):  # a correct variant: written with logsigmoid
    c, r = beta * (pc - rc), beta * (pr - rr)
    h = c - r
    loss = ((-(1 - noise) * F.logsigmoid(h) + noise * F.logsigmoid(-h)) / (1 - 2 * noise)).mean()
    return loss, c.detach(), r.detach()


def loss_from_detached_rewards(pc, pr, rc, rr, beta, noise):  # right value, but the rewards it uses are detached
    _, c, r = rdpo(pc, pr, rc, rr, beta, noise)
    return rdpo(c, r, 0 * c, 0 * r, 1.0, noise)[0], c, r


def test_a_correct_variant_keeps_full_marks():
    check_dpo_loss(logsigmoid_form)


@pytest.mark.parametrize("fn, message", [
    (log_of_sigmoid, "underflows"),
    (rejected_detached, "reaches policy_rejected_logps"),
    (loss_from_detached_rewards, "carries no gradient"),
    (beta_outside, "beta is outside the log-sigmoid"),
    (swapped, "swapped"),
    (cdpo, "cDPO"),
    (not_normalised, "1 - 2 eps is missing"),
    (weights_swapped, "eps and 1 - eps are swapped"),
    (plain_dpo, "plain DPO"),
    (rewards_without_beta, "multiply the log-ratio by beta"),
    (summed, "sum over pairs"),
    (lambda *args: rdpo(*args)[0], "tuple"),
])
def test_dpo_loss_check(fn, message):
    check_dpo_loss(rdpo)
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


def test_outcome_check_re_measures_the_model():
    """An untrained copy of the SFT model ties every reply (win rate 0.5): the re-measured outcome fails."""
    sft = load_pretrained("tiny-gpt-sft", progress=False)[0]
    with pytest.raises(CheckError, match="win rate over SFT under r\\* on the grader's held-out tasks is 0.50"):
        check_dpo_outcome(sft, "tiny-gpt-sft", 16, min_win_rate=0.6, max_kl=5.0)
    with pytest.raises(CheckError, match="did not load into tiny-gpt-sft"):
        check_dpo_outcome(load_pretrained("tiny-gpt-rm", progress=False)[0], "tiny-gpt-sft", 16, min_win_rate=0.6,
                          max_kl=5.0)


def test_checks_leave_the_global_generator_alone():
    state = torch.random.get_rng_state()
    check_sequence_logps(sequence_logps)
    assert torch.equal(state, torch.random.get_rng_state())
