"""The checks of one submission run in a child process of the grader, bounded in memory and time.

The child decodes every answer of the student's kernel and runs every check cell; the grader only
relays the requests to the kernel. So an answer built to exhaust memory (a huge tensor, deeply shared
structure, a layer width that makes the check build a huge oracle) or a check that runs too long
kills the child at its memory limit (``RLIMIT_AS``) or the per-cell clock, never the grader: that
check gets zero with the reason and the next check gets a fresh child. Children are forked from a
clean server process that has torch and the course's checks already imported (multiprocessing's
``forkserver``; ``spawn`` where there is none), so a child starts in milliseconds.
"""
from __future__ import annotations

import ast
import contextlib
import importlib
import multiprocessing
import multiprocessing.forkserver
import os
import secrets
import sys
import time
import types

from .runner import error_line
from .sandbox import GIB, Limits

# Imported once by the server process that forks the children (they start with these loaded).
PRELOAD = ["torch", "transformers", "course_utils.checks", "course_utils.instructor.remote",
           "course_utils.instructor.checkproc"]
GRACE_S = 2  # a check computing on its own (no request to the kernel) is killed this long after its limit
# Shifts of the checks' seeds are drawn below this: lab 02's batches draw their rare tokens from the stream
# 2**31 - 1 - seed, which must stay apart from the masking's streams (seed, seed + 1, ...).
SEED_SHIFTS = 2 ** 29
STARTUP_S = 300  # a child imports what the solution imports (transformers, peft) before its first check


def preload(solution_path) -> list[str]:
    """PRELOAD, every module the solution's import statements name (a name that is no module is skipped), and the
    libraries its checks modules' oracles import (their ``ORACLES``)."""
    from . import remote
    from .notebooks import read_notebook

    names = list(PRELOAD)
    for node in ast.walk(ast.parse(remote.trusted_imports(read_notebook(solution_path).cells))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    for name in [n for n in names if n.startswith("course_utils.checks.")]:
        with contextlib.suppress(ImportError):
            names += getattr(importlib.import_module(name), "ORACLES", ())
    return list(dict.fromkeys(names))


def _context(solution_path):
    """forkserver where the platform has it (Linux, macOS), else spawn; the server imports the checks and the
    solution's imports once, so each child starts with them loaded (the first solution's, when one grader
    process grades several labs: its server starts once)."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(preload(solution_path))
        return context
    return multiprocessing.get_context("spawn")


@contextlib.contextmanager
def _bare_main():
    """Hide the grader's ``__main__`` while a child starts: the child must not re-run the grader's script."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def limit_memory(limit_bytes: int) -> None:
    """Cap this process's address space (no-op where the platform has no such limit)."""
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))


def verdict(source: str, trusted: dict, link, index: int) -> tuple[bool, str, str | None]:
    """(passed, message, why the run must stop or None) of one check cell run on the student's objects."""
    from . import remote

    try:
        remote.run_check(source, trusted, link)
    except remote.CheckTimeout as exc:
        return False, f"{exc} in this check (cell {index + 1})", str(exc)
    except MemoryError:
        return False, "MemoryError: the check ran out of memory on the student's answer", None
    except Exception as exc:
        return False, error_line(type(exc).__name__, str(exc)), None
    return True, "passed", None


def _child(conn, solution_path: str, profile: str, workdir: str, timeout: float, memory_bytes: int,
           seed_shift: int, run_cache=None) -> None:
    """The child's loop: build the trusted names, then run each check cell the grader sends."""
    from pathlib import Path

    from . import remote
    from ..checks import RUN_CACHE, SEED_SHIFT
    from .notebooks import read_notebook

    import torch

    # Libraries' own output (logging handlers, C code) would land in the grader's terminal: the verdicts say it all.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    # Libraries that refuse to seed outside a DataLoader's workers read this (transformers' MLM collator).
    multiprocessing.current_process().name = "MainProcess"
    # Each thread reserves address space (stack, malloc arena): a many-core machine must not eat the limit.
    torch.set_num_threads(min(4, torch.get_num_threads()))
    limit_memory(memory_bytes)
    SEED_SHIFT.set(seed_shift)
    RUN_CACHE.set(run_cache)

    def run_cell(code: str, seconds: float) -> str | None:
        conn.send(("kernel", code, seconds))
        return conn.recv()

    trusted = remote.trusted_namespace(read_notebook(solution_path), Path(solution_path).stem, profile)
    link = remote.Link(run_cell, workdir, timeout)
    conn.send(("ready",))
    for source, index in iter(conn.recv, None):
        conn.send(("verdict", *verdict(source, trusted, link, index)))


