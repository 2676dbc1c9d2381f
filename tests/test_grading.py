"""`course grade`: solutions get full marks, the released lab 0, wrong or broken submissions lose points,
and no submission (crashing, hanging, unreadable) can stop the others or be modified.

All submissions are graded once, in one `grade()` call (module fixture), because each needs a kernel.
"""
import argparse
import csv
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from course_utils.instructor import grading
from course_utils.instructor.notebooks import colab_badge, nbgrader_meta
from course_utils.instructor.release import release_notebook, replace_solution

TIMEOUT = 5  # seconds per cell; the hanging submission costs this much once


def grader(grade_id, grade=False, points=0):
    meta = {"grade": grade, "grade_id": grade_id, "locked": grade, "schema_version": 3, "solution": not grade}
    if grade:
        meta["points"] = points
    return {"metadata": {"nbgrader": meta}}


def exercise(name, body, check, hidden):
    """A solution cell defining ``name`` and its 2-point check cell with a hidden test."""
    impl = new_code_cell(f"def {name}:\n    ### BEGIN SOLUTION\n    {body}\n    ### END SOLUTION",
                         **grader(name.split("(")[0] + "_impl"))
    test = new_code_cell(f"{check}\n### BEGIN HIDDEN TESTS\n{hidden}\n### END HIDDEN TESTS",
                         **grader(name.split("(")[0] + "_check", grade=True, points=2))
    return [impl, test]


def solution_notebook():
    kernel_facts = new_code_cell("import os\nKERNEL_PROFILE, KERNEL_CWD = os.environ.get('COURSE_PROFILE'), os.getcwd()")
    profile_check = new_code_cell(  # worth 0 points: it tells whether the kernel got COURSE_PROFILE and its cwd
        "import os\nassert KERNEL_PROFILE == 'cpu', KERNEL_PROFILE\n"
        "assert os.path.basename(KERNEL_CWD).startswith('course-grade-'), KERNEL_CWD",
        **grader("profile_check", grade=True, points=0))
    return new_notebook(cells=[
        new_markdown_cell("# Lab 99\n\n" + colab_badge("solutions", "99_demo")),
        kernel_facts,
        profile_check,
        *exercise("add(a, b)", "return a + b", "assert add(2, 3) == 5", "assert add(-1, 1) == 0"),
        *exercise("mul(a, b)", "return a * b", "assert mul(2, 3) == 6", "assert mul(0, 5) == 0"),
        *exercise("neg(a)", "return -a", "assert neg(2) == -2, 'neg(2) should be -2'",
                  "assert neg(-3) == 3, 'neg(-3) should be 3'"),
    ])


def submissions(sol):
    """name -> notebook (or raw text for files that are not notebooks), in grading order."""
    early = replace_solution(sol, "add_impl", "return a + b")
    early.cells[3].source = "raise RuntimeError('stray raise at top level')"  # add is never defined
    early.cells.insert(3, new_code_cell("1 / 0"))
    edited = replace_solution(sol, "neg_impl", "return a")
    edited.cells[-1].source = "pass  # the student 'fixed' the check"
    del edited.cells[6]  # mul_check deleted
    return {
        "lab.ipynb": release_notebook(sol),
        "hang.ipynb": replace_solution(sol, "mul_impl", "while True:\n    pass"),
        "solution.ipynb": sol,
        "wrong.ipynb": replace_solution(sol, "neg_impl", "return -abs(a)"),  # passes visible, fails hidden
        "early.ipynb": early,
        "exit.ipynb": replace_solution(sol, "add_impl", "import os\nos._exit(1)"),
        "edited.ipynb": edited,
        "broken.ipynb": "{ this is not json",
        "notebook_like.ipynb": '{"cells": 3}',
    }


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = tmp_path_factory.mktemp("grading")
    sol = solution_notebook()
    nbformat.write(sol, root / "99_demo.ipynb")
    paths = []
    for name, nb in submissions(sol).items():
        path = root / "submitted" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(nb if isinstance(nb, str) else nbformat.writes(nb))
        paths.append(path)
    paths.append(root / "submitted" / "missing.ipynb")
    before = {p: (p.read_bytes(), os.stat(p).st_mtime_ns) for p in paths if p.exists()}
    private_tmp = tmp_path_factory.mktemp("grader-tmp")  # only this grading's folders appear here
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "tempdir", str(private_tmp))
        mp.setenv("COURSE_PROFILE", "gpu")  # the grader must override ours
        results = grading.grade(root / "99_demo.ipynb", paths, root / "out" / "grades.csv", TIMEOUT, "cpu")
    after = {p: (p.read_bytes(), os.stat(p).st_mtime_ns) for p in before}
    leftover = set(private_tmp.glob("course-grade-*"))
    rows = {(os.path.basename(r.submission), r.exercise): r for r in results}
    return {"results": results, "rows": rows, "before": before, "after": after, "root": root, "paths": paths,
            "leftover": leftover}


