"""The kernel side of remote checks: runs inside the student's (sandboxed) kernel, never in the grader.

The grader sends one request at a time as a pickle file (getattr, call, setattr, getitem, len, list on
an object of the student's); ``handle`` does it and writes the answer with ``torch.save``: plain data
(tensors, numbers, strings, tuples, lists, dicts) by value, anything else as a reference the grader
holds. Nothing here is trusted: the grader reads answers with ``torch.load(weights_only=True)`` and
decides every verdict itself, so a student who tampers with this module only breaks their own checks.
"""
from __future__ import annotations

import builtins
import contextlib
import importlib.util
import os
import pickle
import sys
import threading

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

_objects: dict[int, object] = {}
_ids: dict[int, int] = {}
PLAIN = (type(None), bool, int, float, str)


def remember(obj) -> dict:
    """A reference to ``obj`` (kept alive here) that the grader can send back."""
    key = id(obj)
    if key not in _ids or _objects.get(_ids[key]) is not obj:
        _ids[key] = len(_objects)
        _objects[_ids[key]] = obj
    cls = type(obj)
    return {"__ref__": _ids[key], "cls": f"{cls.__module__}.{cls.__qualname__}",
            "name": str(getattr(obj, "__name__", cls.__name__))}


def encode(x, depth: int = 0):
    """Plain data by value, the rest by reference."""
    if type(x) in PLAIN:
        return x
    if type(x) in (torch.Tensor, torch.nn.Parameter):
        t = x.detach()
        if x.requires_grad:
            t = t.clone().requires_grad_()
        return t
    if isinstance(x, (torch.dtype, torch.device)):
        return x
    if depth < 8 and type(x) in (tuple, list, torch.Size):
        return (list if type(x) is list else tuple)(encode(i, depth + 1) for i in x)
    if depth < 8 and isinstance(x, dict) and type(x) in (dict, __import__("collections").OrderedDict) \
            and all(type(k) in PLAIN for k in x):
        return {k: encode(v, depth + 1) for k, v in x.items()}
    return remember(x)


class _Unpickler(pickle.Unpickler):
    def persistent_load(self, pid):
        return _objects[pid]


class _Watch(TorchFunctionMode):
    """Records torch functions whose name contains a forbidden fragment."""

    def __init__(self, forbidden, seen):
        super().__init__()
        self.forbidden, self.seen = forbidden, seen

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if any(f in name for f in self.forbidden):
            self.seen.append(f"torch function {name} (what the check compares with)")
        return func(*args, **(kwargs or {}))


class _WatchOps(TorchDispatchMode):
    """Records aten operators whose name contains a forbidden fragment (any route to them)."""

    def __init__(self, forbidden, seen):
        super().__init__()
        self.forbidden, self.seen = forbidden, seen

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if any(f in str(func) for f in self.forbidden):
            self.seen.append(f"operator {func} (what the check compares with)")
        return func(*args, **(kwargs or {}))


def module_paths(names) -> dict[str, str]:
    """{source file or package folder (with a trailing separator): module name} for the modules ``names``."""
    paths = {}
    for name in names:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is None:
            continue
        folders = [os.path.join(p, "") for p in spec.submodule_search_locations or []]
        for place in folders or [spec.origin or ""]:
            if place:  # as imported, and with links resolved
                paths[place] = name
                paths[os.path.join(os.path.realpath(place), "") if place in folders else os.path.realpath(place)] = name
    return paths


def c_module(function) -> str:
    """The module a C function or method belongs to ('tokenizers' for a Rust tokenizer's method), or ''."""
    module = getattr(function, "__module__", None)
    if not isinstance(module, str):  # a bound method of a C type: its type's module
        module = getattr(type(getattr(function, "__self__", None)), "__module__", None)
    return module if isinstance(module, str) else ""


class _WatchCalls:
    """Records calls of functions defined in forbidden modules (a profile hook on every thread).

    Python functions are matched by their source file, C functions and methods (a compiled extension's,
    e.g. ``tokenizers``' Rust trainer) by the module they name.
    """

    def __init__(self, modules, seen):
        self.paths, self.seen = module_paths(modules), seen
        self.prefixes = tuple(self.paths)
        self.names = tuple(modules)
        self.dotted = tuple(f"{m}." for m in modules)

    def __call__(self, frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(self.prefixes):
            where = next(p for p in self.prefixes if frame.f_code.co_filename.startswith(p))
            name = getattr(frame.f_code, "co_qualname", frame.f_code.co_name)
            self.seen.append(f"{self.paths[where]}: {name} (the course's own answer or the check's oracle)")
        elif event == "c_call":
            module = c_module(arg)
            if module in self.names or module.startswith(self.dotted):
                name = getattr(arg, "__qualname__", getattr(arg, "__name__", "?"))
                self.seen.append(f"{module}: {name} (the check's oracle, compiled code)")

    def __enter__(self):
        self.before = sys.getprofile()
        sys.setprofile(self)
        threading.setprofile(self)
        return self

    def __exit__(self, *exc):
        hooked = sys.getprofile() is self
        sys.setprofile(self.before)
        threading.setprofile(None)
        if not hooked:  # the student's code turned the tracing off (to call the answer unseen)
            self.seen.append("sys.setprofile (the grader traces the calls of the exercise)")
        return False


def _do(op: str, target, args: tuple):
    if op == "getattr":
        return getattr(target, args[0])
    if op == "setattr":
        return setattr(target, args[0], args[1])
    if op == "call":
        return target(*args[0], **args[1])
    if op == "getitem":
        return target[args[0]]
    if op == "len":
        return len(target)
    if op == "list":
        return list(target)
    if op == "global":
        import __main__
        if not hasattr(__main__, args[0]):
            raise NameError(f"name {args[0]!r} is not defined")
        return getattr(__main__, args[0])
    raise ValueError(f"unknown request {op!r}")


def handle(request_path: str, answer_path: str) -> None:
    """Do the request in ``request_path`` and write the answer to ``answer_path``."""
    with open(request_path, "rb") as f:
        request = _Unpickler(f).load()
    generators = [a for a in request["generators"]]
    seen: list[str] = []
    try:
        target = request["target"]
        with contextlib.ExitStack() as watches:
            if request["forbid"]:
                watches.enter_context(_Watch(request["forbid"], seen))
                watches.enter_context(_WatchOps(request["forbid"], seen))
            if request.get("forbid_modules"):
                watches.enter_context(_WatchCalls(request["forbid_modules"], seen))
            value = _do(request["op"], target, request["args"])
        answer = {"value": encode(value)}
    except BaseException as exc:  # the student's error, reported to the grader as text
        name = type(exc).__name__
        builtin = isinstance(getattr(builtins, name, None), type) and type(exc) is getattr(builtins, name)
        answer = {"error": name, "message": str(exc)[:2000], "builtin": builtin}
    if seen:
        answer = {"forbidden": seen[0]}
    answer["generators"] = [g.get_state() for g in generators]
    torch.save(answer, answer_path)
