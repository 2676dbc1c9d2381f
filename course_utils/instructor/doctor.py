"""`course doctor`: a readable report of what this machine can run.

Versions of the course's libraries, the profile and device, bitsandbytes, offline bertviz, the
course models and whether the model hub can be reached. Every check catches its own errors, so the
report always prints; the exit code is 1 only when a required library is broken.
"""
from __future__ import annotations

import argparse
import importlib
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


def _course_models() -> tuple[str, bool]:
    from ..models import RECIPES, models_dir
    from ..models.build import problems
    found = problems(models_dir())
    if found:
        return f"{'; '.join(found)} in {models_dir()}: run `course models check` for what to do", False
    return f"OK: {len(RECIPES)} models in {models_dir()} match their recipes and SHA-256 sums", True


def _hub() -> tuple[str, bool]:
    offline = os.environ.get("HF_HUB_OFFLINE")
    prefix = f"HF_HUB_OFFLINE={offline}; " if offline else "HF_HUB_OFFLINE not set; "
    try:
        socket.create_connection(("huggingface.co", 443), timeout=2).close()
    except Exception:
        return prefix + OFFLINE, True
    return prefix + "huggingface.co reachable: the gpu profile can download checkpoints", True


def collect() -> list[tuple[str, str, bool]]:
    """Every line of the report as (item, value, ok)."""
    rows = [("python", sys.version.split()[0], sys.version_info >= (3, 10)), ("platform", platform.platform(), True)]
    rows += [_row(name, lambda name=name: _package(name)) for name in PACKAGES]
    checks = {"profile": _profile, "CUDA": _cuda, "bitsandbytes 4-bit": _bitsandbytes,
              "bertviz offline": _bertviz, "course models": _course_models, "model hub": _hub}
    return rows + [_row(item, check) for item, check in checks.items()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`course doctor` takes no arguments."""


def main(args: argparse.Namespace | None = None) -> int:
    """Print the report; returns 1 when a required library (torch, transformers, ...) is broken."""
    rows = collect()
    width = max(len(item) for item, _, _ in rows)
    for item, value, ok in rows:
        print(f"{'ok' if ok else '!!'}  {item:<{width}}  {value}")
    broken = [item for item, _, ok in rows if item in REQUIRED and not ok]
    if broken:
        print(f"\nrequired but broken: {', '.join(broken)}; reinstall with {BASE} (or `make install`)")
        return 1
    print("\neverything required works" + ("" if all(ok for _, _, ok in rows) else "; lines marked !! are optional"))
    return 0
