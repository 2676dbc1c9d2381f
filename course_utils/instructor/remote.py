"""Remote checks: the grader runs each check cell in its own process, on proxies of the student's objects.

A name the check cell uses that the solution does not import (``scaled_dot_product_attention``,
``MultiHeadAttention``) becomes a ``Remote``: every attribute, call or item on it is done by the
student's kernel (``agent.handle``) and answered with plain data by value (read with
``torch.load(weights_only=True)``, so no code of the student's runs here) or with a new ``Remote``.
Inputs, oracles, comparisons and the verdict stay in the grader's process. Trusted objects sent as
arguments (tensors, generators, tokenizers, models) are pickled to the kernel; a ``torch.Generator``
argument gets back the state the student's code left it in.
"""
from __future__ import annotations

import ast
import builtins
import contextlib
import io
import os
import pickle
import stat
import sys
import time
import zipfile
from pathlib import Path

import torch

from . import agent
from ..checks import FORBIDDEN_MODULES, FORBIDDEN_OPS, CheckError, fenced

MAX_ANSWER_BYTES = 256 * 1024 ** 2
MAX_ANSWER_DEPTH = 16      # levels of nesting in one answer
MAX_ANSWER_NODES = 100_000  # values in one answer, shared references counted each time they are used
MAX_ANSWER_ELEMENTS = 2 ** 25  # tensor elements in one answer (256 MiB of float64)
TRUSTED_CLASS_ROOTS = ("torch.", "transformers.")


class RemoteError(Exception):
    """The student's code raised an exception that is not one of Python's built-in ones."""


class ForbiddenCall(CheckError):
    """The student's code ran an operation the exercise forbids (the checker's oracle)."""


class CheckTimeout(Exception):
    """A check took longer than the per-cell time limit."""


class Link:
    """Requests to one student's kernel; answers pass through files in ``workdir``.

    ``run_cell(code, seconds)`` runs one line of code in the kernel within ``seconds`` and returns the
    error it raised as text (None when it ran): the grader's notebook client, or the pipe to it when
    the checks run in a child process (``checkproc.py``).
    """

    def __init__(self, run_cell, workdir: str | Path, timeout: float):
        self.run_cell, self.workdir, self.timeout = run_cell, Path(workdir), timeout
        self.deadline = time.monotonic() + timeout
        self.requests = 0

    def start_check(self) -> None:
        """Restart the clock: every check may take up to ``timeout`` seconds."""
        self.deadline = time.monotonic() + self.timeout

    def request(self, op: str, target, *args):
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise CheckTimeout(f"timed out after {int(self.timeout)} s")
        self.requests += 1
        request_path, answer_path = self.workdir / "request.pkl", self.workdir / "answer.pt"
        generators = [a for a in agent.walk((args, target)) if isinstance(a, torch.Generator)]
        buffer = io.BytesIO()
        _Pickler(buffer).dump({"op": op, "target": target, "args": args, "generators": generators,
                               "forbid": FORBIDDEN_OPS.get(), "forbid_modules": FORBIDDEN_MODULES.get()})
        _write_new(request_path, buffer.getvalue())
        with contextlib.suppress(FileNotFoundError):
            answer_path.unlink()
        error = self.run_cell(f"__import__('course_utils.instructor.agent', fromlist=['handle'])"
                              f".handle({str(request_path)!r}, {str(answer_path)!r})", left)
        data = _read_regular(answer_path)
        if data is None:
            raise RemoteError(f"the kernel could not run the student's code ({fenced(error) if error else 'no answer'})")
        answer = load_answer(data)
        for generator, state in zip(generators, answer.get("generators", [])):
            if torch.is_tensor(state) and state.dtype == torch.uint8:
                generator.set_state(state)
        if "forbidden" in answer:
            raise ForbiddenCall(f"forbidden call: the exercise may not use {answer['forbidden']}; write it yourself")
        if "error" in answer:
            name, message = str(answer["error"]), fenced(answer.get("message", ""))
            cls = getattr(builtins, name, None)
            if answer.get("builtin") and isinstance(cls, type) and issubclass(cls, Exception) \
                    and cls not in (StopIteration, StopAsyncIteration):
                raise cls(message)
            raise RemoteError(f"{fenced(name, 40)}: {message}")
        budget = _Budget()
        value = self.decode(answer.get("value"), budget)
        apply_changes(agent.tensors_in(args), answer.get("changed"), budget)
        if type(value) in (tuple, list) and value:  # a (loss, ...) tuple: the gradients belong to the loss
            return type(value)([with_gradients(value[0], agent.grad_leaves(args), answer.get("grads")), *value[1:]])
        return with_gradients(value, agent.grad_leaves(args), answer.get("grads"))

    def decode(self, value, budget: "_Budget", depth: int = 0):
        """Plain data as it is, references as ``Remote`` proxies; bounded in depth, nodes and tensor elements."""
        if depth > MAX_ANSWER_DEPTH:
            raise RemoteError(f"the student's code returned data nested more than {MAX_ANSWER_DEPTH} levels deep")
        budget.count(value)
        if isinstance(value, dict):
            if set(value) == {"__ref__", "cls", "name"} and isinstance(value["__ref__"], int):
                return Remote(self, value["__ref__"], str(value["cls"]), str(value["name"]))
            return {k: self.decode(v, budget, depth + 1) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.decode(v, budget, depth + 1) for v in value)
        if torch.is_tensor(value) and type(value) not in (torch.Tensor, torch.nn.Parameter):
            raise RemoteError(f"unexpected tensor type {type(value).__name__}")
        return value


