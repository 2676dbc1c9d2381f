"""The grader's own resources (issue 24 §1): answers are bounded before and while they are decoded, widget and
display floods are dropped, and each submission's checks run in a child process that a memory or time limit
kills without the grader.

No notebook runs here: the kernel is played by a function (honest: the agent in this process; hostile:
one that writes a crafted answer), so each attack takes well under a second of real work.
"""
import io
import os
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from course_utils.checks import STUDENT_TEXT_LIMIT
from course_utils.instructor import checkproc, remote
from course_utils.instructor.sandbox import GIB, Limits

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "01_attention.ipynb"


def archive(value, compress: int = zipfile.ZIP_STORED) -> bytes:
    """What the kernel's agent writes for ``value`` (torch.save), its records stored with ``compress``."""
    buffer = io.BytesIO()
    torch.save({"value": value, "generators": []}, buffer)
    if compress == zipfile.ZIP_STORED:
        return buffer.getvalue()
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as src, zipfile.ZipFile(out, "w", compress) as dst:
        for entry in src.infolist():
            dst.writestr(entry.filename, src.read(entry))
    return out.getvalue()


def decoded(data: bytes, tmp_path):
    answer = remote.load_answer(data)
    return remote.Link(None, tmp_path, 10).decode(answer["value"], remote._Budget())


def test_an_honest_answer_decodes(tmp_path):
    value = {"logits": torch.arange(6.0).reshape(2, 3), "names": ["a", "b"], "n": 3}
    got = decoded(archive(value), tmp_path)
    assert torch.equal(got["logits"], value["logits"]) and got["names"] == ["a", "b"] and got["n"] == 3


def test_a_compressed_record_is_rejected_before_decoding(tmp_path):
    data = archive(torch.zeros(2 ** 22, dtype=torch.uint8), zipfile.ZIP_DEFLATED)  # 4 MiB of zeros in a few kB
    assert len(data) < 2 ** 16
    with pytest.raises(remote.RemoteError, match="compressed records"):
        remote.load_answer(data)


def test_something_else_than_an_archive_is_rejected(tmp_path):
    with pytest.raises(remote.RemoteError, match="not a torch.save archive"):
        remote.load_answer(b"\x80\x02}q\x00.")  # a bare (legacy) pickle: torch would read storage sizes from it


def test_records_larger_than_the_cap_are_rejected(monkeypatch):
    monkeypatch.setattr(remote, "MAX_ANSWER_BYTES", 1000)
    with pytest.raises(remote.RemoteError, match="more than 0 MiB"):
        remote.load_answer(archive(torch.zeros(1000)))


def test_deeply_shared_structure_stops_at_the_node_limit(tmp_path):
    shared = [0]
    for _ in range(8):
        shared = [shared] * 50  # 50 ** 8 leaves; a few kB on disk thanks to the pickle memo
    data = archive(shared)
    assert len(data) < 10_000
    start = time.perf_counter()
    with pytest.raises(remote.RemoteError, match=f"more than {remote.MAX_ANSWER_NODES} values"):
        decoded(data, tmp_path)
    assert time.perf_counter() - start < 5


def test_nesting_deeper_than_the_limit_is_rejected(tmp_path):
    nested = 0
    for _ in range(remote.MAX_ANSWER_DEPTH + 2):
        nested = [nested]
    with pytest.raises(remote.RemoteError, match="nested more than"):
        decoded(archive(nested), tmp_path)


def test_an_expanded_tensor_counts_what_it_would_allocate(tmp_path):
    huge = torch.zeros(1).expand(remote.MAX_ANSWER_ELEMENTS + 1)  # one stored element, a huge logical size
    with pytest.raises(remote.RemoteError, match="elements"):
        decoded(archive(huge), tmp_path)


def in_process_kernel(code: str, seconds: float) -> None:
    """The student's kernel played by this process: the agent answers the request here."""
    exec(code, {})


def hostile_kernel(data: bytes):
    """A kernel whose agent was replaced: it writes ``data`` as every answer."""
    def kernel(code: str, seconds: float) -> None:
        answer_path = code.rsplit(", ", 1)[1].rstrip(")").strip("'")
        Path(answer_path).write_bytes(data)
    return kernel


@pytest.fixture(scope="module")
def checker(tmp_path_factory):
    proc = checkproc.CheckProcess(SOLUTION, "ci", tmp_path_factory.mktemp("checks"), timeout=3, limits=Limits(check_memory_bytes=2 * GIB))
    yield proc
    proc.close()


