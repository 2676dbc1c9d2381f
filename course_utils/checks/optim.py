"""Checks for lab 03's training machinery: the learning-rate schedule, clipping and one AdamW step.

Oracles: ``transformers.get_cosine_with_min_lr_schedule_with_warmup`` (the schedule the course's
``train`` uses), ``torch.nn.utils.clip_grad_norm_`` and ``torch.optim.AdamW`` with two parameter
groups (weight decay on matrices, none on biases and norm weights). The student's functions are pure:
they receive numbers and tensors and return new ones. When a result is wrong, the checks compare it
with typical mistakes (warm-up off by one, no floor, per-tensor norms, Adam + L2, ...) and name the
one that matches.
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable

import torch
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from . import CheckError, assert_close, drawn_seed, fenced, forbids, forbids_modules, passed

# Modules whose code the student's functions may not run while these checks call them: the oracles (transformers'
# schedules in transformers.optimization, torch.optim's AdamW and schedulers, torch.nn.utils.clip_grad), the course's
# training loop that uses them (course_utils.training) and the checks' own references. torch.optim's fused AdamW
# kernel is a C operator (torch._fused_adamw_), seen by its name instead (``forbids``).
ANSWERS = ("transformers", "torch.optim", "torch.nn.utils.clip_grad", "course_utils.training", "course_utils.checks")

SCHEDULES = ((3, 10, 1.0, 0.1), (10, 30, 3e-3, 3e-4), (0, 12, 1e-2, 0.0), (4, 4, 0.5, 0.05), (1, 15, 2.0, 0.5))


def reference_lrs(max_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> list[float]:
    """The learning rate of ``get_cosine_with_min_lr_schedule_with_warmup`` at steps 0..total_steps."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=max_lr)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(optimizer, warmup_steps, total_steps, min_lr=min_lr)
    lrs = []
    for _ in range(total_steps + 1):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return lrs


def _schedule_mistakes(max_lr: float, min_lr: float, warmup: int, total: int) -> dict[str, list[float]]:
    """Schedules with one typical mistake each (for the diagnosis of a wrong answer)."""
    def cosine(step, floor=min_lr, span=total - warmup):
        return floor + (max_lr - floor) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, span)))

    steps = range(total + 1)
    warm = [max_lr * s / warmup if s < warmup else None for s in steps]
    return {
        "the warm-up is off by one: at step s < warmup_steps the rate is max_lr * s / warmup_steps, so step 0 "
        "has rate 0 (you used s + 1)":
            [max_lr * (s + 1) / warmup if s < warmup else cosine(s) for s in steps],
        "the cosine decays to 0, not to min_lr: lr = min_lr + (max_lr - min_lr) * 0.5 * (1 + cos(pi * progress))":
            [w if w is not None else cosine(s, floor=0.0) for s, w in zip(steps, warm)],
        "clamping a cosine that goes to 0 at min_lr is not the same curve: scale the cosine between min_lr and "
        "max_lr, lr = min_lr + (max_lr - min_lr) * 0.5 * (1 + cos(pi * progress))":
            [w if w is not None else max(min_lr, cosine(s, floor=0.0)) for s, w in zip(steps, warm)],
        "the cosine's progress must count from the end of the warm-up: progress = (step - warmup_steps) / "
        "(total_steps - warmup_steps)":
            [w if w is not None else min_lr + (max_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * s / max(1, total)))
             for s, w in zip(steps, warm)],
    }


def drawn_schedules(n: int, seed: int) -> list[tuple[int, int, float, float]]:
    """``n`` schedules (warmup, total, max_lr, min_lr) drawn from ``seed``, the boundaries among them.

    The first has no warm-up, the second ends with its warm-up (warmup == total) and the third decays to 0;
    learning rates span 1e-4 to 3.
    """
    rng = random.Random(seed)
    schedules = []
    for i in range(n):
        warmup = 0 if i == 0 else rng.randint(1, 10)
        total = warmup if i == 1 else warmup + rng.randint(1, 30)
        max_lr = 10 ** rng.uniform(-4, 0.5)
        schedules.append((warmup, total, max_lr, 0.0 if i == 2 else max_lr * rng.uniform(0.01, 0.5)))
    return schedules