EXERCISES = ("profile_check", "add_check", "mul_check", "neg_check")


def points(graded, name):
    return [graded["rows"][name, e].points for e in EXERCISES]


def message(graded, name, exercise):
    return graded["rows"][name, exercise].message


def test_solution_gets_full_marks(graded):
    assert points(graded, "solution.ipynb") == [0, 2, 2, 2]
    assert all(message(graded, "solution.ipynb", e) == "passed" for e in EXERCISES)


def test_kernel_sees_course_profile_and_runs_in_a_temporary_folder_deleted_afterwards(graded):
    assert message(graded, "solution.ipynb", "profile_check") == "passed"
    assert graded["leftover"] == set()


def test_released_lab_gets_zero(graded):
    assert points(graded, "lab.ipynb")[1:] == [0, 0, 0]
    assert "NotImplementedError: ⟪Write your solution here" in message(graded, "lab.ipynb", "add_check")


def test_plausible_wrong_answer_loses_points_on_the_hidden_test(graded):
    assert points(graded, "wrong.ipynb") == [0, 2, 2, 0]
    assert message(graded, "wrong.ipynb", "neg_check") == "AssertionError: neg(-3) should be 3"


def test_top_level_errors_do_not_stop_later_exercises(graded):
    assert points(graded, "early.ipynb") == [0, 0, 2, 2]
    assert message(graded, "early.ipynb", "add_check") == (
        "NameError: ⟪name 'add' is not defined⟫ [probably a knock-on error: cell 4 (⟪ZeroDivisionError⟫), "
        "cell 5 (⟪RuntimeError⟫) failed earlier and did not define everything; fix that first]")


def test_hanging_submission_times_out_and_the_next_one_is_graded(graded):
    assert points(graded, "hang.ipynb") == [0, 2, 0, 0]
    assert message(graded, "hang.ipynb", "mul_check") == f"timed out after {TIMEOUT} s in this check (cell 7)"
    assert message(graded, "hang.ipynb", "neg_check") == \
        f"not run: the notebook stopped in cell 7 (timed out after {TIMEOUT} s)"
    names = [os.path.basename(r.submission) for r in graded["results"]]
    assert names.index("solution.ipynb") > names.index("hang.ipynb")  # graded after it, with full marks


def test_dead_kernel_is_reported_and_grading_goes_on(graded):
    assert points(graded, "exit.ipynb") == [0, 0, 0, 0]
    died = "the kernel died (exit code 1; it died again when graded a second time)"
    assert message(graded, "exit.ipynb", "add_check") == f"{died} in this check (cell 5)"
    assert message(graded, "exit.ipynb", "neg_check") == f"not run: the notebook stopped in cell 5 ({died})"
    assert message(graded, "exit.ipynb", "profile_check") == "passed"


def test_edited_check_is_replaced_and_deleted_check_scores_zero(graded):
    assert points(graded, "edited.ipynb") == [0, 2, 0, 0]
    assert message(graded, "edited.ipynb", "neg_check") == "AssertionError: neg(2) should be -2"
    assert message(graded, "edited.ipynb", "mul_check") == "check cell mul_check missing from the submission"


@pytest.mark.parametrize("name", ["broken.ipynb", "notebook_like.ipynb", "missing.ipynb"])
def test_unreadable_submissions_get_zero_rows(graded, name):
    assert points(graded, name) == [0, 0, 0, 0]
    assert all(message(graded, name, e).startswith("could not read the submission") for e in EXERCISES)


def test_submissions_are_never_modified(graded):
    assert graded["after"] == graded["before"]
    assert len(graded["before"]) == len(graded["paths"]) - 1  # all but the missing one