def test_the_children_start_with_the_solutions_imports_loaded():
    """The fork server imports the checks and what the solution imports once; each submission's child inherits them."""
    names = checkproc.preload(ROOT / "solutions" / "02_bert_mlm.ipynb")
    assert names[:len(checkproc.PRELOAD)] == checkproc.PRELOAD
    assert {"course_utils.mlm", "course_utils.checks.mlm", "transformers", "course_utils.training"} <= set(names)
    assert len(names) == len(set(names))
    # ... and the libraries its checks' oracles import (TRL alone takes seconds), declared as ORACLES
    assert {"trl.trainer.reward_trainer", "torchrl.objectives"} <= set(
        checkproc.preload(ROOT / "solutions" / "05_rlhf_ppo.ipynb"))
    assert {"peft", "bitsandbytes.functional"} <= set(checkproc.preload(ROOT / "solutions" / "07_lora_qlora.ipynb"))


def test_every_oracle_a_checks_module_names_is_a_module():
    """The server skips a name it cannot import, so a misspelt ORACLES entry would only make grading slower."""
    import importlib
    import importlib.util

    names = [name for path in sorted((ROOT / "course_utils" / "checks").glob("[!_]*.py"))
             for name in getattr(importlib.import_module(f"course_utils.checks.{path.stem}"), "ORACLES", ())]
    assert len(names) >= 6
    assert [name for name in names if importlib.util.find_spec(name) is None] == []


def test_the_fork_server_starts_before_the_first_check(checker):
    """``warm`` starts the server (its imports then overlap the kernel's first cells) without waiting for it."""
    import multiprocessing.forkserver

    checker.warm()
    server = multiprocessing.forkserver._forkserver
    assert server._forkserver_pid is not None and os.waitpid(server._forkserver_pid, os.WNOHANG) == (0, 0)


def test_checks_run_in_a_child_on_the_students_objects(checker, monkeypatch):
    monkeypatch.setattr(sys.modules["__main__"], "double", lambda x: 2 * x, raising=False)
    assert checker.run("assert double(torch.ones(2)).tolist() == [2.0, 2.0]", 0, in_process_kernel) == \
        (True, "passed", None)
    passed, message, stop = checker.run("assert double(1) == 3, 'wrong'", 1, in_process_kernel)
    assert (passed, message, stop) == (False, "AssertionError: wrong", None)


def test_the_students_own_text_in_a_message_is_fenced_and_bounded(checker, monkeypatch):
    def shout(x):
        raise ValueError('=HYPERLINK("http://evil")\n\x1b[2J' + "A" * 5000)

    class YouGetFullMarks(Exception):  # a class name of the student's choosing
        pass

    def boast(x):
        raise type("A" * 500, (YouGetFullMarks,), {})("all points awarded")

    monkeypatch.setattr(sys.modules["__main__"], "shout", shout, raising=False)
    monkeypatch.setattr(sys.modules["__main__"], "boast", boast, raising=False)
    passed, message, _ = checker.run("shout(1)", 0, in_process_kernel)
    assert not passed and message.startswith('ValueError: ⟪=HYPERLINK("http://evil") ') and message.endswith("...⟫")
    assert message.isprintable() and len(message) == len("ValueError: ") + STUDENT_TEXT_LIMIT + 2, message
    passed, message, _ = checker.run("boast(1)", 1, in_process_kernel)
    assert not passed and message.startswith("RemoteError: ⟪AAA") and message.endswith("...⟫: ⟪all points awarded⟫")
    assert len(message) < 100, message


def test_an_allocation_past_the_memory_limit_fails_the_check_not_the_grader(checker):
    passed, message, stop = checker.run("x = torch.ones(3 * 2 ** 30, dtype=torch.uint8)", 0, in_process_kernel)
    assert not passed and stop is None and "allocate memory" in message, message
    assert checker.run("assert True", 1, in_process_kernel) == (True, "passed", None)


def test_a_child_that_dies_costs_one_check_and_the_next_gets_a_new_child(checker):
    passed, message, stop = checker.run("import os\nos._exit(7)", 0, in_process_kernel)
    assert not passed and stop is None and "process died (exit code 7)" in message and "2 GiB" in message
    assert checker.run("assert True", 1, in_process_kernel) == (True, "passed", None)


def test_a_check_that_runs_past_the_limit_is_killed(checker):
    assert checker.run("assert True", 3, in_process_kernel) == (True, "passed", None)  # the child is up
    start = time.perf_counter()
    passed, message, stop = checker.run("while True:\n    pass", 4, in_process_kernel)
    assert (passed, message, stop) == (False, "timed out after 3 s in this check (cell 5)", None)
    assert time.perf_counter() - start < 3 + checkproc.GRACE_S + 2
    assert checker.run("assert True", 5, in_process_kernel) == (True, "passed", None)


