"""Checks that labs call after each exercise: compare the student's code with an independent oracle.

A check raises ``CheckError`` (an AssertionError) with a message that says what is wrong and how to
look for it, and prints one line when everything passed. One module per topic.
"""
from __future__ import annotations

import contextvars
import dataclasses
import functools
import inspect

import torch

# Torch operations the student's code may not run during the current check (see ``forbids``).
FORBIDDEN_OPS: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("forbidden_ops", default=())
# Python modules whose code the student's code may not run during the current check (see ``forbids_modules``).
FORBIDDEN_MODULES: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("forbidden_modules", default=())


# Added to every check's ``seed`` while the grader runs it (``course grade`` draws it secretly per run), so the
# hidden tests' inputs are in no file a student can read; 0 in the notebooks, whose checks stay reproducible.
SEED_SHIFT: contextvars.ContextVar[int] = contextvars.ContextVar("seed_shift", default=0)


@dataclasses.dataclass(frozen=True)
class RunCache:
    """One grading run's private folder and a number drawn for the run: what a check builds from them alone (never
    from a submission) is built once per run and shared by its submissions (``course grade`` sets it)."""

    folder: str
    secret: int


# The grading run's cache while ``course grade`` runs a check; None in the notebooks and in a lone grade_submission.
RUN_CACHE: contextvars.ContextVar[RunCache | None] = contextvars.ContextVar("run_cache", default=None)


class CheckError(AssertionError):
    """A check failed; the message tells the student what to fix."""


STUDENT_TEXT_LIMIT = 120  # characters of the student's own text kept in a grader's message


def fenced(text: str, limit: int = STUDENT_TEXT_LIMIT) -> str:
    """Text the student's code chose (an exception's message) as a grader's message may quote it.

    One line of printable characters, at most ``limit`` of them, between ``⟪ ⟫`` (fence marks inside it
    replaced): a reader of the gradebook sees where the grader's words end and the student's begin.
    """
    text = " ".join("".join(c if c.isprintable() else " " for c in str(text)).split())
    text = text.replace("⟪", "<").replace("⟫", ">")
    return f"⟪{text if len(text) <= limit else text[: limit - 3] + '...'}⟫"


def call_student(fn, what: str, *args, hint: str = ""):
    """``fn(*args)``; an error it raises becomes a CheckError naming ``what`` (and ``hint``), not a traceback."""
    try:
        return fn(*args)
    except (NotImplementedError, CheckError):
        raise
    except Exception as exc:
        raise CheckError(f"{what} failed: {type(exc).__name__}: {fenced(str(exc))}. {hint}".strip()) from exc


def assert_unchanged(given: dict, originals: dict, what: str) -> None:
    """Raise CheckError naming each of ``given``'s tensors that no longer equals its original (an in-place edit)."""
    changed = [name for name, value in given.items() if not torch.equal(value.detach(), originals[name])]
    if changed:
        raise CheckError(f"{what} changed {', '.join(changed)} in place: compute new tensors and leave the inputs "
                         "as they were (the caller uses them again)")


def passed(what: str) -> None:
    """Print the one-line success message of a check."""
    print(f"✅ {what}: all checks passed")


def assert_close(actual, expected, what: str, atol: float = 1e-5, rtol: float = 1e-4, hint: str = "") -> None:
    """Raise CheckError unless tensors ``actual`` and ``expected`` have equal shapes and close values."""
    if not torch.is_tensor(actual):
        raise CheckError(f"{what}: expected a torch.Tensor, got {type(actual).__name__}")
    if tuple(actual.shape) != tuple(expected.shape):
        raise CheckError(f"{what}: shape {tuple(actual.shape)} but expected {tuple(expected.shape)}")
    if not torch.isfinite(actual).all() and torch.isfinite(expected).all():
        raise CheckError(f"{what}: contains NaN or inf where the reference is finite. {hint}".strip())
    if not torch.allclose(actual.double(), expected.double(), atol=atol, rtol=rtol):
        err = (actual.double() - expected.double()).abs().max().item()
        raise CheckError(f"{what}: values differ from the reference (max abs error {err:.3g}). {hint}".strip())


def _while_checking(var: contextvars.ContextVar, values: tuple[str, ...], attribute: str):
    """A decorator that adds ``values`` to ``var`` while the decorated check runs (and records them on it)."""
    def decorate(check):
        @functools.wraps(check)
        def wrapper(*args, **kwargs):
            token = var.set(tuple(var.get()) + values)
            try:
                return check(*args, **kwargs)
            finally:
                var.reset(token)
        setattr(wrapper, attribute, tuple(getattr(check, attribute, ())) + values)
        return wrapper
    return decorate


