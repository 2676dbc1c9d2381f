"""Lab 06 plausible wrong submissions (issue 24 §6): each loses its exercise's check; correct variants pass."""
import copy
import functools
from pathlib import Path

import torch
import torch.nn.functional as F

from course_utils.checks import dpo as checks
from course_utils.checks.rlhf import grader_eval_tasks
from course_utils.dpo import encode_pair, preferred_ft, train_dpo, with_reference
from course_utils.models import load_pretrained
from course_utils.world.preferences import rlhf_split, sample_pairs
from catch_rate import catch_rate_tests, solution_functions

SOLUTION = Path(__file__).resolve().parents[1] / "solutions" / "06_dpo.ipynb"
# chosen_shift: what exercise 5's measurement cell leaves for the CHOSEN_ROSE cell (not run here)
SOL = solution_functions(SOLUTION, {"torch": torch, "F": F, "chosen_shift": -1.0})


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




# ------------------------------------------------------------------------------ exercise 5: the log-prob shifts
@functools.cache
def trained(how: str) -> torch.nn.Module:
    """tiny-gpt-sft after a short DPO run ("dpo"), or after SFT on the chosen replies of the check's own hidden pairs
    ("chosen_sft": its chosen replies do become likelier; SFT on other pairs' chosen replies lowered them)."""
    model, tok = load_pretrained("tiny-gpt-sft", progress=False)
    policy = copy.deepcopy(model)
    torch.manual_seed(0)
    if how == "dpo":
        pairs = sample_pairs(rlhf_split(300, 1, 1)["pairs"], 300, seed=0)
        examples = with_reference([encode_pair(tok, p.prompt, p.chosen, p.rejected) for p in pairs], model,
                                  tok.pad_token_id)
        train_dpo(policy, examples, tok.pad_token_id, beta=0.1, steps=40, batch_size=16, lr=3e-4, progress=False)
    else:
        pairs = sample_pairs(grader_eval_tasks(seed=7), checks.SHIFT_PAIRS, seed=7)  # as checks.shift_batch draws
        preferred_ft(policy, tok, pairs, steps=20, batch_size=16, lr=1e-3, desc="chosen SFT")
    return policy


def shift_check(chosen_rose=None, how: str = "dpo"):
    """check_logp_shift on the ``how`` policy, with the solution's conclusion for it unless ``chosen_rose`` is given."""
    def check(fn):
        rose = chosen_rose if chosen_rose is not None else how == "chosen_sft"
        checks.check_logp_shift(fn, trained(how), "tiny-gpt-sft", rose)
    return check


def _shift_of(row_logps, reduce=lambda x: x.mean()):
    """A logp_shift from a per-row log-prob function ``row_logps(logits, batch)``."""
    def logp_shift(policy, reference, batch):
        with torch.no_grad():
            rows = [row_logps(m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch)
                    for m in (policy, reference)]
        chosen, rejected = (rows[0] - rows[1]).chunk(2)
        return reduce(chosen).item(), reduce(rejected).item()
    return logp_shift


_sum = lambda lg, b: SOL["sequence_logps"](lg, b["input_ids"], b["completion_mask"])


def shift_reference_minus_policy(policy, reference, batch):
    return SOL["logp_shift"](reference, policy, batch)


def shift_policy_twice(policy, reference, batch):
    return SOL["logp_shift"](policy, policy, batch)


def shift_swapped(policy, reference, batch):
    return SOL["logp_shift"](policy, reference, batch)[::-1]


def shift_no_reference(policy, reference, batch):
    with torch.no_grad():
        chosen, rejected = _sum(policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                batch).chunk(2)
    return chosen.mean().item(), rejected.mean().item()


WRONG_SHIFT = {
    "shift reference minus policy": (shift_check(), shift_reference_minus_policy, "the policy's log-prob minus"),
    "shift policy for both": (shift_check(), shift_policy_twice, "score the batch with the policy AND"),
    "shift chosen and rejected swapped": (shift_check(), shift_swapped, "chosen rows first"),
    "shift without the reference": (shift_check(), shift_no_reference, "reference's log-probs are not subtracted"),
    "shift mean over tokens": (shift_check(), _shift_of(lambda lg, b: _sum(lg, b) / b["completion_mask"][:, 1:].sum(1)),
                               "DPO SUMS"),
    "shift prompt summed": (shift_check(), _shift_of(lambda lg, b: SOL["sequence_logps"](lg, b["input_ids"],
                                                                                          b["attention_mask"])),
                            "prompt's tokens are summed"),
    "shift summed over pairs": (shift_check(), _shift_of(_sum, lambda x: x.sum()), "mean shift per pair"),
    "shift not a pair": (shift_check(), lambda p, r, b: SOL["logp_shift"](p, r, b)[0], "two numbers"),
    # the conclusion: DPO's loss seems to promise a likelier chosen reply; the measurement decides
    "conclusion chosen rose (DPO policy)": (shift_check(True), SOL["logp_shift"], "fell by .* nats"),
    "conclusion chosen fell (SFT on the chosen)": (shift_check(False, "chosen_sft"), SOL["logp_shift"], "rose by"),
    "conclusion as text": (shift_check("False"), SOL["logp_shift"], "a bool"),
}


def shift_loop(policy, reference, batch):
    chosen, rejected, half = 0.0, 0.0, len(batch["input_ids"]) // 2
    for row in range(len(batch["input_ids"])):
        one = {k: v[row:row + 1] for k, v in batch.items()}
        shift = _shift_of(_sum)(policy, reference, {k: torch.cat([v, v]) for k, v in one.items()})[0]
        if row < half:
            chosen += shift / half
        else:
            rejected += shift / half
    return chosen, rejected


RIGHT_SHIFT = {
    "shift solution": (shift_check(), SOL["logp_shift"]),
    "shift solution, SFT on the chosen": (shift_check(how="chosen_sft"), SOL["logp_shift"]),
    "shift one row at a time": (shift_check(), shift_loop),
    "shift as tensors in float64": (shift_check(), lambda p, r, b: tuple(
        torch.tensor(x, dtype=torch.float64) for x in SOL["logp_shift"](p, r, b))),
    "conclusion as a bool tensor": (shift_check(torch.tensor(-3.0) > 0), SOL["logp_shift"]),
}


test_a_plausible_wrong_version_loses_its_check, test_a_correct_version_passes = catch_rate_tests(
    {**WRONG, **WRONG_SHIFT}, {**RIGHT, **RIGHT_SHIFT})