def test_a_crafted_answer_fails_only_its_check(checker):
    bomb = archive(torch.zeros(2 ** 22, dtype=torch.uint8), zipfile.ZIP_DEFLATED)
    passed, message, _ = checker.run("scaled_dot_product_attention", 0, hostile_kernel(bomb))
    assert not passed and "compressed records" in message, message


def test_a_flood_of_widget_and_display_messages_is_dropped():
    import nbformat

    from course_utils.instructor import grading

    cell = nbformat.v4.new_code_cell("flood()")
    client = grading._client_class()(nbformat.v4.new_notebook(cells=[cell]))
    client.reset_execution_trackers()
    client.clear_before_next_output = False  # as execute_cell sets it
    state = {"value": "x" * 10_000}

    def message(kind, content):
        return {"msg_type": kind, "content": content, "buffers": [], "header": {"msg_type": kind},
                "parent_header": {}, "metadata": {}}

    for i in range(2_000):
        client.process_message(message("comm_open", {"comm_id": str(i), "target_name": "jupyter.widget",
                                                     "data": {"state": state, "buffer_paths": []}}), cell, 0)
        client.process_message(message("display_data", {"data": {"text/plain": "x"}, "metadata": {},
                                                        "transient": {"display_id": "same"}}), cell, 0)
        client.process_message(message("update_display_data", {"data": {"text/plain": "y"}, "metadata": {},
                                                               "transient": {"display_id": "same"}}), cell, 0)
    assert client.widget_state == {} and client._display_id_map == {}
    assert len(cell.outputs) == 2_000 and cell.outputs[-1]["data"]["text/plain"] == "x"


def test_a_class_name_from_the_kernel_never_imports_a_module():
    assert remote._trusted_class("torch.nn.modules.linear.Linear") is torch.nn.Linear
    unimported = "transformers.models.bark.modeling_bark"
    assert unimported not in sys.modules
    assert remote._trusted_class(f"{unimported}.BarkModel") is None
    assert unimported not in sys.modules


def test_a_graded_kernel_inherits_only_an_allowlisted_environment(monkeypatch):
    from course_utils.instructor.runner import grading_env

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("GITHUB_TOKEN", "secret")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    env = grading_env("ci")
    assert "secret" not in env.values()
    assert env["COURSE_PROFILE"] == "ci" and env["OMP_NUM_THREADS"] == "1" and "course_utils" not in env["PATH"]
    assert str(ROOT) in env["PYTHONPATH"].split(":")


def test_gradients_of_a_students_loss_reach_the_graders_inputs(checker, monkeypatch):
    monkeypatch.setattr(sys.modules["__main__"], "square_sum", lambda x: (x ** 2).sum(), raising=False)
    monkeypatch.setattr(sys.modules["__main__"], "detached_sum", lambda x: (x.detach() ** 2).sum(), raising=False)
    monkeypatch.setattr(sys.modules["__main__"], "half_used", lambda x, y: (x * y.detach()).sum(), raising=False)
    monkeypatch.setattr(sys.modules["__main__"], "with_extra", lambda x: ((x ** 2).sum(), 7), raising=False)
    source = """
x, y = torch.tensor([1.0, 2.0], requires_grad=True), torch.tensor([3.0, 4.0], requires_grad=True)
loss = square_sum(x)
loss.backward()
assert torch.equal(x.grad, torch.tensor([2.0, 4.0])) and loss.item() == 5.0, x.grad
assert not detached_sum(x).requires_grad
x.grad = None
half_used(x, y).backward()
assert torch.equal(x.grad, y.detach()) and y.grad is None, (x.grad, y.grad)
x.grad = None
loss, extra = with_extra(x)  # a (loss, ...) tuple, as lab 06's dpo_loss returns
loss.backward()
assert torch.equal(x.grad, torch.tensor([2.0, 4.0])) and extra == 7, (x.grad, extra)
"""
    assert checker.run(source, 0, in_process_kernel) == (True, "passed", None)


def test_what_the_students_code_changes_in_place_reaches_the_graders_tensors(checker, monkeypatch):
    def scale_in_place(logits, t):
        return logits.div_(t)

    monkeypatch.setattr(sys.modules["__main__"], "scale_in_place", scale_in_place, raising=False)
    monkeypatch.setattr(sys.modules["__main__"], "scale", lambda logits, t: logits / t, raising=False)
    source = """
logits = torch.tensor([2.0, 4.0])
out = scale_in_place(logits, 2.0)
assert torch.equal(logits, torch.tensor([1.0, 2.0])), logits  # the check sees its input changed, as in the kernel
kept = torch.tensor([2.0, 4.0])
scale(kept, 2.0)
assert torch.equal(kept, torch.tensor([2.0, 4.0])), kept
"""
    assert checker.run(source, 0, in_process_kernel) == (True, "passed", None)
