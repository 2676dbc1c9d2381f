"""Lab 09 plausible wrong submissions (issue 24 §6): each loses its exercise's check; correct variants pass."""
import math
import re
from pathlib import Path

import torch

from course_utils.checks import grpo as checks
from catch_rate import catch_rate_tests, solution_functions

SOLUTION = Path(__file__).resolve().parents[1] / "solutions" / "09_rlvr_grpo.ipynb"
SOL = solution_functions(SOLUTION, {"torch": torch, "re": re, "math": math})


def _verify(words=lambda text: re.findall(r"[a-z]+", text.lower()), agree=lambda said, wanted: said == wanted):
    """A verify that reads words with ``words`` and compares the named choices with ``agree``."""
    def verify(response, answer, choices):
        return agree({w for w in words(response) if w in choices}, set(re.findall(r"[a-z]+", answer.lower())))
    return verify


def advantages_in_place(rewards, group_size, scale=True):
    grouped = rewards.view(-1, group_size)
    std = grouped.std(1, keepdim=True)
    grouped -= grouped.mean(1, keepdim=True)
    if scale:
        grouped /= std + 1e-4
    return rewards


def _advantages(divide_by):
    """group_advantages whose scaled version divides the centred rewards by ``divide_by(grouped)``."""
    def group_advantages(rewards, group_size, scale=True):
        grouped = rewards.view(-1, group_size)
        centred = grouped - grouped.mean(1, keepdim=True)
        return (centred / divide_by(grouped) if scale else centred).reshape(-1)
    return group_advantages


def _loss(ratio=lambda lp, old: torch.exp(lp - old.detach()), kl=None, reduce=lambda x, m: (x * m).sum() / m.sum(),
          detach_advantages=True):
    """A grpo_loss with the ratio, the per-token KL, the reduction or the advantages' detach swapped."""
    def grpo_loss(logprobs, old_logprobs, advantages, mask, clip=0.2, beta=0.0, ref_logprobs=None):
        adv = (advantages.detach() if detach_advantages else advantages)[:, None]
        rho = ratio(logprobs, old_logprobs)
        per_token = -torch.min(rho * adv, rho.clamp(1 - clip, 1 + clip) * adv)
        if beta:
            d = ref_logprobs.detach() - logprobs
            per_token = per_token + beta * (kl(logprobs, ref_logprobs.detach()) if kl else torch.exp(d) - d - 1) * rho
        return reduce(per_token, mask)
    return grpo_loss


def loss_advantages_unsqueezed_in_place(logprobs, old_logprobs, advantages, mask, clip=0.2, beta=0.0,
                                        ref_logprobs=None):
    advantages.unsqueeze_(1)
    return _loss()(logprobs, old_logprobs, advantages[:, 0], mask, clip, beta, ref_logprobs)


def pass_at_k_product_off_by_one(n, c, k):
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c, n + 1))


def pass_at_k_float_factorials(n, c, k):
    if n - c < k:
        return 1.0
    comb = lambda a, b: float(math.factorial(a)) / (float(math.factorial(b)) * float(math.factorial(a - b)))
    return 1 - comb(n - c, k) / comb(n, k)


WRONG = {
    "verify words by \\w+": (checks.check_verify, _verify(words=lambda t: re.findall(r"\w+", t.lower())),
                             r"verify\('\w+2'"),
    "verify answer is a subset": (checks.check_verify, _verify(agree=lambda said, wanted: wanted <= said),
                                  "names other candidates too"),
    "verify split on whitespace": (checks.check_verify, _verify(words=lambda t: [
        w.strip(".,!()") for w in t.lower().split()]), "split into runs of letters"),
    "verify every word, not the choices": (checks.check_verify, lambda r, a, c: set(re.findall(
        r"[a-z]+", r.lower())) == set(re.findall(r"[a-z]+", a.lower())), "the rule says True"),
    "verify a list, not a set": (checks.check_verify, lambda r, a, c: [w for w in re.findall(
        r"[a-z]+", r.lower()) if w in c] == re.findall(r"[a-z]+", a.lower()), "repeated words must not matter"),
    "advantages in place": (checks.check_group_advantages, advantages_in_place, "changed rewards in place"),
    "advantages without the 1e-4": (checks.check_group_advantages, _advantages(lambda g: g.std(1, keepdim=True)),
                                    "differ from TRL's"),
    "advantages 1e-4 inside the sqrt": (checks.check_group_advantages, _advantages(
        lambda g: (g.var(1, keepdim=True) + 1e-4).sqrt()), "differ from TRL's"),
    "advantages with the population std": (checks.check_group_advantages, _advantages(
        lambda g: g.std(1, correction=0, keepdim=True) + 1e-4), "Bessel-corrected"),
    "loss ratio exp / exp": (checks.check_grpo_loss, _loss(ratio=lambda lp, old: lp.exp() / old.detach().exp()),
                             "exp.logprob. underflows"),
    "loss KL exp / exp": (checks.check_grpo_loss, _loss(kl=lambda lp, ref: ref.exp() / lp.exp() - (ref - lp) - 1),
                          "exp.logprob. underflows"),
    "loss old log-probs not detached": (checks.check_grpo_loss, _loss(ratio=lambda lp, old: torch.exp(lp - old)),
                                        "flows into old_logprobs"),
    "loss advantages not detached": (checks.check_grpo_loss, _loss(detach_advantages=False), "flows into advantages"),
    "loss mean over every position": (checks.check_grpo_loss, _loss(reduce=lambda x, m: (x * m).mean()),
                                      "number of RESPONSE tokens"),
    "loss per sequence": (checks.check_grpo_loss, _loss(reduce=lambda x, m: ((x * m).sum(-1) / m.sum(-1)).mean()),
                          "average per sequence"),
    "loss ratio upside down": (checks.check_grpo_loss, _loss(ratio=lambda lp, old: torch.exp(old.detach() - lp)),
                               "TRL's GRPOTrainer"),
    "loss advantages changed in place": (checks.check_grpo_loss, loss_advantages_unsqueezed_in_place,
                                         "changed advantages in place"),
    "pass@k with replacement": (checks.check_pass_at_k, lambda n, c, k: 1 - (1 - c / n) ** k, "WITH replacement"),
    "pass@k product off by one": (checks.check_pass_at_k, pass_at_k_product_off_by_one, "enumeration gives"),
    "pass@k float factorials": (checks.check_pass_at_k, pass_at_k_float_factorials, "overflow floats"),
}


def advantages_loop(rewards, group_size, scale=True):
    out = torch.empty_like(rewards)
    for start in range(0, len(rewards), group_size):
        group = rewards[start:start + group_size]
        out[start:start + group_size] = (group - group.mean()) / ((group.std() + 1e-4) if scale else 1.0)
    return out


RIGHT = {
    "solution verify": (checks.check_verify, SOL["verify"]),
    "solution advantages": (checks.check_group_advantages, SOL["group_advantages"]),
    "advantages loop": (checks.check_group_advantages, advantages_loop),
    "solution loss": (checks.check_grpo_loss, SOL["grpo_loss"]),
    "loss KL with expm1": (checks.check_grpo_loss, _loss(kl=lambda lp, ref: torch.expm1(ref - lp) - (ref - lp))),
    "solution pass@k": (checks.check_pass_at_k, SOL["pass_at_k"]),
    "pass@k exact integers": (checks.check_pass_at_k, lambda n, c, k: 1 - math.comb(n - c, k) / math.comb(n, k)),
}


test_a_plausible_wrong_version_loses_its_check, test_a_correct_version_passes = catch_rate_tests(WRONG, RIGHT)
