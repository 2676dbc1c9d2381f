"""The gradebook files of `course grade`, and `course merge` for gradebooks graded in shards.

``--out grades.csv`` is the long gradebook: one row per submission and exercise, appended as each
submission finishes, so a run that stops can be resumed by running the same command again. From it
come, beside it: ``grades.students.csv`` (one row per student: a column per exercise, total, maximum,
flags), ``grades.canvas.csv`` and ``grades.moodle.csv`` (the lab's total in each LMS's import format)
and ``grades-feedback/<student>.html`` (see ``feedback.py``).

Student id (documented in docs/grading.md): the submission's file name without ``.ipynb``; when that
is the lab's own name (``01_attention.ipynb``, one folder per student), the name of its folder.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from .notebooks import nbgrader_meta, read_notebook

FIELDS = ["submission", "exercise", "points", "max_points", "message", "student", "lab", "flags"]
UNREADABLE, NOT_ATTEMPTED = "unreadable", "not attempted"
UNREADABLE_MESSAGE = "could not read the submission"


def student_id(path: str | Path, lab: str) -> str:
    """The student's id: the file name without .ipynb, or its folder's name when the file has the lab's name."""
    path = Path(path)
    return path.parent.resolve().name if path.stem == lab else path.stem


def student_ids(paths: list, lab: str) -> dict[str, str]:
    """{submission path: student id}; two submissions of one student is an error saying which."""
    ids, seen = {}, {}
    for path in paths:
        sid = student_id(path, lab)
        if sid in seen:
            raise ValueError(f"two submissions have the student id {sid!r}: {seen[sid]} and {path} "
                             "(the id is the file name, or the folder name for files named like the lab); "
                             "rename one or grade them separately")
        seen[sid] = ids[str(path)] = sid
    return ids


def check_out(out: str | Path) -> Path:
    """``out`` as a Path once it is known that a CSV can be written there (before any grading)."""
    out = Path(out)
    if out.suffix != ".csv":
        raise ValueError(f"--out {out}: give a file name ending in .csv, e.g. grades.csv")
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give a file name ending in .csv")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise ValueError(f"--out {out}: cannot write there ({exc.strerror or exc}); choose another path") from None
    return out


def lab_sources(solution) -> dict[str, str]:
    """{grade_id: source} of the student's answer cells as the released lab has them."""
    from .release import release_notebook

    lab = release_notebook(solution)
    return {nbgrader_meta(c)["grade_id"]: c.source for c in lab.cells
            if nbgrader_meta(c).get("solution") and nbgrader_meta(c).get("grade_id")}


def flags(submission: str | Path, messages: list[str], untouched: dict[str, str]) -> str:
    """'unreadable', 'not attempted' (every answer cell as released) or ''."""
    if any(m.startswith(UNREADABLE_MESSAGE) for m in messages):
        return UNREADABLE
    try:
        cells = read_notebook(submission).cells
    except Exception:
        return UNREADABLE
    answers = {nbgrader_meta(c).get("grade_id"): c.source for c in cells}
    return NOT_ATTEMPTED if all(answers.get(g, s) == s for g, s in untouched.items()) else ""


def read_rows(path: str | Path) -> list[dict]:
    """The rows of a long gradebook, checked to have this version's columns."""
    with Path(path).open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != FIELDS:
            raise ValueError(f"{path} is not a gradebook of this version of `course grade` (columns "
                             f"{reader.fieldnames}, expected {FIELDS}); move it away or pass --fresh")
        return list(reader)


def write_rows(rows: list[dict], out: Path) -> None:
    """Write a long gradebook whole: to a temporary file first, then renamed, so a crash never leaves half of it."""
    partial = out.with_name(out.name + ".partial")
    with partial.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    partial.replace(out)


