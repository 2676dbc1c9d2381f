"""Lab 06 plausible wrong submissions (issue 24 §6): each loses its exercise's check; correct variants pass."""
from pathlib import Path

import torch
import torch.nn.functional as F

from course_utils.checks import dpo as checks
from catch_rate import catch_rate_tests, solution_functions

SOLUTION = Path(__file__).resolve().parents[1] / "solutions" / "06_dpo.ipynb"
SOL = solution_functions(SOLUTION, {"torch": torch, "F": F})


def _token_logps(logits, ids):
    return torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)


def _rdpo(h, noise, logsig=F.logsigmoid):
    return (-(1 - noise) * logsig(h) + noise * logsig(-h)) / (1 - 2 * noise)


def _with_h(loss_of_h):
    """A dpo_loss whose rewards are right and whose mean loss is ``loss_of_h(h, beta, noise)``."""
    def dpo_loss(pc, pr, rc, rr, beta, noise):
        chosen, rejected = beta * (pc - rc), beta * (pr - rr)
        return loss_of_h(chosen - rejected, beta, noise, pc, pr), chosen.detach(), rejected.detach()
    return dpo_loss


def logps_log_of_softmax(logits, ids, mask):
    tok = torch.log(torch.softmax(logits[:, :-1], -1)).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return (tok * mask[:, 1:]).sum(-1)


def logps_logsumexp_without_max(logits, ids, mask):
    shifted = logits[:, :-1]
    tok = (shifted - shifted.exp().sum(-1, keepdim=True).log()).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return (tok * mask[:, 1:]).sum(-1)


def logps_mask_shifted_in_place(logits, ids, mask):
    mask[:, :-1] = mask[:, 1:].clone()
    return (_token_logps(logits, ids) * mask[:, :-1]).sum(-1)


def loss_inputs_changed_in_place(pc, pr, rc, rr, beta, noise):
    pc -= rc
    pr -= rr
    return _rdpo(beta * (pc - pr), noise).mean(), (beta * pc).detach(), (beta * pr).detach()


def policy_exp_without_max(ref, rewards, beta):
    weights = ref * torch.exp(rewards / beta)
    return weights / weights.sum(-1, keepdim=True)


def policy_ref_changed_in_place(ref, rewards, beta):
    ref.mul_(torch.exp(rewards / beta))
    return ref / ref.sum(-1, keepdim=True)