class _Budget:
    """Counts the nodes and tensor elements of one decoded answer; raises past the limits."""

    def __init__(self):
        self.nodes = self.elements = 0

    def count(self, value) -> None:
        self.nodes += 1
        if self.nodes > MAX_ANSWER_NODES:
            raise RemoteError(f"the student's code returned more than {MAX_ANSWER_NODES} values in one answer")
        if torch.is_tensor(value):
            self.elements += value.numel()  # logical size: an expanded tensor counts what it would allocate
            if self.elements > MAX_ANSWER_ELEMENTS:
                raise RemoteError(f"the student's code returned tensors of more than {MAX_ANSWER_ELEMENTS} elements")


def apply_changes(tensors: list, changed, budget: _Budget) -> None:
    """Change the grader's argument ``tensors`` as the student's code changed its copies in place.

    Arguments cross by value, so without this a check that looks at its inputs again after the call
    (did the exercise leave them alone?) would never see what the student's code did to them.
    """
    if not isinstance(changed, dict):
        return
    for index, new in changed.items():
        if not (isinstance(index, int) and 0 <= index < len(tensors) and type(new) is torch.Tensor):
            continue
        budget.count(new)
        old = tensors[index]
        with torch.no_grad():
            if new.shape == old.shape:
                old.copy_(new.to(old.dtype))
            else:
                old.data = new.to(old.dtype)


def with_gradients(value, leaves: list, grads) -> object:
    """``value`` whose gradient with respect to the grader's ``leaves`` is the one the kernel computed.

    The student's graph stays in the kernel; for a scalar the kernel sends d value / d leaf, and
    ``value + sum(leaf * grad) - (the same, detached)`` carries exactly those gradients here.
    """
    if not (torch.is_tensor(value) and value.requires_grad and isinstance(grads, list) and len(grads) == len(leaves)):
        return value
    terms = [(leaf * g.to(leaf.dtype)).sum() for leaf, g in zip(leaves, grads)
             if torch.is_tensor(g) and type(g) is torch.Tensor and g.shape == leaf.shape]
    if not terms:
        return value
    link = sum(terms)
    return value.detach() + (link - link.detach()).to(value.dtype)


def load_answer(data: bytes) -> dict:
    """The kernel's answer read from ``data``: a plain (uncompressed) torch.save archive within the size limit."""
    try:
        entries = zipfile.ZipFile(io.BytesIO(data)).infolist()
    except zipfile.BadZipFile:
        raise RemoteError("malformed answer from the kernel (not a torch.save archive)") from None
    if any(e.compress_type != zipfile.ZIP_STORED for e in entries):
        raise RemoteError("malformed answer from the kernel (compressed records)")
    if sum(e.file_size for e in entries) > MAX_ANSWER_BYTES:
        raise RemoteError(f"the student's code returned more than {MAX_ANSWER_BYTES >> 20} MiB")
    answer = torch.load(io.BytesIO(data), weights_only=True)
    if not isinstance(answer, dict):
        raise RemoteError("malformed answer from the kernel")
    return answer


