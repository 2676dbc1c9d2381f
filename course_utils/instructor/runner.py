"""`course run`: execute notebooks headless into a build folder and print how long each took.

Executed copies go to ``build/executed/<folder>/<name>.ipynb``; the sources are never written.
Each notebook runs in a fresh ``python3`` kernel with its own folder as working directory and,
with ``--profile``, ``COURSE_PROFILE`` set for the kernel. ``execute`` is shared with the grader.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

import nbformat
from tqdm.auto import tqdm

from .notebooks import read_notebook
from ..settings import PROFILES

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding course_utils/


def error_line(ename: str, evalue: str, limit: int = 300) -> str:
    """One line ``Name: message`` for an error, whitespace collapsed and cut to ``limit`` characters."""
    text = " ".join(f"{ename}: {evalue}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def kernel_env(profile: str | None = None) -> dict[str, str]:
    """The kernel's environment: ours, with course_utils importable and COURSE_PROFILE when given.

    Idle OpenMP threads sleep (OMP_WAIT_POLICY=PASSIVE unless set): as fast on a quiet machine, and
    PyTorch no longer stalls when other jobs share a small CPU.
    """
    if profile is not None and profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH")) if p)
    if profile is not None:
        env["COURSE_PROFILE"] = profile
    return env


# What a graded kernel inherits of the grader's environment: what Python, torch, Hugging Face and Jupyter
# read, never the rest (tokens, keys, the grader's own paths).
GRADING_ENV = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "VIRTUAL_ENV", "TOKENIZERS_PARALLELISM", "MPLBACKEND")
GRADING_ENV_PREFIXES = ("LC_", "PYTHON", "COURSE_", "OMP_", "MKL_", "OPENBLAS_", "KMP_", "TORCH", "PYTORCH_",
                        "CUDA_", "HF_", "TRANSFORMERS_", "JUPYTER_", "PYDEVD_")


def grading_env(profile: str) -> dict[str, str]:
    """The environment of a graded (student's) kernel: ``kernel_env`` cut to an allowlist (``GRADING_ENV``)."""
    return {k: v for k, v in kernel_env(profile).items() if k in GRADING_ENV or k.startswith(GRADING_ENV_PREFIXES)}


def execute(nb: nbformat.NotebookNode, cwd: str | Path, timeout: float, profile: str | None = None,
            allow_errors: bool = False, quiet: bool = False) -> tuple[int | None, str | None]:
    """Execute ``nb`` in place in a fresh kernel; returns (cell index, reason) where it stopped, or (None, None).

    Errors in cells stop the run unless ``allow_errors``; a timeout or a dead kernel always stops it.
    ``quiet`` hides the kernel process's own log (cell outputs are recorded in ``nb`` either way).
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    if not timeout or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    from jupyter_client.manager import AsyncKernelManager

    env = kernel_env(profile)
    current: dict[str, int | None] = {"index": None}
    sockets = tempfile.TemporaryDirectory(prefix="course-kernel-")

    class LocalSocketsKernelManager(AsyncKernelManager):
        """Unix sockets instead of TCP ports: nothing listens on the network (and no "running over TCP" warning)."""

        def __init__(self, **kwargs):
            super().__init__(transport="ipc", ip=str(Path(sockets.name) / "kernel"), **kwargs)

    client = NotebookClient(nb, timeout=max(1, int(timeout)), kernel_name="python3", allow_errors=allow_errors,
                            kernel_manager_class=LocalSocketsKernelManager,
                            on_cell_execute=lambda cell, cell_index: current.update(index=cell_index))
    try:
        with sockets:
            client.execute(cwd=str(cwd), env=env, stderr=subprocess.DEVNULL if quiet else None)
    except CellTimeoutError:
        return current["index"], f"timed out after {int(timeout)} s"
    except DeadKernelError:
        return current["index"], "the kernel died"
    except CellExecutionError as exc:
        return current["index"], error_line(exc.ename, exc.evalue)
    except Exception as exc:  # a kernel that cannot start, a broken notebook: report, don't crash
        return current["index"], error_line(type(exc).__name__, str(exc))
    return None, None


def output_path(path: str | Path, out_dir: str | Path) -> Path:
    """Where the executed copy of ``path`` goes: ``out_dir/<folder>/<name>.ipynb``."""
    path = Path(path)
    dest = Path(out_dir) / path.resolve().parent.name / path.name
    if dest.resolve() == path.resolve():
        raise ValueError(f"--out {out_dir} would overwrite the source {path}; pick another folder")
    return dest


def run_notebook(path: str | Path, out_dir: str | Path = "build/executed", timeout: float = 900,
                 profile: str | None = None) -> tuple[float, str | None]:
    """Execute one notebook into ``out_dir``; returns (seconds, None) or (seconds, the error's last line)."""
    path = Path(path)
    dest = output_path(path, out_dir)
    start = time.perf_counter()
    try:
        nb = read_notebook(path)
    except ValueError as exc:
        return time.perf_counter() - start, str(exc)
    index, reason = execute(nb, cwd=path.resolve().parent, timeout=timeout, profile=profile)
    seconds = time.perf_counter() - start
    dest.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dest)
    if reason is None:
        return seconds, None
    return seconds, f"cell {index + 1}: {reason}" if index is not None else reason


def default_notebooks(root: str | Path = ".") -> list[Path]:
    """All lectures and solutions under ``root``, in course order."""
    root = Path(root)
    return sorted((root / "lectures").glob("*.ipynb")) + sorted((root / "solutions").glob("*.ipynb"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `course run`."""
    parser.add_argument("notebooks", nargs="*", metavar="NOTEBOOK",
                        help="notebooks to run (default: lectures/*.ipynb and solutions/*.ipynb)")
    parser.add_argument("--out", default="build/executed", help="folder for executed copies (default: build/executed)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds allowed per cell (default: 900)")
    parser.add_argument("--profile", choices=PROFILES, default=None,
                        help="set COURSE_PROFILE for the kernels (default: the usual detection)")


def main(args: argparse.Namespace) -> int:
    """Run `course run`; returns 1 when a notebook failed."""
    paths = [Path(p) for p in args.notebooks] or default_notebooks()
    if not paths:
        print("course run: no notebooks found; pass NOTEBOOK paths or run from the course root")
        return 2
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(f"course run: no such notebook: {', '.join(missing)}")
        return 2
    rows = []
    for path in tqdm(paths, desc="notebooks", unit="nb"):
        seconds, error = run_notebook(path, args.out, args.timeout, args.profile)
        rows.append((str(path), seconds, "pass" if error is None else f"FAIL {error}"))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'notebook':<{width}}  {'seconds':>8}  status")
    for name, seconds, status in rows:
        print(f"{name:<{width}}  {seconds:>8.1f}  {status}")
    failed = sum(r[2] != "pass" for r in rows)
    print(f"{len(rows) - failed} passed, {failed} failed; executed copies in {args.out}/")
    return 1 if failed else 0
