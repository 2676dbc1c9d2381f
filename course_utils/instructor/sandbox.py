"""A sandbox per graded submission: bubblewrap (Linux namespaces) plus resource limits.

The kernel of a submission runs inside ``bwrap`` with no network, a read-only view of the machine,
fresh ``/tmp`` and ``/dev``, the grader's inputs and outputs hidden (solutions, submissions, gradebook),
and one writable folder: the submission's own temporary folder. ``prlimit`` bounds its memory,
processes, file sizes and open files; its own PID namespace means that every process it started dies
with it. Where ``bwrap`` cannot run (macOS, Windows, a container without user namespaces), grading
goes on unsandboxed and ``sandbox_prefix`` returns None so the caller can warn once.
"""
from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .runner import PACKAGE_ROOT

GIB = 1024 ** 3


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed kernel."""

    memory_bytes: int = 6 * GIB   # address space (RLIMIT_AS); torch reserves some virtual memory at import
    processes: int = 256           # RLIMIT_NPROC, counted inside the sandbox's own user namespace
    file_bytes: int = 256 * 1024 ** 2  # largest file it may write (RLIMIT_FSIZE)
    open_files: int = 1024
    output_bytes: int = 2 * 1024 ** 2  # cell output kept per cell (enforced by the grader)


@functools.lru_cache(maxsize=None)
def unavailable_reason() -> str | None:
    """None when bwrap and prlimit work here, else why grading cannot be sandboxed."""
    if not sys.platform.startswith("linux"):
        return f"sandboxing needs Linux (this is {sys.platform})"
    for tool in ("bwrap", "prlimit"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian/Ubuntu: apt-get install bubblewrap util-linux)"
    probe = [shutil.which("bwrap"), "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
             "--unshare-all", "--die-with-parent", "true"]
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap could not start ({exc})"
    if done.returncode != 0:
        return f"bwrap cannot create namespaces here ({done.stderr.strip() or done.returncode})"
    return None


def _cache_root() -> Path:
    from ..world.zoo import cache_dir

    return cache_dir().parent


def _inside(path: Path, folders) -> bool:
    return any(path == f or f in path.parents for f in folders)


def sandbox_prefix(workdir: str | Path, hide: list, limits: Limits = Limits()) -> list[str] | None:
    """The command prefix that runs a program sandboxed with ``workdir`` writable, or None if unavailable.

    ``hide``: folders (or files' folders) the sandbox must not see, e.g. the solutions, the submissions
    and the gradebook; the course package and the Python installation stay visible (read-only).
    """
    if unavailable_reason() is not None:
        return None
    workdir = Path(workdir).resolve()
    hidden = sorted({Path(h).resolve() for h in hide} - {Path("/")}, key=lambda p: len(p.parts))
    args = [shutil.which("bwrap"), "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
            "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    for folder in hidden:
        if folder.is_dir() and not _inside(workdir, [folder]):
            args += ["--tmpfs", str(folder)]
    # Bring back what the kernel needs if a hidden folder covered it (e.g. the course in the same checkout).
    # (a checkout or virtual environment under /tmp would vanish with the private /tmp). A path is bound both
    # where it really is and where a symbolic link puts it (e.g. /tmp/checkout/.venv -> /work/.venv), since
    # the kernel is started through the link.
    needed = [PACKAGE_ROOT / "course_utils", Path(sys.prefix), Path(sys.base_prefix)]
    for path in sorted({q for p in needed for q in (p.absolute(), p.resolve())}):
        if _inside(path, hidden) or _inside(path, [Path("/tmp")]):
            args += ["--ro-bind", str(path.resolve()), str(path)]
    cache = _cache_root().resolve()  # the course's cached models, read-only, even under the private /tmp
    if cache.is_dir() and (_inside(cache, hidden) or _inside(cache, [Path("/tmp")])):
        args += ["--ro-bind", str(cache), str(cache)]
    args += ["--bind", str(workdir), str(workdir), "--chdir", str(workdir), "--setenv", "HOME", str(workdir),
             "--setenv", "TMPDIR", str(workdir), "--setenv", "MPLCONFIGDIR", str(workdir),
             "--setenv", "COURSE_CACHE_DIR", str(_cache_root()),  # cached tiny models: readable, not writable
             # ipykernel would watch for its parent's PID, which a PID namespace hides; --die-with-parent does it
             "--unsetenv", "JPY_PARENT_PID"]
    args += [shutil.which("prlimit"), f"--as={limits.memory_bytes}", f"--nproc={limits.processes}",
             f"--fsize={limits.file_bytes}", f"--nofile={limits.open_files}", "--core=0", "--"]
    return args