@drawn_seed
@forbids_modules(*ANSWERS)
def check_lr_schedule(fn: Callable, schedules=SCHEDULES, drawn: int = 0, seed: int = 3) -> None:
    """Exercise 8: ``fn(step, max_lr, min_lr, warmup_steps, total_steps)`` at every step of each schedule.

    ``schedules``: readable cases (the notebook's visible test); ``drawn``: that many more, drawn from ``seed``
    (shifted by the grader's secret draw in grading, so the hidden schedules are in no file).
    """
    for warmup, total, max_lr, min_lr in (*schedules, *drawn_schedules(drawn, seed)):
        what = f"lr_at(step, max_lr={max_lr}, min_lr={min_lr}, warmup_steps={warmup}, total_steps={total})"
        expected = reference_lrs(max_lr, min_lr, warmup, total)
        got = []
        for step in range(total + 1):
            lr = fn(step, max_lr, min_lr, warmup, total)
            if torch.is_tensor(lr) and lr.numel() == 1:
                lr = lr.item()
            if not isinstance(lr, (int, float)) or isinstance(lr, bool):
                raise CheckError(f"{what}: return a number (a Python float), got {type(lr).__name__}")
            got.append(float(lr))
        if all(math.isclose(g, e, rel_tol=1e-6, abs_tol=1e-12) for g, e in zip(got, expected)):
            continue
        for message, wrong in _schedule_mistakes(max_lr, min_lr, warmup, total).items():
            if all(math.isclose(g, w, rel_tol=1e-6, abs_tol=1e-12) for g, w in zip(got, wrong)):
                raise CheckError(f"{what}: {message}")
        step = next(s for s, (g, e) in enumerate(zip(got, expected)) if not math.isclose(g, e, rel_tol=1e-6, abs_tol=1e-12))
        phase = "warm-up" if step < warmup else "cosine"
        raise CheckError(f"{what}: at step {step} ({phase} phase) you return {got[step]:.6g}, the reference "
                         f"{expected[step]:.6g}")
    passed("lr_at (every step equal to transformers' cosine schedule with warm-up and min_lr)")


def _reference_clip(grads: list[torch.Tensor], max_norm: float) -> tuple[list[torch.Tensor], torch.Tensor]:
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    total = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=False)
    return [p.grad for p in params], total


def _clip_mistakes(grads: list[torch.Tensor], max_norm: float) -> dict[str, list[torch.Tensor]]:
    total = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
    return {
        "each tensor was clipped by its OWN norm: clipping by global norm scales every gradient by the same "
        "factor, computed from the norm of all gradients together, sqrt(sum of squares of every entry)":
            [g * min(1.0, max_norm / (g.norm().item() + 1e-6)) for g in grads],
        "gradients whose total norm is already below max_norm must stay unchanged: the factor is "
        "min(1, max_norm / (total_norm + 1e-6)), never above 1": [g * max_norm / (total + 1e-6) for g in grads],
        "the total norm is the square root of the sum of squares of every entry, not the sum of the tensors' "
        "norms": [g * min(1.0, max_norm / (sum(x.norm() for x in grads).item() + 1e-6)) for g in grads],
    }


def _clip_cases(gen: torch.Generator) -> list[tuple[str, list[torch.Tensor], float]]:
    def grads(*shapes, scale=1.0):
        return [torch.randn(*s, generator=gen, dtype=torch.float64) * scale for s in shapes]

    shapes = ((4, 3), (3,), (2, 5, 2), (1,))
    return [
        ("total norm above max_norm, several tensors", grads(*shapes, scale=2.0), 1.0),
        ("total norm below max_norm (nothing to clip)", grads(*shapes, scale=0.1), 5.0),
        ("one tensor with a large norm, the others small", grads((6, 6), scale=5.0) + grads((6,), (2, 2), scale=0.01), 0.5),
        ("a single tensor", grads((5, 4), scale=3.0), 2.0),
        ("all gradients zero", [torch.zeros(3, 2, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)], 1.0),
        ("some gradients zero, the total above max_norm",
         [torch.zeros(3, dtype=torch.float64)] + grads((3, 3), scale=4.0), 1.5),
    ]


