"""Lab 09's checks accept the course's helpers and reject each plausible wrong version, naming the mistake."""
import math
import re

import pytest
import torch

from course_utils import grpo
from course_utils.checks import CheckError
from course_utils.checks import grpo as checks


def test_checks_accept_the_reference_helpers():
    checks.check_verify(grpo.verify)
    checks.check_group_advantages(grpo.group_advantages)
    checks.check_grpo_loss(grpo.grpo_loss)
    checks.check_pass_at_k(grpo.pass_at_k)


@pytest.mark.parametrize("fn, message", [
    (lambda r, a, c: a in r.lower(), "substring"),
    (lambda r, a, c: {w for w in re.findall(r"[a-z]+", r) if w in c} == set(a.split(" , ")), "lower-cased"),
    (lambda r, a, c: {w for w in r.lower().split() if w in c} == set(a.split(" , ")), "punctuation"),
])
def test_verify_check_rejects(fn, message):
    with pytest.raises(CheckError, match=message):
        checks.check_verify(fn)


def batch_normalised(r, g, scale):
    return (r - r.mean()) / (r.std() + 1e-4) if scale else r - r.mean()


def population_std(r, g, scale):
    x = r.view(-1, g)
    c = x - x.mean(1, keepdim=True)
    return (c / (x.std(1, correction=0, keepdim=True) + 1e-4) if scale else c).reshape(-1)


def strided(r, g, scale):
    x = r.view(g, -1)
    c = x - x.mean(0, keepdim=True)
    return (c / (x.std(0, keepdim=True) + 1e-4) if scale else c).reshape(-1)


@pytest.mark.parametrize("fn, message", [(batch_normalised, "whole batch"), (population_std, "Bessel"),
                                         (strided, "strided")])
def test_advantages_check_rejects(fn, message):
    with pytest.raises(CheckError, match=message):
        checks.check_group_advantages(fn)


def loss_parts(lp, old, adv, mask, clip, beta, ref, detach=True, level="token", use_max=False):
    if detach:
        adv, old = adv.detach(), old.detach()
    ratio = torch.exp(lp - old)
    pick = torch.max if use_max else torch.min
    per = -pick(ratio * adv[:, None], ratio.clamp(1 - clip, 1 + clip) * adv[:, None])
    d = ref - lp
    per = per + beta * (torch.exp(d) - d - 1) * ratio
    if level == "token":
        return (per * mask).sum() / mask.sum()
    return ((per * mask).sum(-1) / mask.sum(-1)).mean()


@pytest.mark.parametrize("kwargs, message", [({"detach": False}, "detach"), ({"level": "sequence"}, "per sequence"),
                                             ({"use_max": True}, "min of the two")])
def test_loss_check_rejects(kwargs, message):
    with pytest.raises(CheckError, match=message):
        checks.check_grpo_loss(lambda *a: loss_parts(*a, **kwargs))


@pytest.mark.parametrize("fn, message", [
    (lambda n, c, k: 1 - (1 - c / n) ** k, "WITH replacement"),
    (lambda n, c, k: c / n, "grow with k"),
    (lambda n, c, k: math.comb(c, k) / math.comb(n, k), "ALL k samples"),
    (lambda n, c, k: 1.0 - math.comb(n - c, k) * 1.0 / math.comb(n, k), "overflow"),
])
def test_pass_at_k_check_rejects(fn, message):
    with pytest.raises(CheckError, match=message):
        checks.check_pass_at_k(fn)


def test_outcome_check_re_measures_the_weights():
    """An untrained copy gains exactly 0 (the same samples), NaN weights and other models are refused."""
    from course_utils.models import load_pretrained

    sft = load_pretrained("tiny-gpt-sft", progress=False)[0]
    with pytest.raises(CheckError, match="held-out tasks went (.*) -> \\1, less than \\+0.02"):
        checks.check_grpo_outcome(sft, "tiny-gpt-sft", 12)
    with torch.no_grad():
        sft.lm_head.weight.fill_(float("nan"))
    with pytest.raises(CheckError, match="NaN or inf: training diverged"):
        checks.check_grpo_outcome(sft, "tiny-gpt-sft", 12)
    with pytest.raises(CheckError, match="did not load into tiny-gpt-sft"):
        checks.check_grpo_outcome(torch.nn.Linear(1, 1), "tiny-gpt-sft", 12)
