"""The gradebook files of `course grade` (row by row, resume, per student, Canvas/Moodle, shards and their
merge) and its loud mistakes. The kernel is replaced by a fake grader here (test_grading.py runs real ones),
so these tests check the bookkeeping alone, in a second.
"""
import argparse
import csv
import os

import nbformat
import pytest
from test_grading import EXERCISES, solution_notebook

from course_utils.instructor import gradebook, grading
from course_utils.instructor.release import release_notebook, replace_solution

POINTS = {"profile_check": 0.0, "add_check": 2.0, "mul_check": 2.0, "neg_check": 2.0}
# What the fake grader gives each student: the exercises they pass.
PASSES = {"alice": {"add_check", "mul_check", "neg_check"}, "bob": {"add_check"}, "carol": set(),
          "dave": {"mul_check"}, "erin": {"add_check", "neg_check"}}


@pytest.fixture
def course(tmp_path, monkeypatch):
    """A solution, submissions of PASSES's students (carol's is the untouched lab) and a fake grader."""
    sol = solution_notebook()
    nbformat.write(sol, tmp_path / "99_demo.ipynb")
    subs = tmp_path / "subs"
    subs.mkdir()
    for name in PASSES:
        nb = release_notebook(sol) if name == "carol" else replace_solution(sol, "add_impl", "return a + b + 0")
        nbformat.write(nb, subs / f"{name}.ipynb")
    calls = []

    def fake(submission, solution_path, timeout, profile, hide, run_cache=None):
        calls.append(os.path.basename(submission))
        student = os.path.basename(submission)[:-len(".ipynb")]
        if student not in PASSES:
            return [grading.ExerciseResult(submission, e, 0.0, POINTS[e], "could not read the submission: bad")
                    for e in EXERCISES]
        return [grading.ExerciseResult(submission, e, POINTS[e] if e in PASSES[student] or e == "profile_check"
                                       else 0.0, POINTS[e], "passed" if e in PASSES[student] else "AssertionError")
                for e in EXERCISES]

    monkeypatch.setattr(grading, "grade_submission", fake)
    return {"root": tmp_path, "solution": tmp_path / "99_demo.ipynb", "subs": subs, "calls": calls,
            "paths": sorted(subs.glob("*.ipynb"))}


