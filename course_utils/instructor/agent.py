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
from tqdm.std import tqdm
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

_objects: dict[int, object] = {}
# The kernel's own threads, alive when the grader imports this module (before any code of the student's runs).
KERNEL_THREADS = frozenset(sys._current_frames())
_ids: dict[int, int] = {}
PLAIN = (type(None), bool, int, float, str)
tqdm.monitor_interval = 0  # no tqdm monitor thread: every thread alive during a check is the student's


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


def walk(x, depth: int = 0):
    """``x`` and what its tuples, lists and dicts hold (4 levels), in a fixed order (the grader walks the same)."""
    yield x
    if depth < 4 and isinstance(x, (tuple, list)):
        for item in x:
            yield from walk(item, depth + 1)
    elif depth < 4 and isinstance(x, dict):
        for item in x.values():
            yield from walk(item, depth + 1)


def grad_leaves(args) -> list:
    """The tensors among ``args`` that require a gradient (the grader's inputs to differentiate against)."""
    return [a for a in walk(args) if type(a) in (torch.Tensor, torch.nn.Parameter) and a.requires_grad and a.is_leaf]


def tensors_in(args) -> list:
    """The plain tensors among ``args``, in ``walk`` order (the grader finds its own the same way)."""
    return [a for a in walk(args) if type(a) in (torch.Tensor, torch.nn.Parameter)]


def changed_in_place(tensors: list, before: list) -> dict:
    """{index: new value} of the argument tensors the student's code changed in place."""
    return {i: t.detach() for i, (t, b) in enumerate(zip(tensors, before))
            if t.shape != b.shape or t.dtype != b.dtype or not torch.equal(t.detach(), b)}


def loss_of(value):
    """The scalar an answer's gradients are sent for: ``value`` itself, or the first item of a tuple or list."""
    return value[0] if type(value) in (tuple, list) and value else value


def gradients(value, leaves: list) -> list:
    """The gradient of a scalar ``value`` with respect to each of ``leaves`` (None where it does not reach)."""
    value = loss_of(value)
    if not (leaves and torch.is_tensor(value) and value.requires_grad and value.numel() == 1):
        return []
    grads = torch.autograd.grad(value.sum(), leaves, allow_unused=True, retain_graph=True)
    return [None if g is None else g.detach() for g in grads]


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


class _WatchAllThreads:
    """Records operators that ran on ANY thread (torch's profiler): forbidden ones, and any outside aten/prims.

    Function and dispatch modes are per thread and can be switched off (``DisableTorchFunction``, a popped
    mode stack); the profiler sees every operator the dispatcher runs, on every thread, however it was
    reached, including the operators inside a custom ``torch.library`` op.
    """

    ALLOWED = ("aten::", "prims::", "profiler::_record_function")

    def __init__(self, forbidden, seen):
        self.forbidden, self.seen = forbidden, seen

    def __enter__(self):
        from torch.autograd import ProfilerActivity, ProfilerConfig, ProfilerState, _prepare_profiler
        from torch._C._profiler import _ExperimentalConfig

        os.environ.setdefault("KINETO_LOG_LEVEL", "9")  # the profiler's own log lines stay out of the output
        config = ProfilerConfig(ProfilerState.KINETO, False, False, False, False, False,
                                _ExperimentalConfig(profile_all_threads=True))
        try:
            _prepare_profiler(config, {ProfilerActivity.CPU})
            torch.autograd._enable_profiler(config, {ProfilerActivity.CPU})
            self.on = True
        except RuntimeError:
            self.on = False
            self.seen.append("torch's profiler, already running (the grader traces the exercise with it)")
        return self

    def __exit__(self, *exc):
        if not self.on:
            return False
        torch.ops.aten.lift_fresh_copy(torch.zeros(()))  # a marker the profiler must have seen
        names = [(e.name(), e) for e in torch.autograd._disable_profiler().events()]
        if not any(name == "aten::lift_fresh_copy" for name, _ in names):
            self.seen.append("torch's profiler, stopped by the student's code (the grader traces the exercise with it)")
        for name, event in names:
            if event.scope() != 0 or event.is_user_annotation() or event.is_python_function():
                continue
            if any(f in name for f in self.forbidden):
                self.seen.append(f"operator {name} (what the check compares with)")
            elif "::" in name and not name.startswith(self.ALLOWED):  # an operator (namespace::name)
                self.seen.append(f"operator {name} (a custom operator: the grader cannot see inside it)")
        return False


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
        elif event == "c_call" and arg is sys.setprofile and not self.leaving:
            self.seen.append("sys.setprofile (the grader traces the calls of the exercise)")
        elif event == "c_call":
            module = c_module(arg)
            if module in self.names or module.startswith(self.dotted):
                name = getattr(arg, "__qualname__", getattr(arg, "__name__", "?"))
                self.seen.append(f"{module}: {name} (the check's oracle, compiled code)")

    def __enter__(self):
        self.before, self.leaving = sys.getprofile(), False
        sys.setprofile(self)
        threading.setprofile(self)
        return self

    def __exit__(self, *exc):
        hooked, self.leaving = sys.getprofile() is self, True
        sys.setprofile(self.before)
        threading.setprofile(None)
        if not hooked:  # the student's code turned the tracing off (to call the answer unseen)
            self.seen.append("sys.setprofile (the grader traces the calls of the exercise)")
        return False