@drawn_seed
@forbids_modules(*ANSWERS)
def check_clip_grad_norm(fn: Callable, seed: int = 0) -> None:
    """Exercise 9: ``fn(grads, max_norm) -> (clipped_grads, total_norm)`` against ``clip_grad_norm_``."""
    gen = torch.Generator().manual_seed(seed)
    for case, grads, max_norm in _clip_cases(gen):
        what = f"clip_by_global_norm ({case}, max_norm={max_norm})"
        copies = [g.clone() for g in grads]
        out = fn(grads, max_norm)
        if any(not torch.equal(g, c) for g, c in zip(grads, copies)):
            raise CheckError(f"{what} changed the gradients it received in place: return new tensors")
        if not (isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[0], (tuple, list))):
            raise CheckError(f"{what}: return a tuple (list of clipped gradients, total norm)")
        clipped, total = out
        if len(clipped) != len(grads):
            raise CheckError(f"{what}: {len(grads)} gradients in, {len(clipped)} out: return one per input, in order")
        expected, expected_total = _reference_clip(grads, max_norm)
        total = torch.as_tensor(total, dtype=torch.float64).reshape(())
        assert_close(total, expected_total.double().reshape(()), f"{what}: total norm", atol=1e-8,
                     hint="The total norm is computed BEFORE clipping, over all gradients together: "
                          "sqrt(sum over tensors of sum of squares).")
        if all(torch.is_tensor(c) and c.shape == e.shape and torch.allclose(c.double(), e, atol=1e-8, rtol=1e-5)
               for c, e in zip(clipped, expected)):
            continue
        for message, wrong in _clip_mistakes(grads, max_norm).items():
            if all(torch.is_tensor(c) and c.shape == w.shape and torch.allclose(c.double(), w, atol=1e-8, rtol=1e-5)
                   for c, w in zip(clipped, wrong)):
                raise CheckError(f"{what}: {message}")
        for i, (c, e) in enumerate(zip(clipped, expected)):
            assert_close(c, e, f"{what}: clipped gradient {i}", atol=1e-8,
                         hint="Multiply every gradient by min(1, max_norm / (total_norm + 1e-6)).")
    passed("clip_by_global_norm (equal to torch.nn.utils.clip_grad_norm_)")


def _adamw_params(gen: torch.Generator) -> dict[str, torch.Tensor]:
    shapes = {"wte.weight": (7, 4), "h.0.attn.c_attn.weight": (12, 4), "h.0.attn.c_attn.bias": (12,),
              "h.0.ln_1.weight": (4,), "h.0.ln_1.bias": (4,), "lm_head.scale": (1,)}
    return {name: torch.randn(*shape, generator=gen, dtype=torch.float64) for name, shape in shapes.items()}


def reference_adamw(params: dict, grads_per_step: list[dict], lr: float, weight_decay: float,
                    betas: tuple[float, float], eps: float) -> list[tuple[dict, dict]]:
    """``torch.optim.AdamW`` with weight decay on tensors of 2+ dimensions: (params, state) after each step."""
    live = {n: torch.nn.Parameter(p.clone()) for n, p in params.items()}
    decay = [p for p in live.values() if p.dim() >= 2]
    no_decay = [p for p in live.values() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=betas, eps=eps,
                                  foreach=False)
    states = []
    for grads in grads_per_step:
        for n, p in live.items():
            p.grad = grads[n].clone()
        optimizer.step()
        s = {"step": int(optimizer.state[live[next(iter(live))]]["step"]),
             "exp_avg": {n: optimizer.state[p]["exp_avg"].clone() for n, p in live.items()},
             "exp_avg_sq": {n: optimizer.state[p]["exp_avg_sq"].clone() for n, p in live.items()}}
        states.append(({n: p.detach().clone() for n, p in live.items()}, s))
    return states


def _adamw_variant(params, grads, state, lr, weight_decay, betas, eps, decay_all=False, l2=False,
                   bias_correction=True, lr_in_decay=True) -> dict:
    """One AdamW step with one typical mistake (for the diagnosis of a wrong answer)."""
    b1, b2 = betas
    t = state["step"] + 1
    out = {}
    for n, p in params.items():
        wd = weight_decay if (decay_all or p.dim() >= 2) else 0.0
        g = grads[n] + wd * p if l2 else grads[n]
        m = b1 * state["exp_avg"][n] + (1 - b1) * g
        v = b2 * state["exp_avg_sq"][n] + (1 - b2) * g * g
        if bias_correction:
            m, v = m / (1 - b1 ** t), v / (1 - b2 ** t)
        new = p if l2 else p * (1 - (lr * wd if lr_in_decay else wd))
        out[n] = new - lr * m / (v.sqrt() + eps)
    return out