def read(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def args(course, *submissions, **extra):
    namespace = argparse.Namespace(lab="99", solutions=str(course["root"]), timeout=5, profile="ci", jobs=1,
                                   shard=None, fresh=False, out=str(course["root"] / "out" / "grades.csv"),
                                   submissions=[str(s) for s in submissions] or [str(course["subs"])])
    for key, value in extra.items():
        setattr(namespace, key, str(value) if key == "out" else value)
    return namespace


def test_student_id_rule(tmp_path):
    assert gradebook.student_id(tmp_path / "alice.ipynb", "01_attention") == "alice"
    assert gradebook.student_id(tmp_path / "bob" / "01_attention.ipynb", "01_attention") == "bob"
    with pytest.raises(ValueError, match="two submissions have the student id 'bob'"):
        gradebook.student_ids([tmp_path / "bob.ipynb", tmp_path / "bob" / "01_attention.ipynb"], "01_attention")


def test_per_student_sheet_flags_and_lms_exports(course):
    (course["subs"] / "zed.ipynb").write_text("{ not json")
    grading.grade(course["solution"], [*course["paths"], course["subs"] / "zed.ipynb"], course["root"] / "g.csv")
    sheet = {r["student"]: r for r in read(course["root"] / "g.students.csv")}
    assert list(read(course["root"] / "g.students.csv")[0]) == \
        ["student", "submission", *EXERCISES, "total", "max", "flags"]
    assert [sheet["alice"][e] for e in EXERCISES] == ["0", "2", "2", "2"]
    assert (sheet["alice"]["total"], sheet["alice"]["max"], sheet["alice"]["flags"]) == ("6", "6", "")
    assert (sheet["bob"]["total"], sheet["carol"]["flags"], sheet["zed"]["flags"]) == ("2", "not attempted",
                                                                                      "unreadable")
    canvas = read(course["root"] / "g.canvas.csv")
    assert list(canvas[0]) == ["Student", "ID", "SIS User ID", "SIS Login ID", "Section", "99_demo"]
    assert {r["SIS Login ID"]: r["99_demo"] for r in canvas}["erin"] == "4"
    moodle = {r["Username"]: r for r in read(course["root"] / "g.moodle.csv")}
    assert moodle["dave"]["99_demo"] == "2" and moodle["zed"]["Feedback"] == "0 / 6 (unreadable)"


def test_rows_are_written_as_each_submission_finishes_and_a_rerun_resumes(course, monkeypatch):
    out = course["root"] / "g.csv"
    seen = []
    fake = grading.grade_submission

    def spy(submission, *rest):
        seen.append(len(read(out)))  # rows on disk before this submission is graded
        return fake(submission, *rest)

    monkeypatch.setattr(grading, "grade_submission", spy)
    grading.grade(course["solution"], course["paths"][:3], out)
    assert seen == [0, 4, 8]
    rows = read(out)
    with out.open("w", newline="") as f:  # a run killed in the middle of bob's rows
        writer = csv.DictWriter(f, fieldnames=gradebook.FIELDS)
        writer.writeheader()
        writer.writerows(rows[:6])
    course["calls"].clear()
    grading.grade(course["solution"], course["paths"], out)
    assert course["calls"] == ["bob.ipynb", "carol.ipynb", "dave.ipynb", "erin.ipynb"]  # alice kept, bob redone
    assert len(read(out)) == 4 * len(PASSES) and len({r["student"] for r in read(out)}) == len(PASSES)
    course["calls"].clear()
    grading.grade(course["solution"], course["paths"], out, fresh=True)
    assert len(course["calls"]) == len(PASSES)


def test_out_is_checked_before_anything_is_graded(course, capsys):
    blocker = course["root"] / "file"
    blocker.write_text("")
    for out, says in [(blocker / "g.csv", "cannot write there"), (course["root"], "give a file name ending in .csv"),
                      (course["root"] / "g.txt", "ending in .csv")]:
        assert grading.main(args(course, out=out)) == 2
        assert says in capsys.readouterr().err
    assert course["calls"] == []


def test_a_student_graded_from_another_file_is_not_graded_twice(course, tmp_path):
    out = course["root"] / "g.csv"
    grading.grade(course["solution"], course["paths"][:1], out)
    moved = tmp_path / "elsewhere" / "alice.ipynb"
    moved.parent.mkdir()
    moved.write_bytes(course["paths"][0].read_bytes())
    with pytest.raises(ValueError, match="already grades student 'alice' from"):
        grading.grade(course["solution"], [moved], out)


def test_other_labs_gradebook_is_not_resumed(course, capsys):
    out = course["root"] / "g.csv"
    grading.grade(course["solution"], course["paths"][:1], out)
    out.write_text(out.read_text().replace("99_demo", "98_other"))
    with pytest.raises(ValueError, match="holds grades of lab 98_other"):
        grading.grade(course["solution"], course["paths"], out)


@pytest.mark.parametrize("make, says", [
    (lambda root: root / "nope", "no such file or folder"),
    (lambda root: (root / "notes.txt").write_text("hi") and root / "notes.txt", "is not a notebook"),
    (lambda root: (root / "empty").mkdir() or root / "empty", "holds no notebooks"),
])
def test_bad_paths_fail_loudly_before_grading(course, capsys, make, says):
    code = grading.main(args(course, course["paths"][0], make(course["root"])))
    err = capsys.readouterr().err
    assert code == 2 and says in err and err.startswith("course grade: ")
    assert course["calls"] == [] and not (course["root"] / "out" / "grades.csv").exists()


def test_a_broken_notebook_among_good_ones_gets_zeros_and_a_visible_line(course, capsys):
    (course["subs"] / "zed.ipynb").write_text("{ not json")
    assert grading.main(args(course)) == 0
    captured = capsys.readouterr()
    assert "zed.ipynb: could not read the submission" in captured.err
    assert "zed: 0 / 6  unreadable" in captured.out and "alice: 6 / 6" in captured.out
    zed = [r for r in read(course["root"] / "out" / "grades.csv") if r["student"] == "zed"]
    assert [float(r["points"]) for r in zed] == [0, 0, 0, 0]


def test_nothing_readable_exits_non_zero(course, capsys):
    (course["root"] / "bad").mkdir()
    (course["root"] / "bad" / "zed.ipynb").write_text("{ not json")
    assert grading.main(args(course, course["root"] / "bad")) == 1
    assert "no submission could be read" in capsys.readouterr().err


def test_shards_partition_the_class_and_merge_exactly(course, capsys):
    whole = course["root"] / "whole.csv"
    grading.grade(course["solution"], course["paths"], whole)
    for i in (1, 2, 3):  # as a batch job array runs them
        assert grading.main(args(course, shard=f"{i}/3", out=course["root"] / "shards" / f"{i}.csv")) == 0
    assert "merge them: course merge --out" in capsys.readouterr().out
    shards = sorted((course["root"] / "shards").glob("*.csv"))
    assert [s.name for s in shards] == ["1.csv", "2.csv", "3.csv"], "a shard writes only its gradebook"
    assert sorted(p for i in (1, 2, 3) for p in grading.shard(course["paths"], f"{i}/3")) == course["paths"]
    merged = course["root"] / "merged.csv"
    assert gradebook.main(argparse.Namespace(shards=[str(s) for s in shards], out=str(merged))) == 0
    assert "merged 5 students from 3 gradebooks" in capsys.readouterr().out
    key = lambda r: (r["student"], r["exercise"])
    assert sorted(read(merged), key=key) == sorted(read(whole), key=key)
    assert read(course["root"] / "merged.students.csv") == read(course["root"] / "whole.students.csv")
    assert read(course["root"] / "merged.canvas.csv") == read(course["root"] / "whole.canvas.csv")
    assert sorted(os.listdir(course["root"] / "merged-feedback")) == sorted(os.listdir(course["root"] / "whole-feedback"))


def test_merge_refuses_overlapping_or_mixed_shards(course, capsys):
    a, b = course["root"] / "a.csv", course["root"] / "b.csv"
    grading.grade(course["solution"], course["paths"][:2], a)
    grading.grade(course["solution"], course["paths"][1:3], b)
    assert gradebook.main(argparse.Namespace(shards=[str(a), str(b)], out=str(course["root"] / "m.csv"))) == 2
    assert "student 'bob' is in both" in capsys.readouterr().err
    b.write_text("submission,points\n")
    with pytest.raises(ValueError, match="is not a gradebook of this version"):
        gradebook.merge([a, b], course["root"] / "m.csv")
    with pytest.raises(ValueError, match="no such gradebook"):
        gradebook.merge([a, course["root"] / "nope.csv"], course["root"] / "m.csv")


@pytest.mark.parametrize("spec", ["0/3", "4/3", "1", "a/b", "2/0"])
def test_bad_shard_spec(spec):
    with pytest.raises(ValueError, match="--shard"):
        grading.shard([1, 2, 3], spec)


def test_one_run_cache_is_shared_by_the_runs_submissions_and_deleted_after(course, monkeypatch):
    fake, caches = grading.grade_submission, []

    def spy(submission, *rest):
        cache = rest[-1]
        caches.append(cache)
        assert os.path.isdir(cache.folder) and oct(os.stat(cache.folder).st_mode & 0o777) == "0o700"
        return fake(submission, *rest)

    monkeypatch.setattr(grading, "grade_submission", spy)
    grading.grade(course["solution"], course["paths"][:3], course["root"] / "g.csv")
    assert len(caches) == 3 and len(set(caches)) == 1  # one folder and one secret for the whole run
    assert not os.path.exists(caches[0].folder)
    grading.grade(course["solution"], course["paths"][:1], course["root"] / "h.csv")
    assert caches[-1] != caches[0]  # each run draws its own