def _kernel_folders() -> tuple[str, ...]:
    """Folders of the packages that make up the Jupyter kernel itself (its threads run their code)."""
    folders = []
    for name in ("ipykernel", "IPython", "jupyter_client", "zmq"):
        spec = importlib.util.find_spec(name)
        folders += [os.path.join(p, "") for p in (spec.submodule_search_locations or [])] if spec else []
    return tuple(folders)


KERNEL_FOLDERS = _kernel_folders()


def _started_in(frame) -> str:
    """The file of the function a thread was started with (below threading's own frames)."""
    frames = []
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    return next((f.f_code.co_filename for f in reversed(frames) if f.f_code.co_filename != threading.__file__), "")


def other_threads() -> list[str]:
    """Names of the threads the student's code started that are alive now (the traces follow one thread).

    The kernel's own threads are not counted: those alive before any code of the student's ran, and those
    the kernel starts later (running ipykernel's, IPython's, jupyter_client's or pyzmq's code).
    """
    frames = sys._current_frames()
    idents = (set(frames) | {t.ident for t in threading.enumerate()}) - KERNEL_THREADS - {threading.get_ident()}
    idents = {i for i in idents if i not in frames or not _started_in(frames[i]).startswith(KERNEL_FOLDERS)}
    names = {t.ident: t.name for t in threading.enumerate()}
    return sorted(names.get(i, f"thread {i}") for i in idents)


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
                watches.enter_context(_WatchAllThreads(request["forbid"], seen))
            if request.get("forbid_modules"):
                watches.enter_context(_WatchCalls(request["forbid_modules"], seen))
            watched = bool(request["forbid"] or request.get("forbid_modules"))
            threads = other_threads() if watched else []
            given = tensors_in(request["args"])
            before = [t.detach().clone() for t in given]
            value = _do(request["op"], target, request["args"])
            threads += other_threads() if watched else []
        seen += [f"a thread of its own ({name}) alive while the check ran (the grader traces one thread)"
                 for name in dict.fromkeys(threads)]
        answer = {"value": encode(value), "grads": gradients(value, grad_leaves(request["args"])),
                  "changed": changed_in_place(given, before)}
    except BaseException as exc:  # the student's error, reported to the grader as text
        name = type(exc).__name__
        builtin = isinstance(getattr(builtins, name, None), type) and type(exc) is getattr(builtins, name)
        answer = {"error": name, "message": str(exc)[:2000], "builtin": builtin}
    if seen:
        answer = {"forbidden": seen[0]}
    answer["generators"] = [g.get_state() for g in generators]
    torch.save(answer, answer_path)