def test_csv_has_one_row_per_submission_and_exercise(graded):
    with open(graded["root"] / "out" / "grades.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == ["submission", "exercise", "points", "max_points", "message", "student", "lab", "flags"]
    assert len(rows) == len(graded["paths"]) * len(EXERCISES)
    by_key = {(os.path.basename(r["submission"]), r["exercise"]): r for r in rows}
    assert float(by_key["wrong.ipynb", "neg_check"]["points"]) == 0
    assert float(by_key["wrong.ipynb", "neg_check"]["max_points"]) == 2
    assert float(by_key["solution.ipynb", "add_check"]["points"]) == 2


def test_graded_copy_uses_the_solution_checks_with_hidden_tests():
    sol = solution_notebook()
    lab = release_notebook(sol)
    copy, where = grading.graded_copy(lab, grading.check_cells(sol))
    assert where == {"profile_check": [2], "add_check": [4], "mul_check": [6], "neg_check": [8]}
    assert "### BEGIN HIDDEN TESTS" in copy.cells[4].source and "HIDDEN" not in lab.cells[4].source
    assert nbgrader_meta(copy.cells[3])["grade_id"] == "add_impl" and "NotImplementedError" in copy.cells[3].source


def test_find_solution(tmp_path):
    for name in ("01_attention", "02_bert", "02_bert_extra"):
        nbformat.write(solution_notebook(), tmp_path / f"{name}.ipynb")
    assert grading.find_solution("01", tmp_path).name == "01_attention.ipynb"
    assert grading.find_solution("1", tmp_path).name == "01_attention.ipynb"
    with pytest.raises(ValueError, match="no notebook"):
        grading.find_solution("03", tmp_path)
    with pytest.raises(ValueError, match="2 notebooks"):
        grading.find_solution("02", tmp_path)


def test_bad_arguments_are_rejected(tmp_path):
    nbformat.write(solution_notebook(), tmp_path / "99_demo.ipynb")
    with pytest.raises(ValueError, match="timeout"):
        grading.grade(tmp_path / "99_demo.ipynb", [], tmp_path / "g.csv", timeout=0)
    with pytest.raises(ValueError, match="profile"):
        grading.grade(tmp_path / "99_demo.ipynb", [], tmp_path / "g.csv", profile="tpu")
    nbformat.write(new_notebook(cells=[new_code_cell("x = 1")]), tmp_path / "98_none.ipynb")
    with pytest.raises(ValueError, match="no check cells"):
        grading.grade(tmp_path / "98_none.ipynb", [], tmp_path / "g.csv")


def test_main_writes_the_gradebook_and_says_when_nothing_could_be_read(tmp_path, capsys):
    (tmp_path / "solutions").mkdir()
    nbformat.write(solution_notebook(), tmp_path / "solutions" / "99_demo.ipynb")
    (tmp_path / "subs").mkdir()
    (tmp_path / "subs" / "alice.ipynb").write_text("not a notebook")  # no kernel needed for this one
    args = argparse.Namespace(lab="99", out=str(tmp_path / "g.csv"), solutions=str(tmp_path / "solutions"),
                              timeout=TIMEOUT, profile="ci", submissions=[str(tmp_path / "subs")], jobs=1,
                              shard=None, fresh=False)
    assert grading.main(args) == 1
    captured = capsys.readouterr()
    assert "alice: 0 / 6  unreadable" in captured.out and "no submission could be read" in captured.err
    assert len((tmp_path / "g.csv").read_text().splitlines()) == 1 + len(EXERCISES)
    args.lab = "42"
    assert grading.main(args) == 2


PARALLEL = ("solution.ipynb", "hang.ipynb", "exit.ipynb", "wrong.ipynb")


def test_two_jobs_grade_exactly_as_one_in_sandboxed_kernels(graded, tmp_path, monkeypatch):
    """--jobs 2: each kernel keeps its sandbox, limits and timeout; rows equal the one-at-a-time run's."""
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(private_tmp))  # the grading processes' temporary folders
    paths = [p for p in graded["paths"] if p.name in PARALLEL]
    results = grading.grade(graded["root"] / "99_demo.ipynb", paths, tmp_path / "out" / "g.csv", TIMEOUT, "cpu", jobs=2)
    got = {(os.path.basename(r.submission), r.exercise): (r.points, r.message) for r in results}
    want = {k: (r.points, r.message) for k, r in graded["rows"].items() if k[0] in PARALLEL}
    assert got == want
    assert list(private_tmp.glob("course-grade-*")) == []


def test_a_kernel_killed_from_outside_is_graded_again_in_a_fresh_kernel(tmp_path, capfd):
    """A kernel that dies of something other than the submission and its limits (here: killed once from
    outside, as a machine may) costs no points: the submission is graded again, with the same hidden inputs."""
    marker = f"started-{tmp_path.name}"  # written by this test's kernel into its folder, and by no other
    sol = solution_notebook()
    sol.cells.insert(1, new_code_cell(f"import time\nopen({marker!r}, 'w').close()\ntime.sleep(3)"))
    nbformat.write(sol, tmp_path / "99_demo.ipynb")
    (tmp_path / "submitted").mkdir()
    nbformat.write(sol, tmp_path / "submitted" / "solution.ipynb")
    killed = []

    def kill_the_first_kernel():
        for _ in range(600):
            for started in Path(tempfile.gettempdir()).glob(f"course-grade-*/{marker}"):
                for proc in Path("/proc").glob("[0-9]*"):
                    try:
                        cmdline = (proc / "cmdline").read_bytes().decode()
                    except OSError:
                        continue
                    if "ipykernel" in cmdline and str(started.parent) in cmdline:
                        os.kill(int(proc.name), signal.SIGKILL)
                        killed.append(proc.name)
                        return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_first_kernel, daemon=True)
    killer.start()
    results = grading.grade(tmp_path / "99_demo.ipynb", [tmp_path / "submitted" / "solution.ipynb"],
                            tmp_path / "out" / "grades.csv", TIMEOUT, "cpu")
    killer.join(timeout=1)
    assert killed, "the test never found the kernel to kill"
    assert [r.points for r in results] == [0, 2, 2, 2], [r.message for r in results]
    assert "the kernel died (killed by signal 9); grading it again in a fresh kernel" in capfd.readouterr().err