def _write_new(path: Path, data: bytes) -> None:
    """Write a fresh file in the sandbox's folder, never through a link the submission planted there."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    # 0644: the kernel may run as another user (a root grader's sandbox); the folder is the sandbox's own
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _read_regular(path: Path) -> bytes | None:
    """The bytes of a regular file the kernel wrote (no links, FIFOs or devices; bounded), or None."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            return None
        if info.st_size > MAX_ANSWER_BYTES:
            raise RemoteError(f"the student's code returned more than {MAX_ANSWER_BYTES >> 20} MiB")
        return f.read(MAX_ANSWER_BYTES + 1)


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        return object.__getattribute__(obj, "_ref") if type(obj) is Remote else None


def _trusted_class(qualified: str):
    """The trusted nn.Module class named ``qualified`` (torch's, transformers'), or None.

    Only modules already imported here are looked at: the name comes from the student's kernel, and
    importing a module the student names would run its import-time code in the grader.
    """
    if not qualified.startswith(TRUSTED_CLASS_ROOTS):
        return None
    module, _, name = qualified.rpartition(".")
    cls = getattr(sys.modules.get(module), name, None)
    return cls if isinstance(cls, type) and issubclass(cls, torch.nn.Module) else None


class Remote:
    """A student's object living in the kernel; every use of it is a request to the kernel."""

    __slots__ = ("_link", "_ref", "_cls", "_name")
    _NAMES = ("__name__", "__qualname__", "__doc__")

    def __init__(self, link: Link, ref: int, cls: str, name: str):
        for key, value in (("_link", link), ("_ref", ref), ("_cls", cls), ("_name", name)):
            object.__setattr__(self, key, value)

    def _ask(self, op, *args):
        return object.__getattribute__(self, "_link").request(op, self, *args)

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__") and name not in Remote._NAMES:
            raise AttributeError(name)
        return self._ask("getattr", name)

    def __setattr__(self, name, value):
        self._ask("setattr", name, value)

    def __call__(self, *args, **kwargs):
        return self._ask("call", args, kwargs)

    def __getitem__(self, key):
        return self._ask("getitem", key)

    def __len__(self):
        return self._ask("len")

    def __iter__(self):
        return iter(self._ask("list"))

    @property
    def __class__(self):  # isinstance(module.q_proj, nn.Linear) works for torch's own classes
        return _trusted_class(object.__getattribute__(self, "_cls")) or Remote

    def __repr__(self):
        return f"<student's {object.__getattribute__(self, '_cls')} {object.__getattribute__(self, '_name')}>"


class Namespace(dict):
    """Check-cell globals: trusted names first, then the student's objects as proxies."""

    def __init__(self, trusted: dict, link: Link):
        super().__init__(trusted)
        self.link = link

    def __missing__(self, name):
        if hasattr(builtins, name):
            return getattr(builtins, name)
        value = self.link.request("global", None, name)
        self[name] = value
        return value


def trusted_imports(cells) -> str:
    """The import statements of ``cells`` (top level only), to run in the grader for the check cells."""
    lines = []
    for cell in cells:
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse("\n".join(l for l in cell.source.splitlines() if not l.lstrip().startswith(("%", "!"))))
        except SyntaxError:
            continue
        lines += [ast.unparse(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    return "\n".join(dict.fromkeys(lines))


def run_check(source: str, trusted: dict, link: Link) -> None:
    """Execute a check cell's code in the grader; raises what the check raises."""
    link.start_check()
    namespace = Namespace(trusted, link)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        exec(compile(source, "<check cell>", "exec"), {"__builtins__": builtins}, namespace)


def trusted_namespace(solution, notebook: str, profile: str) -> dict:
    """The grader's names for check cells: the solution's imports and ``profile`` for the grading profile."""
    from .. import setup

    namespace: dict = {"__name__": "__course_check__"}
    exec(compile(trusted_imports(solution.cells), "<solution imports>", "exec"), namespace)
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            namespace["profile"] = setup(notebook, profile=profile, verbose=False)
        except ValueError:  # a notebook without settings of its own
            namespace["profile"] = setup(None, profile=profile, verbose=False)
    return namespace