def drawn_seed(check):
    """Decorate a check whose ``seed`` argument picks its inputs: in grading it is shifted by ``SEED_SHIFT``."""
    signature = inspect.signature(check)

    @functools.wraps(check)
    def wrapper(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        bound.arguments["seed"] = bound.arguments["seed"] + SEED_SHIFT.get()
        return check(*bound.args, **bound.kwargs)
    return wrapper


def forbids(*ops: str):
    """Decorate a check: while it runs, the student's code may not call a torch op whose name contains one of ``ops``.

    ``course grade`` enforces it: it traces every call into the student's code (torch functions and aten ops,
    however they were reached) and fails the check when one of these ops ran.
    """
    if not ops or not all(isinstance(op, str) and op for op in ops):
        raise ValueError("forbids() needs one or more non-empty op name fragments, e.g. 'scaled_dot_product'")
    return _while_checking(FORBIDDEN_OPS, ops, "forbidden_ops")


def forbids_modules(*modules: str):
    """Decorate a check: while it runs, the student's code may not run code of ``modules`` (the course's answers).

    For an exercise whose reference implementation ships with the course (``course_utils.dpo.dpo_loss``
    for lab 06's ``dpo_loss``) or whose oracle is a library (``trl``). ``course grade`` enforces it: it
    traces the calls the student's code makes and fails the check when one ran a function defined in one of
    these modules (any module of a package; Python functions by their file, C and Rust functions by the
    module they name), however it was reached. What a check hands to the student's code to call (a
    ``next_logits`` function, a scorer) or what an exercise is given to call (``tie_key``) must therefore
    live outside the check's modules: ``course_utils.handed`` holds them.
    """
    if not modules or not all(isinstance(m, str) and m and " " not in m for m in modules):
        raise ValueError("forbids_modules() needs one or more module names, e.g. 'course_utils.dpo'")
    return _while_checking(FORBIDDEN_MODULES, modules, "forbidden_modules")


def assert_gradient_reaches(loss, inputs: dict, what: str, hint: str = "") -> None:
    """Raise CheckError unless the scalar ``loss`` sends a finite, non-zero gradient into each tensor of ``inputs``.

    ``inputs``: {name: leaf tensor with requires_grad} the loss was computed from. Catches a loss computed
    under ``no_grad``, from detached tensors, or with a term that sends nothing back.
    """
    if not (torch.is_tensor(loss) and loss.requires_grad):
        raise CheckError(f"{what}: the loss carries no gradient (computed under torch.no_grad(), or from detached "
                         f"tensors?); training could not learn from it. {hint}".strip())
    grads = torch.autograd.grad(loss.sum(), list(inputs.values()), allow_unused=True)
    for name, grad in zip(inputs, grads):
        if grad is None or not torch.isfinite(grad).all() or not grad.abs().sum() > 0:
            problem = "no gradient" if grad is None or torch.isfinite(grad).all() else "a NaN or inf gradient"
            raise CheckError(f"{what}: {problem} reaches {name}. {hint}".strip())


def extreme_pairs(dtype=torch.float32) -> torch.Tensor:
    """Differences of two scores, from hugely negative to hugely positive: log(sigmoid(x)) underflows at the ends."""
    return torch.tensor([-300.0, -90.0, -20.0, -1.0, 0.0, 1.0, 20.0, 90.0, 300.0], dtype=dtype)


def trained_copy(model, name: str) -> torch.nn.Module:
    """The grader's own course model ``name`` holding ``model``'s trained weights, in eval mode.

    Only the weights cross from the student's ``model`` (``state_dict()``, by value through the grader's
    proxy): what the outcome checks then run is the course's architecture and generation code, never the
    student's. A model whose weights do not fit ``name`` is refused with the error fenced.
    """
    from ..models import load_pretrained

    trusted = load_pretrained(name, progress=False)[0]
    try:
        trusted.load_state_dict(dict(model.state_dict()))
    except Exception as exc:  # not a model, other layers or shapes: its weights cannot be ``name``'s, trained
        raise CheckError(f"pass the trained model itself (a fine-tuned copy of {name!r}): its weights did not load "
                         f"into {name} ({type(exc).__name__}: {fenced(exc)})") from None
    return trusted.eval()
