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

import contextlib
import functools
import itertools
import os
import shlex
import shutil
import subprocess
import sys
import time
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
    tmp_bytes: int = 512 * 1024 ** 2  # size of the sandbox's own /tmp and /dev/shm (memory-backed)
    workdir_bytes: int = GIB  # the writable folder, where a root grader can mount it as a tmpfs (answers: 256 MiB)
    workdir_files: int = 10_000
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


def _bind(flag: str, source: Path, dest: Path) -> list[str]:
    """bwrap arguments binding ``source`` at ``dest``, the folders on the way enterable by the kernel's user (0755)."""
    folders = [f for f in reversed(dest.parents) if f != Path("/")]
    return [a for f in folders for a in ("--perms", "0755", "--dir", str(f))] + [flag, str(source), str(dest)]


def mount_workdir(folder: Path, limits: Limits = Limits()) -> bool:
    """Make ``folder`` (a kernel's writable folder) a tmpfs of bounded size and file count; False where the
    grader may not mount (not root, no ``mount``): the folder then stays on the host's disk, capped per file."""
    if not as_root() or shutil.which("mount") is None:
        return False
    options = f"size={limits.workdir_bytes},nr_inodes={limits.workdir_files},mode=0700"
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "course-grade", str(folder)], capture_output=True)
    return done.returncode == 0


def unmount_workdir(folder: Path) -> None:
    """Undo ``mount_workdir`` (lazily: a kernel's last sockets may still be closing)."""
    subprocess.run(["umount", "--lazy", str(folder)], capture_output=True)


CGROUPS = Path("/sys/fs/cgroup")


def _own_cgroup(controller: str) -> Path | None:
    """The folder of this process's cgroup (v1) for ``controller``, or None where there is none."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, names, path = line.split(":", 2)
            if controller in names.split(","):
                folder = CGROUPS / controller / path.lstrip("/")
                return folder if folder.is_dir() else None
    return None


def kernel_cgroups(name: str, limits: Limits) -> list[Path]:
    """New memory and pids cgroups (v1) ``name`` under the grader's own, limited; [] where the machine refuses.

    Everything a kernel starts shares them: its processes together stay within ``limits.memory_bytes`` of
    memory (the files it writes in its memory-backed /tmp included) and ``limits.processes`` processes.
    """
    with contextlib.suppress(OSError):
        return _make_cgroups(name, limits)
    return []


def _make_cgroups(name: str, limits: Limits) -> list[Path]:
    """``kernel_cgroups``, raising OSError (with the reason) where the machine refuses."""
    made = []
    try:
        for controller, limit_file, value in (("memory", "memory.limit_in_bytes", limits.memory_bytes),
                                               ("pids", "pids.max", limits.processes)):
            parent = _own_cgroup(controller)
            if parent is None:
                raise OSError(f"no {controller} cgroup (v1) of this process to make one under")
            (parent / name).mkdir()
            made.append(parent / name)
            (parent / name / limit_file).write_text(str(value))
    except OSError:
        remove_cgroups(made)
        raise
    return made


@functools.lru_cache(maxsize=None)
def cgroups_missing_reason() -> str | None:
    """None when kernels get cgroups here (``kernel_cgroups``), else why not (probed once)."""
    try:
        remove_cgroups(_make_cgroups(f"course-grade-probe-{os.getpid()}", Limits()))
    except OSError as exc:
        return str(exc)
    return None


def remove_cgroups(folders: list[Path], tries: int = 50) -> None:
    """Remove a kernel's cgroups once its processes are gone (a cgroup with processes cannot be removed)."""
    for folder in folders:
        for _ in range(tries):
            with contextlib.suppress(FileNotFoundError):
                try:
                    folder.rmdir()
                except OSError:
                    time.sleep(0.1)
                    continue
            break