class CheckProcess:
    """The child process that runs one submission's checks; restarted after a check that killed it.

    ``seed_shift``: added to every check's seed (``checks.drawn_seed``); by default drawn secretly here, so
    the hidden tests' inputs are chosen when the submission is graded, not written in any file. ``run_cache``: the
    grading run's ``checks.RunCache`` (what checks build from the run's secret, shared by its submissions), or None.
    """

    def __init__(self, solution_path, profile: str, workdir, timeout: float, limits: Limits = Limits(),
                 seed_shift: int | None = None, run_cache=None):
        seed_shift = secrets.randbelow(SEED_SHIFTS) if seed_shift is None else seed_shift
        self.args = (str(solution_path), profile, str(workdir), timeout, limits.check_memory_bytes, seed_shift,
                     run_cache)
        self.timeout, self.memory_bytes = timeout, limits.check_memory_bytes
        self.process = self.conn = None

    def warm(self) -> None:
        """Start the fork server now (no-op under spawn), so that its imports overlap the kernel's first cells."""
        if _context(self.args[0]).get_start_method() == "forkserver":
            with _bare_main():
                multiprocessing.forkserver.ensure_running()

    def _start(self) -> str | None:
        """Start the child and wait until its names are ready; None, or why it could not start."""
        context = _context(self.args[0])
        self.conn, child_end = context.Pipe()
        self.process = context.Process(target=_child, args=(child_end, *self.args), daemon=True)
        with _bare_main():
            self.process.start()
        child_end.close()
        ready = self._receive(time.monotonic() + STARTUP_S)
        if isinstance(ready, tuple) and ready == ("ready",):
            return None
        self._stop()
        return ready if isinstance(ready, str) else f"the check's process did not start within {STARTUP_S} s"

    def run(self, source: str, index: int, kernel) -> tuple[bool, str, str | None]:
        """(passed, message, why the run must stop or None) of one check cell run in the child.

        ``kernel(code, seconds)`` runs one of the child's requests in the student's kernel.
        """
        from nbclient.exceptions import DeadKernelError

        limit = f"timed out after {int(self.timeout)} s"
        timed_out = f"{limit} in this check (cell {index + 1})"
        if self.process is None and (problem := self._start()) is not None:
            return False, problem, None
        self.conn.send((source, index))
        deadline = time.monotonic() + self.timeout + GRACE_S
        while True:
            message = self._receive(deadline)
            if isinstance(message, tuple) and message[0] == "verdict":
                return message[1], message[2], message[3]
            if not isinstance(message, tuple):  # past the deadline (no kernel request in flight), or died
                self._stop()
                return False, message or timed_out, None
            try:
                self.conn.send(kernel(message[1], message[2]))
            except DeadKernelError:
                self._stop()
                return False, f"the kernel died in this check (cell {index + 1})", "the kernel died"
            except Exception as exc:  # nbclient's CellTimeoutError, or asyncio's TimeoutError on the way to it
                self._stop()
                if "Timeout" not in type(exc).__name__:
                    raise
                return False, timed_out, limit

    def _receive(self, deadline: float):
        """The child's next message (a tuple); None past the deadline; why (a str) when the child died."""
        if not self.conn.poll(max(0.0, deadline - time.monotonic())):
            return None
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            self.process.join(timeout=5)
            return (f"the check's process died (exit code {self.process.exitcode}): stopped at the grader's "
                    f"memory limit for a check ({self.memory_bytes / GIB:g} GiB) or crashed on the student's answer")

    def _stop(self) -> None:
        """Kill the child (the next check starts a new one)."""
        if self.process is not None:
            self.process.kill()
            self.process.join(timeout=10)
            self.conn.close()
        self.process = self.conn = None

    def close(self) -> None:
        """Let the child finish, then reap it."""
        if self.process is not None:
            with contextlib.suppress(OSError):
                self.conn.send(None)
            self.process.join(timeout=10)
        self._stop()


def kernel_runner(client):
    """``kernel(code, seconds)`` for ``CheckProcess.run``: runs the code in the notebook client's kernel."""
    import nbformat

    def kernel(code: str, seconds: float) -> str | None:
        client.timeout = max(1, int(seconds))
        cell = nbformat.v4.new_code_cell(code)
        client.execute_cell(cell, 0, store_history=False)
        errors = [o for o in cell.outputs if o.output_type == "error"]
        return f"{errors[-1].ename}: {errors[-1].evalue}" if errors else None

    return kernel