@drawn_seed
@forbids("_fused_adam")
@forbids_modules(*ANSWERS)
def check_adamw_step(fn: Callable, seed: int = 0, settings=((0.05, 0.1, (0.9, 0.999), 1e-8),
                                                          (0.01, 0.5, (0.8, 0.95), 1e-6))) -> None:
    """Exercise 10: ``fn(params, grads, state, lr, weight_decay, betas, eps) -> (params, state)`` against AdamW."""
    gen = torch.Generator().manual_seed(seed)
    for lr, weight_decay, betas, eps in settings:
        params = _adamw_params(gen)
        grads_per_step = [{n: torch.randn(p.shape, generator=gen, dtype=torch.float64) for n, p in params.items()}
                          for _ in range(4)]
        reference = reference_adamw(params, grads_per_step, lr, weight_decay, betas, eps)
        state = {"step": 0, "exp_avg": {n: torch.zeros_like(p) for n, p in params.items()},
                 "exp_avg_sq": {n: torch.zeros_like(p) for n, p in params.items()}}
        current = params
        for i, (grads, (expected, expected_state)) in enumerate(zip(grads_per_step, reference)):
            what = f"adamw_step (step {i + 1}, lr={lr}, weight_decay={weight_decay}, betas={betas}, eps={eps})"
            copies = ({n: p.clone() for n, p in current.items()}, {n: g.clone() for n, g in grads.items()},
                      {k: ({n: t.clone() for n, t in v.items()} if isinstance(v, dict) else v) for k, v in state.items()})
            out = fn(current, grads, state, lr, weight_decay, betas, eps)
            unchanged = all(torch.equal(a[n], b[n]) for a, b in zip((current, grads), copies[:2]) for n in a) and \
                all(torch.equal(state[k][n], copies[2][k][n]) for k in ("exp_avg", "exp_avg_sq") for n in params)
            if not unchanged:
                raise CheckError(f"{what} changed a tensor it received in place: return new tensors and a new state")
            if not (isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(o, dict) for o in out)):
                raise CheckError(f"{what}: return a tuple (new_params, new_state), both dicts")
            new_params, new_state = out
            if set(new_params) != set(params):
                raise CheckError(f"{what}: new_params must have the same names as params, {sorted(params)}")
            if all(torch.is_tensor(new_params[n]) and new_params[n].shape == expected[n].shape and
                   torch.allclose(new_params[n].double(), expected[n], atol=1e-10, rtol=1e-8) for n in params):
                pass
            else:
                mistakes = {
                    "weight decay was applied to every parameter: decay only matrices (tensors with 2 or more "
                    "dimensions), not biases, norm weights or other vectors":
                        dict(decay_all=True),
                    "this is Adam with L2 regularisation (weight_decay * param added to the gradient): AdamW "
                    "decouples the decay, param -= lr * weight_decay * param, apart from the Adam update":
                        dict(l2=True),
                    "the moments are not bias-corrected: divide exp_avg by (1 - beta1^t) and exp_avg_sq by "
                    "(1 - beta2^t), with t the step number after this step (1 on the first step)":
                        dict(bias_correction=False),
                    "the decay must be scaled by the learning rate: param -= lr * weight_decay * param":
                        dict(lr_in_decay=False),
                }
                for message, kwargs in mistakes.items():
                    wrong = _adamw_variant(current, grads, state, lr, weight_decay, betas, eps, **kwargs)
                    if all(torch.is_tensor(new_params[n]) and new_params[n].shape == wrong[n].shape and
                           torch.allclose(new_params[n].double(), wrong[n], atol=1e-10, rtol=1e-8) for n in params):
                        raise CheckError(f"{what}: {message}")
                for n in params:
                    assert_close(new_params[n], expected[n], f"{what}: new value of {n!r}", atol=1e-10,
                                 hint="Order: decay (matrices only), update both moments, bias-correct them, "
                                      "param -= lr * m_hat / (sqrt(v_hat) + eps).")
            if not isinstance(new_state.get("step"), int) or new_state["step"] != expected_state["step"]:
                raise CheckError(f"{what}: new_state['step'] must be the int {expected_state['step']} (one more "
                                 f"than the state's step), got {fenced(repr(new_state.get('step')), 40)}")
            for key in ("exp_avg", "exp_avg_sq"):
                if not isinstance(new_state.get(key), dict) or set(new_state[key]) != set(params):
                    raise CheckError(f"{what}: new_state[{key!r}] must be a dict with one tensor per parameter name")
                for n in params:
                    assert_close(new_state[key][n], expected_state[key][n], f"{what}: new_state[{key!r}][{n!r}]",
                                 atol=1e-10, hint="Store the moments BEFORE bias correction: exp_avg = beta1 * "
                                 "exp_avg + (1 - beta1) * grad, exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad**2.")
            current, state = expected, expected_state  # the next step starts from the reference
    passed("adamw_step (equal to torch.optim.AdamW with decay on matrices only, over several steps)")
