"""`course doctor`: a readable report of what this machine can run, printed line by line as it goes.

Python, the versions of the course's libraries, the profile and device, bitsandbytes, offline bertviz,
each course model and whether the model hub can be reached (not tried when HF_HUB_OFFLINE is set).
Every check catches its own errors, so the report always prints; the exit code is 1 only when Python is
too old or a required library is broken.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import platform
import socket
import sys
from importlib import metadata
from pathlib import Path

BASE, DEV, GPU = 'pip install -e .', 'pip install -e ".[dev]"', 'pip install -e ".[gpu]" (CUDA machines only)'
# Each package the course uses, with what to run when it is missing.
PACKAGES = {"torch": BASE, "transformers": BASE, "datasets": BASE, "tokenizers": BASE, "accelerate": BASE,
            "peft": BASE, "trl": BASE, "bitsandbytes": GPU, "bertviz": BASE, "jupyterlab": BASE,
            "nbformat": BASE, "nbval": DEV}
REQUIRED = ("torch", "transformers", "tokenizers", "nbformat")
OFFLINE = "offline: fine for the ci and cpu profiles; the gpu profile needs the hub"
PYTHON = (3, 11)  # pyproject.toml's requires-python (a test keeps them equal)
TRUE = ("1", "true", "yes", "on")


def _row(item: str, check) -> tuple[str, str, bool]:
    """Run ``check() -> (value, ok)``; any exception becomes a failed row that says what happened."""
    try:
        value, ok = check()
    except Exception as exc:
        value, ok = f"error: {type(exc).__name__}: {exc}", False
    return item, value, ok


def _package(name: str) -> tuple[str, bool]:
    try:
        version = metadata.version(name)
    except metadata.PackageNotFoundError:
        return f"not installed ({PACKAGES[name]})", False
    if name in REQUIRED:
        importlib.import_module(name)  # installed is not enough: it must import
    return version, True


def _profile() -> tuple[str, bool]:
    from ..profiles import detect_profile, pick_device
    name = detect_profile()
    return f"{name} (device: {pick_device(name)})", True


def _cuda() -> tuple[str, bool]:
    import torch
    if not torch.cuda.is_available():
        return "none: the ci and cpu profiles run on the CPU", True
    props = torch.cuda.get_device_properties(0)
    return f"{props.name}, {props.total_memory / 2**30:.1f} GiB", True


def _bitsandbytes() -> tuple[str, bool]:
    import torch
    cuda = torch.cuda.is_available()
    try:
        import bitsandbytes.functional as bnbf
    except ImportError:
        return f"not installed; 4-bit QLoRA needs it on a CUDA GPU ({GPU})", not cuda
    if not cuda:
        return "installed; 4-bit QLoRA needs a CUDA GPU (gpu profile)", True
    x = torch.randn(64, 64, device="cuda", dtype=torch.float16)
    packed, state = bnbf.quantize_4bit(x, quant_type="nf4")
    error = (bnbf.dequantize_4bit(packed, state) - x).abs().max().item()
    return f"works: 4-bit quantize/dequantize on CUDA (max error {error:.3f})", error < 1.0


def _bertviz() -> tuple[str, bool]:
    assets = importlib.import_module("course_utils.attention_views").vendored_assets()
    missing = [f"{name} ({path})" for name, path in assets.items() if not Path(path).is_file()]
    if not assets or missing:
        return f"vendored JS missing: {', '.join(missing) or 'none listed'}; reinstall the package", False
    return f"OK: {', '.join(assets)} shipped with the package", True


def _course_models() -> list[tuple[str, str, bool]]:
    """One row per course model: OK, or what is wrong with it and the command that says what to do."""
    from ..models import RECIPES, models_dir
    from ..models.build import problems
    found = {line.split(":")[0]: line for line in problems(models_dir())}
    return [(f"model {name}", f"{found[name]}: run `course models check`" if name in found
             else f"OK ({models_dir() / name})", name not in found) for name in RECIPES]


def _hub() -> tuple[str, bool]:
    offline = os.environ.get("HF_HUB_OFFLINE")
    if (offline or "").lower() in TRUE:
        return f"HF_HUB_OFFLINE={offline}: not contacted; " + OFFLINE, True
    prefix = f"HF_HUB_OFFLINE={offline}; " if offline else "HF_HUB_OFFLINE not set; "
    try:
        socket.create_connection(("huggingface.co", 443), timeout=2).close()
    except Exception:
        return prefix + OFFLINE, True
    return prefix + "huggingface.co reachable: the gpu profile can download checkpoints", True


def _python(version: tuple) -> tuple[str, bool]:
    text = ".".join(map(str, version[:3]))
    if tuple(version[:2]) >= PYTHON:
        return text, True
    return f"{text}: the course needs Python {'.'.join(map(str, PYTHON))}+ (as its package does)", False


def rows():
    """Every line of the report as (item, value, ok), each yielded as soon as it is known."""
    yield ("python", *_python(sys.version_info))
    yield "platform", platform.platform(), True
    for name in PACKAGES:
        yield _row(name, lambda name=name: _package(name))
    checks = {"profile": _profile, "CUDA": _cuda, "bitsandbytes 4-bit": _bitsandbytes, "bertviz offline": _bertviz}
    for item, check in checks.items():
        yield _row(item, check)
    try:
        yield from _course_models()
    except Exception as exc:
        yield "course models", f"error: {type(exc).__name__}: {exc}", False
    yield _row("model hub", _hub)


def collect() -> list[tuple[str, str, bool]]:
    """Every line of the report as (item, value, ok)."""
    return list(rows())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`course doctor` takes no arguments."""


def main(args: argparse.Namespace | None = None) -> int:
    """Print the report as it goes; returns 1 when Python is too old or a required library is broken."""
    # bitsandbytes' kernel loader warns that it skips a trust check offline: the model hub row says it all.
    logging.getLogger("kernels").setLevel(logging.ERROR)
    print("course doctor: checking this machine (importing torch and transformers takes a while the first time)",
          flush=True)
    seen = []
    for item, value, ok in rows():
        print(f"{'ok' if ok else '!!'}  {item:<24}  {value}", flush=True)
        seen.append((item, ok))
    broken = [item for item, ok in seen if item in ("python", *REQUIRED) and not ok]
    if broken:
        print(f"\nrequired but broken: {', '.join(broken)}; use Python {'.'.join(map(str, PYTHON))}+ and reinstall "
              f"with {BASE} (or `make install`)")
        return 1
    print("\neverything required works" + ("" if all(ok for _, ok in seen) else "; lines marked !! are optional"))
    return 0