class Gradebook:
    """The long gradebook CSV: rows of earlier runs kept, new ones appended and flushed per submission."""

    def __init__(self, out: Path, lab: str, exercises: list[str], fresh: bool = False):
        self.out, self.lab, self.exercises = out, lab, exercises
        rows = [] if fresh or out.stat().st_size == 0 else read_rows(out)
        labs = {r["lab"] for r in rows} - {lab}
        if labs:
            raise ValueError(f"{out} holds grades of lab {labs.pop()}, not {lab}; choose another --out")
        per_submission: dict[str, list[dict]] = {}
        for r in rows:
            per_submission.setdefault(r["submission"], []).append(r)
        # A submission whose rows are incomplete (a run killed while writing) is graded again.
        self.rows = [r for rs in per_submission.values() if [x["exercise"] for x in rs] == exercises for r in rs]
        self.done = {r["submission"] for r in self.rows}
        self.students = {r["student"]: r["submission"] for r in self.rows}
        write_rows(self.rows, out)

    def add(self, results: list, student: str, flag: str) -> None:
        """Append one submission's rows (ExerciseResult objects) and flush them to disk."""
        new = [{"submission": r.submission, "exercise": r.exercise, "points": r.points, "max_points": r.max_points,
                "message": r.message, "student": student, "lab": self.lab, "flags": flag} for r in results]
        with self.out.open("a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=FIELDS).writerows(new)
        self.rows += [{k: str(v) for k, v in row.items()} for row in new]


def by_student(rows: list[dict]) -> tuple[list[str], list[dict]]:
    """(exercises in order, one dict per student: student, submission, each exercise, total, max, flags)."""
    exercises = list(dict.fromkeys(r["exercise"] for r in rows))
    students: dict[str, dict] = {}
    for r in rows:
        s = students.setdefault(r["student"], {"student": r["student"], "submission": r["submission"],
                                               "total": 0.0, "max": 0.0, "flags": r["flags"]})
        s[r["exercise"]] = float(r["points"])
        s["total"] += float(r["points"])
        s["max"] += float(r["max_points"])
    return exercises, sorted(students.values(), key=lambda s: s["student"])


def _write(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_sheets(rows: list[dict], out: Path) -> list[Path]:
    """Write the per-student sheet and the Canvas and Moodle imports beside ``out``; returns their paths."""
    if not rows:
        return []
    lab = rows[0]["lab"]
    exercises, students = by_student(rows)
    stem = out.with_suffix("")
    sheet = _write(Path(f"{stem}.students.csv"), ["student", "submission", *exercises, "total", "max", "flags"],
                   [[s["student"], s["submission"], *(f"{s[e]:g}" for e in exercises), f"{s['total']:g}",
                     f"{s['max']:g}", s["flags"]] for s in students])
    # Canvas' gradebook import: Student, ID, SIS User ID, SIS Login ID, Section, then one column per assignment
    # (a new column name creates the assignment); rows are matched on SIS Login ID here.
    canvas = _write(Path(f"{stem}.canvas.csv"), ["Student", "ID", "SIS User ID", "SIS Login ID", "Section", lab],
                    [[s["student"], "", "", s["student"], "", f"{s['total']:g}"] for s in students])
    # Moodle's CSV grade import: any columns; on import map "Username" to the user field and the lab's column
    # to its grade item (and "Feedback" to its feedback).
    moodle = _write(Path(f"{stem}.moodle.csv"), ["Username", lab, "Feedback"],
                    [[s["student"], f"{s['total']:g}", f"{s['total']:g} / {s['max']:g}"
                      + (f" ({s['flags']})" if s["flags"] else "")] for s in students])
    return [sheet, canvas, moodle]


def merge(shards: list, out: str | Path) -> list[dict]:
    """Merge the long gradebooks of `course grade --shard i/N` runs into ``out`` (plus sheets); returns the rows."""
    out = check_out(out)
    if not shards:
        raise ValueError("give the shard gradebooks to merge, e.g. grades-1of4.csv grades-2of4.csv ...")
    rows, origin = [], {}
    for shard in map(Path, shards):
        if not shard.is_file():
            raise ValueError(f"{shard}: no such gradebook")
        if shard.resolve() == out.resolve():
            raise ValueError(f"{shard} is also --out; write the merged gradebook to a new file")
        for r in read_rows(shard):
            if r["student"] in origin and origin[r["student"]][0] != shard:
                raise ValueError(f"student {r['student']!r} is in both {origin[r['student']][0]} and {shard}; "
                                 "shards must not overlap (grade each with the same submissions and --shard i/N)")
            origin[r["student"]] = (shard, r)
            rows.append(r)
    if len({r["lab"] for r in rows}) > 1:
        raise ValueError(f"the shards hold different labs: {sorted({r['lab'] for r in rows})}")
    exercises = list(dict.fromkeys(r["exercise"] for r in rows))
    for student in {r["student"] for r in rows}:
        got = [r["exercise"] for r in rows if r["student"] == student]
        if got != exercises:
            raise ValueError(f"student {student!r} has exercises {got}, expected {exercises}")
    write_rows(rows, out)
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `course merge`."""
    parser.add_argument("shards", nargs="+", metavar="SHARD_CSV",
                        help="the --out gradebooks of `course grade --shard 1/N` ... `--shard N/N`")
    parser.add_argument("--out", required=True, help="merged gradebook CSV to write, e.g. grades.csv")


def main(args: argparse.Namespace) -> int:
    """Run `course merge`: the merged gradebook, its sheets and the feedback pages."""
    from .feedback import write_feedback

    try:
        rows = merge(args.shards, args.out)
    except ValueError as exc:
        print(f"course merge: {exc}", file=sys.stderr)
        return 2
    written = [Path(args.out), *write_sheets(rows, Path(args.out)), write_feedback(rows, Path(args.out))]
    print(f"merged {len({r['student'] for r in rows})} students from {len(args.shards)} gradebooks; wrote "
          + ", ".join(map(str, written)))
    return 0
