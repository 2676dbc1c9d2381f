"""A sandbox per graded submission: bubblewrap (Linux namespaces) plus resource limits.

The kernel of a submission runs inside ``bwrap`` with no network, a read-only view of the machine,
fresh ``/tmp`` and ``/dev``, the grader's inputs and outputs hidden (solutions, submissions, gradebook),
and one writable folder: the submission's own temporary folder. ``prlimit`` bounds its memory,
processes, file sizes and open files; its own PID namespace means that every process it started dies
with it. Linux exempts root from the process limit, so a grader running as root hands each kernel to an
unprivileged user id of its own (``setpriv``; ``new_uid``), with no capabilities; a grader running as a
user sandboxes its kernels in a user namespace as that user. Where ``bwrap`` cannot run (macOS, Windows, a container without user namespaces),
grading goes on unsandboxed and ``sandbox_prefix`` returns None so the caller can warn once.
"""
from __future__ import annotations

import functools
import itertools
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .runner import PACKAGE_ROOT

GIB = 1024 ** 3
UID_BASE = 1_900_000_000  # far above the users and subordinate ids a machine hands out
_kernels = itertools.count()


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed kernel."""

    memory_bytes: int = 6 * GIB   # address space (RLIMIT_AS); torch reserves some virtual memory at import
    processes: int = 256           # RLIMIT_NPROC: processes and threads of the sandbox's user
    file_bytes: int = 256 * 1024 ** 2  # largest file it may write (RLIMIT_FSIZE)
    open_files: int = 1024
    output_bytes: int = 2 * 1024 ** 2  # cell output kept per cell (enforced by the grader)
    check_memory_bytes: int = 4 * GIB  # address space of the grader's child process that runs the checks


@functools.lru_cache(maxsize=None)
def unavailable_reason() -> str | None:
    """None when bwrap and prlimit work here, else why grading cannot be sandboxed."""
    if not sys.platform.startswith("linux"):
        return f"sandboxing needs Linux (this is {sys.platform})"
    for tool in ("bwrap", "prlimit") + (("setpriv",) if as_root() else ()):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian/Ubuntu: apt-get install bubblewrap util-linux)"
    probe = [shutil.which("bwrap"), "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
             *_isolation(), "--die-with-parent", *_drop_to(new_uid()), "true"]
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap could not start ({exc})"
    if done.returncode != 0:
        return f"bwrap cannot create namespaces here ({done.stderr.strip() or done.returncode})"
    return None


def as_root() -> bool:
    """True when the grader is root: its kernels then run as an unprivileged user of their own (``new_uid``)."""
    return os.geteuid() == 0


def new_uid() -> int | None:
    """A user (and group) id no other kernel uses, for a root grader's next kernel; None for a user grader.

    The process limit counts per user, so each kernel has its own: a fork bomb's last processes, still
    dying, never count against the next submission, nor against a grader running beside this one.
    """
    return UID_BASE + os.getpid() % 1_000_000 * 1000 + next(_kernels) % 1000 if as_root() else None


def _isolation() -> list[str]:
    """bwrap's namespaces: all of them, but root keeps the machine's users so that it can drop to one."""
    if not as_root():
        return ["--unshare-all", "--cap-drop", "ALL"]
    return ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
            "--cap-drop", "ALL", *(f for cap in ("SETUID", "SETGID", "SETPCAP") for f in ("--cap-add", f"CAP_{cap}"))]


def _drop_to(uid: int | None) -> list[str]:
    """The command that becomes ``uid`` with no capabilities left (nothing for None)."""
    if uid is None:
        return []
    return [shutil.which("setpriv") or "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--"]


def hand_over(path: str | Path) -> None:
    """Give a file the grader wrote in a sandbox's folder to the sandbox's user (the folder's owner)."""
    path = Path(path)
    owner = path.parent.stat()
    if as_root() and owner.st_uid != 0:
        os.chown(path, owner.st_uid, owner.st_gid)


def _git_folder(root: Path) -> Path | None:
    """The git folder of the checkout at ``root`` (its history holds the solutions), or None."""
    dot_git = root / ".git"
    if dot_git.is_dir():
        return dot_git
    if dot_git.is_file():  # a worktree: "gitdir: <common>/.git/worktrees/<name>"
        text = dot_git.read_text(encoding="utf-8", errors="replace").strip()
        if text.startswith("gitdir:"):
            folder = (root / text.split(":", 1)[1].strip()).resolve()
            return folder.parents[1] if folder.parent.name == "worktrees" else folder
    return None


def _inside(path: Path, folders) -> bool:
    return any(path == f or f in path.parents for f in folders)


def _closed_folders(paths) -> set[Path]:
    """Folders on the way to ``paths`` that other users may not enter (e.g. /root, 0700)."""
    if not as_root():
        return set()
    closed = set()
    for path in paths:
        for folder in reversed(path.parents):
            if folder != Path("/") and folder.is_dir() and not os.stat(folder).st_mode & 0o001:
                closed.add(folder)
                break
    return closed


def _bind(flag: str, source: Path, dest: Path, covered: list[Path]) -> list[str]:
    """bwrap arguments binding ``source`` at ``dest``, whose folders inside a covered one are made enterable (0755)."""
    top = max((f for f in covered if _inside(dest, [f])), key=lambda f: len(f.parts), default=None)
    folders = [] if top is None else [f for f in reversed(dest.parents) if top in f.parents]
    return [a for f in folders for a in ("--perms", "0755", "--dir", str(f))] + [flag, str(source), str(dest)]


def sandbox_prefix(workdir: str | Path, hide: list, limits: Limits = Limits()) -> list[str] | None:
    """The command prefix that runs a program sandboxed with ``workdir`` writable, or None if unavailable.

    ``hide``: folders (or files' folders) the sandbox must not see, e.g. the solutions, the submissions
    and the gradebook; the course package and the Python installation stay visible (read-only).
    """
    if unavailable_reason() is not None:
        return None
    workdir = Path(workdir).resolve()
    uid = new_uid()
    if uid is not None:  # the kernel's user owns it; root's group (bwrap, capabilities dropped) may enter it
        os.chown(workdir, uid, 0)
        workdir.chmod(0o770)
    needed = [PACKAGE_ROOT / "course_utils", Path(sys.prefix), Path(sys.base_prefix)]
    needed = sorted({q for p in needed for q in (p.absolute(), p.resolve())})
    # Folders the sandbox's user may not enter are replaced by empty ones, like the hidden folders, and what
    # the kernel needs inside them is bound back (e.g. a Python installed under /root, 0700).
    closed = _closed_folders(needed)
    git = _git_folder(PACKAGE_ROOT)  # the course's history: solutions of every lab
    hide = [*hide, *([git] if git else [])]
    hidden = sorted({Path(h).resolve() for h in hide} - {Path("/")} | closed, key=lambda p: len(p.parts))
    emptied = [f for f in hidden if f.is_dir() and not _inside(workdir, [f])]
    covered = [*emptied, Path("/tmp")]  # folders the sandbox sees as empty (fresh tmpfs)
    args = [shutil.which("bwrap"), "--ro-bind", "/", "/", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/dev/shm",
            "--proc", "/proc", "--tmpfs", "/tmp", *_isolation(), "--die-with-parent", "--new-session"]
    for folder in emptied:
        args += ["--tmpfs", str(folder)]
    # Bring back what the kernel needs if a hidden folder covered it (e.g. the course in the same checkout).
    # (a checkout or virtual environment under /tmp would vanish with the private /tmp). A path is bound both
    # where it really is and where a symbolic link puts it (e.g. /tmp/checkout/.venv -> /work/.venv), since
    # the kernel is started through the link.
    for path in needed:
        if _inside(path, covered):
            args += _bind("--ro-bind", path.resolve(), path, covered)
    args += _bind("--bind", workdir, workdir, covered)
    args += ["--chdir", str(workdir), "--setenv", "HOME", str(workdir),
             "--setenv", "TMPDIR", str(workdir), "--setenv", "MPLCONFIGDIR", str(workdir),
             # torch's compiler cache: the grader's process may have set it to a folder of its own
             "--setenv", "TORCHINDUCTOR_CACHE_DIR", str(workdir / "torchinductor"),
             # ipykernel would watch for its parent's PID, which a PID namespace hides; --die-with-parent does it
             "--unsetenv", "JPY_PARENT_PID"]
    args += _drop_to(uid)
    args += [shutil.which("prlimit"), f"--as={limits.memory_bytes}", f"--nproc={limits.processes}",
             f"--fsize={limits.file_bytes}", f"--nofile={limits.open_files}", "--core=0", "--"]
    return args
