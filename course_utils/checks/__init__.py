"""Checks that labs call after each exercise: compare the student's code with an independent oracle.

A check raises ``CheckError`` (an AssertionError) with a message that says what is wrong and how to
look for it, and prints one line when everything passed. One module per topic.
"""
from __future__ import annotations

import torch


class CheckError(AssertionError):
    """A check failed; the message tells the student what to fix."""


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
