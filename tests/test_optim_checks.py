"""Lab 03's training-machinery checks (schedule, clipping, AdamW): the solution passes, and plausible
mistakes fail with a message that names the mistake. The solution code is read from solutions/03."""
import math
from pathlib import Path

import pytest
import torch

from course_utils.checks import CheckError
from course_utils.checks import optim as checks
from notebook_helpers import solution_namespace

SOLUTION = Path(__file__).resolve().parents[1] / "solutions" / "03_gpt_pretraining.ipynb"


@pytest.fixture(scope="module")
def sol():
    return solution_namespace(SOLUTION, "checks import gpt")


def test_solution_passes(sol):
    checks.check_lr_schedule(sol["lr_at"])
    checks.check_clip_grad_norm(sol["clip_by_global_norm"])
    checks.check_adamw_step(sol["adamw_step"])


def test_reference_schedule_is_the_documented_formula():
    """The lab's formula, written out, equals transformers' schedule (so the lab's text is right)."""
    for warmup, total, max_lr, min_lr in checks.SCHEDULES:
        for step, lr in enumerate(checks.reference_lrs(max_lr, min_lr, warmup, total)):
            p = (step - warmup) / max(1, total - warmup)
            formula = max_lr * step / warmup if step < warmup else \
                min_lr + (max_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * p))
            assert math.isclose(lr, formula, rel_tol=1e-9, abs_tol=1e-15)


# --- Exercise 8: schedule -------------------------------------------------------------------------

def _cos(step, max_lr, min_lr, warmup, total):
    return min_lr + (max_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def warmup_off_by_one(step, max_lr, min_lr, warmup, total):
    return max_lr * (step + 1) / warmup if step < warmup else _cos(step, max_lr, min_lr, warmup, total)


def no_floor(step, max_lr, min_lr, warmup, total):
    return max_lr * step / warmup if step < warmup else _cos(step, max_lr, 0.0, warmup, total)


def clamped_floor(step, max_lr, min_lr, warmup, total):
    return max_lr * step / warmup if step < warmup else max(min_lr, _cos(step, max_lr, 0.0, warmup, total))


def progress_from_zero(step, max_lr, min_lr, warmup, total):
    if step < warmup:
        return max_lr * step / warmup
    return min_lr + (max_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * step / total))


def linear_decay(step, max_lr, min_lr, warmup, total):
    return max_lr * step / warmup if step < warmup else max_lr - (max_lr - min_lr) * (step - warmup) / max(1, total - warmup)


def returns_tensor_list(step, max_lr, min_lr, warmup, total):
    return [max_lr]


@pytest.mark.parametrize("fn, words", [
    (warmup_off_by_one, "off by one"),
    (no_floor, "decays to 0"),
    (clamped_floor, "clamping"),
    (progress_from_zero, "end of the warm-up"),
    (linear_decay, "cosine phase"),
    (returns_tensor_list, "return a number"),
])
def test_schedule_mistakes_are_named(fn, words):
    with pytest.raises(CheckError, match=words):
        checks.check_lr_schedule(fn)


# --- Exercise 9: clipping -------------------------------------------------------------------------

def per_tensor(grads, max_norm):
    total = torch.sqrt(sum((g ** 2).sum() for g in grads))
    return [g * torch.clamp(max_norm / (g.norm() + 1e-6), max=1.0) for g in grads], total


def clips_below_threshold(grads, max_norm):
    total = torch.sqrt(sum((g ** 2).sum() for g in grads))
    return [g * max_norm / (total + 1e-6) for g in grads], total


def sum_of_norms(grads, max_norm):
    total = sum(g.norm() for g in grads)
    return [g * torch.clamp(max_norm / (total + 1e-6), max=1.0) for g in grads], total


def in_place(grads, max_norm):
    total = torch.sqrt(sum((g ** 2).sum() for g in grads))
    factor = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(factor)
    return grads, total


def norm_after_clipping(grads, max_norm):
    total = torch.sqrt(sum((g ** 2).sum() for g in grads))
    clipped = [g * torch.clamp(max_norm / (total + 1e-6), max=1.0) for g in grads]
    return clipped, torch.sqrt(sum((g ** 2).sum() for g in clipped))


def only_the_list(grads, max_norm):
    return per_tensor(grads, max_norm)[0]


@pytest.mark.parametrize("fn, words", [
    (per_tensor, "OWN norm"),
    (clips_below_threshold, "below max_norm must stay unchanged"),
    (sum_of_norms, "total norm"),
    (in_place, "in place"),
    (norm_after_clipping, "BEFORE clipping"),
    (only_the_list, "return a tuple"),
])
def test_clip_mistakes_are_named(fn, words):
    with pytest.raises(CheckError, match=words):
        checks.check_clip_grad_norm(fn)


# --- Exercise 10: AdamW ---------------------------------------------------------------------------

def adamw(decay_all=False, l2=False, bias_correction=True, lr_in_decay=True, store_corrected=False,
          mutate=False, same_step=False):
    """An AdamW step with the given mistake switched on."""
    def step(params, grads, state, lr, weight_decay, betas=(0.9, 0.999), eps=1e-8):
        b1, b2 = betas
        t = state["step"] + 1
        new, m_all, v_all = {}, {}, {}
        for n, p in params.items():
            wd = weight_decay if (decay_all or p.dim() >= 2) else 0.0
            g = grads[n] + wd * p if l2 else grads[n]
            m = b1 * state["exp_avg"][n] + (1 - b1) * g
            v = b2 * state["exp_avg_sq"][n] + (1 - b2) * g * g
            m_hat, v_hat = (m / (1 - b1 ** t), v / (1 - b2 ** t)) if bias_correction else (m, v)
            base = p if l2 else p * (1 - (lr * wd if lr_in_decay else wd))
            new[n] = base - lr * m_hat / (v_hat.sqrt() + eps)
            m_all[n], v_all[n] = (m_hat, v_hat) if store_corrected else (m, v)
            if mutate:
                state["exp_avg"][n].copy_(m)
        return new, {"step": state["step"] if same_step else t, "exp_avg": m_all, "exp_avg_sq": v_all}
    return step


@pytest.mark.parametrize("kwargs, words", [
    (dict(decay_all=True), "decay only matrices"),
    (dict(l2=True), "L2"),
    (dict(bias_correction=False), "bias-corrected"),
    (dict(lr_in_decay=False), "scaled by the learning rate"),
    (dict(store_corrected=True), "BEFORE bias correction"),
    (dict(mutate=True), "in place"),
    (dict(same_step=True), "one more"),
])
def test_adamw_mistakes_are_named(kwargs, words):
    with pytest.raises(CheckError, match=words):
        checks.check_adamw_step(adamw(**kwargs))


def test_correct_variant_passes():
    checks.check_adamw_step(adamw())