def limit_reached(cgroups: list[Path], limits: Limits) -> str | None:
    """Which limit of the kernel's cgroups (``kernel_cgroups``) stopped something: memory, processes, or None."""
    counts = {}
    for folder in cgroups:
        for name, key in (("memory.oom_control", "oom_kill"), ("pids.events", "max")):
            with contextlib.suppress(OSError, ValueError):
                lines = dict(line.split() for line in (folder / name).read_text().splitlines())
                counts[key] = int(lines.get(key, 0))
    if counts.get("oom_kill"):
        return f"killed at the memory limit ({limits.memory_bytes / GIB:g} GiB)"
    if counts.get("max"):
        return f"the process limit ({limits.processes} processes and threads) was reached"
    return None


def _enter(cgroups: list[Path]) -> list[str]:
    """A command prefix that moves the command into ``cgroups`` before it starts."""
    moves = "".join(f"echo $$ > {shlex.quote(str(f / 'cgroup.procs'))}; " for f in cgroups)
    return ["/bin/sh", "-c", moves + 'exec "$@"', "sh"] if cgroups else []


# What of the host a kernel may read besides Python and the course: programs, shared libraries and the
# system's configuration (locales, time zones, fonts, certificates). Everything else is absent in the sandbox.
SYSTEM_FOLDERS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")


def readable_folders() -> list[Path]:
    """Folders of this machine a kernel needs: Python's installation, its packages and the course package."""
    needed = [PACKAGE_ROOT / "course_utils", Path(sys.prefix), Path(sys.base_prefix)]
    return sorted({q for p in needed for q in (p.absolute(), p.resolve())})


def _system_binds() -> list[str]:
    """bwrap arguments showing the system folders read-only (a symbolic link such as /bin -> usr/bin as a link)."""
    args = []
    for name in SYSTEM_FOLDERS:
        if os.path.islink(name):
            args += ["--symlink", os.readlink(name), name]
        elif os.path.isdir(name):
            args += ["--ro-bind", name, name]
    return args


def sandbox_prefix(workdir: str | Path, hide: list, limits: Limits = Limits(),
                   cgroups: list[Path] = ()) -> list[str] | None:
    """The command prefix that runs a program sandboxed with ``workdir`` writable, or None if unavailable.

    The sandbox sees an allowlist of the host, read-only: the system folders (``SYSTEM_FOLDERS``), Python
    and its packages, and the course package (``readable_folders``); ``workdir`` is its one writable
    folder, and ``/tmp`` and ``/dev/shm`` are its own, size-limited. Nothing else of the machine exists
    there (other checkouts, their solutions and git objects, home folders). ``hide``: folders inside
    the allowlist that must still look empty (e.g. solutions kept inside the course package).
    ``cgroups``: the kernel's cgroups (``kernel_cgroups``), entered before the sandbox starts.
    """
    if unavailable_reason() is not None:
        return None
    workdir = Path(workdir).resolve()
    uid = new_uid()
    if uid is not None:  # the kernel's user owns it; root's group (bwrap, capabilities dropped) may enter it
        os.chown(workdir, uid, 0)
        workdir.chmod(0o770)
    git = _git_folder(PACKAGE_ROOT)  # the course's history: solutions of every lab
    hidden = sorted({Path(h).resolve() for h in [*hide, *([git] if git else [])]} - {Path("/")},
                    key=lambda p: len(p.parts))
    args = [*_enter(list(cgroups)), shutil.which("bwrap"), *_system_binds(), "--dev", "/dev",
            "--perms", "1777", "--size", str(limits.tmp_bytes), "--tmpfs", "/dev/shm", "--proc", "/proc",
            "--perms", "1777", "--size", str(limits.tmp_bytes), "--tmpfs", "/tmp",
            *_isolation(), "--die-with-parent", "--new-session"]
    # A path is bound both where it really is and where a symbolic link puts it (e.g. /tmp/checkout/.venv ->
    # /work/.venv), since the kernel is started through the link; under /tmp it lies on the sandbox's own /tmp.
    for path in readable_folders():
        args += _bind("--ro-bind", path.resolve(), path)
    for folder in hidden:
        if folder.is_dir() and not _inside(workdir, [folder]) and _inside(folder, readable_folders()):
            args += ["--tmpfs", str(folder)]
    args += _bind("--bind", workdir, workdir)
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