WRONG = {
    "logps log(softmax)": (checks.check_sequence_logps, logps_log_of_softmax, "underflows to log.0."),
    "logps logsumexp without the max": (checks.check_sequence_logps, logps_logsumexp_without_max, "exp.x. overflows"),
    "logps mask shifted in place": (checks.check_sequence_logps, logps_mask_shifted_in_place,
                                    "changed completion_mask in place"),
    "logps mean": (checks.check_sequence_logps,
                   lambda lg, ids, m: (_token_logps(lg, ids) * m[:, 1:]).sum(-1) / m[:, 1:].sum(-1), "DPO SUMS"),
    "logps unshifted": (checks.check_sequence_logps,
                        lambda lg, ids, m: (torch.log_softmax(lg, -1).gather(-1, ids[..., None])[..., 0] * m).sum(-1),
                        "no shift"),
    "logps detached": (checks.check_sequence_logps, lambda lg, ids, m: SOL["sequence_logps"](lg.detach(), ids, m),
                       "carry no gradient"),
    "logps unmasked": (checks.check_sequence_logps, lambda lg, ids, m: _token_logps(lg, ids).sum(-1),
                       "every token is summed"),
    "logps in float16": (checks.check_sequence_logps, lambda lg, ids, m: SOL["sequence_logps"](lg.half(), ids, m).float(),
                         "differ from TRL's"),
    "loss log(sigmoid)": (checks.check_dpo_loss, _with_h(lambda h, b, n, *_: _rdpo(
        h, n, lambda x: torch.log(torch.sigmoid(x))).mean()), "use F.logsigmoid"),
    "loss log1p(exp)": (checks.check_dpo_loss, _with_h(lambda h, b, n, *_: _rdpo(
        h, n, lambda x: -torch.log1p(torch.exp(-x))).mean()), "use F.logsigmoid"),
    "loss log(sigmoid + eps)": (checks.check_dpo_loss, _with_h(lambda h, b, n, *_: _rdpo(
        h, n, lambda x: torch.log(torch.sigmoid(x) + 1e-10)).mean()), "TRL's rDPO gives"),
    "loss clamped log(sigmoid)": (checks.check_dpo_loss, _with_h(lambda h, b, n, *_: _rdpo(
        h.clamp(-50, 50), n, lambda x: torch.log(torch.sigmoid(x))).mean()), "TRL's rDPO gives"),
    "loss cDPO": (checks.check_dpo_loss, _with_h(lambda h, b, n, *_: (
        -(1 - n) * F.logsigmoid(h) - n * F.logsigmoid(-h)).mean()), "conservative DPO"),
    "loss from detached rewards": (checks.check_dpo_loss, _with_h(lambda h, b, n, *_: _rdpo(h.detach(), n).mean()),
                                   "carries no gradient"),
    "loss sum": (checks.check_dpo_loss, _with_h(lambda h, b, n, *_: _rdpo(h, n).sum()), "TRL takes the mean"),
    "loss beta outside": (checks.check_dpo_loss, _with_h(lambda h, b, n, *_: (b * _rdpo(h / b, n)).mean()),
                          "beta is outside"),
    "loss without the reference": (checks.check_dpo_loss, _with_h(lambda h, b, n, pc, pr: _rdpo(
        b * (pc - pr), n).mean()), "TRL's rDPO gives"),
    "loss inputs in place": (checks.check_dpo_loss, loss_inputs_changed_in_place,
                             "changed policy_chosen, policy_rejected in place"),
    "policy exp without max": (checks.check_optimal_policy, policy_exp_without_max, "overflows to inf"),
    "policy ref in place": (checks.check_optimal_policy, policy_ref_changed_in_place, "changed ref_probs in place"),
    "policy beta times r": (checks.check_optimal_policy,
                            lambda ref, r, b: torch.softmax(ref.log() + b * r, -1), "the reward is divided by beta"),
    "policy without ref": (checks.check_optimal_policy, lambda ref, r, b: torch.softmax(r / b, -1), "pi_ref is missing"),
    "policy softmax of probs": (checks.check_optimal_policy, lambda ref, r, b: torch.softmax(ref + r / b, -1),
                                "not the maximiser"),
    "policy normalised over prompts": (checks.check_optimal_policy,
                                       lambda ref, r, b: torch.softmax(ref.log() + r / b, 0), "wrong axis"),
}


def logps_loop(logits, ids, mask):
    rows = []
    for row in range(len(ids)):
        total = logits.new_zeros(())
        for t in range(1, ids.shape[1]):
            if mask[row, t]:
                total = total + logits[row, t - 1].log_softmax(-1)[ids[row, t]]
        rows.append(total)
    return torch.stack(rows)


def loss_loop(pc, pr, rc, rr, beta, noise):
    losses = [_rdpo(beta * ((pc[i] - rc[i]) - (pr[i] - rr[i])), noise) for i in range(len(pc))]
    return torch.stack(losses).mean(), beta * (pc - rc), beta * (pr - rr)


def policy_max_subtracted(ref, rewards, beta):
    weights = ref * torch.exp((rewards - rewards.max(-1, keepdim=True).values) / beta)
    return weights / weights.sum(-1, keepdim=True)


RIGHT = {
    "solution logps": (checks.check_sequence_logps, SOL["sequence_logps"]),
    "logps loop": (checks.check_sequence_logps, logps_loop),
    "logps logsumexp": (checks.check_sequence_logps, lambda lg, ids, m: (
        (lg[:, :-1].gather(-1, ids[:, 1:, None])[..., 0] - torch.logsumexp(lg[:, :-1], -1)) * m[:, 1:]).sum(-1)),
    "solution loss": (checks.check_dpo_loss, SOL["dpo_loss"]),
    "loss loop": (checks.check_dpo_loss, loss_loop),
    "loss softplus": (checks.check_dpo_loss, _with_h(lambda h, b, n, *_: (
        ((1 - n) * F.softplus(-h) - n * F.softplus(h)) / (1 - 2 * n)).mean())),
    "solution policy": (checks.check_optimal_policy, SOL["optimal_policy"]),
    "policy max subtracted": (checks.check_optimal_policy, policy_max_subtracted),
    "policy in log space": (checks.check_optimal_policy, lambda ref, r, b: (
        (ref.log() + r / b) - torch.logsumexp(ref.log() + r / b, -1, keepdim=True)).exp()),
}


test_a_plausible_wrong_version_loses_its_check, test_a_correct_version_passes = catch_rate_tests(WRONG, RIGHT)
