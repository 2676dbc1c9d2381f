"""`course grade`: grade lab submissions into a gradebook CSV.

Each submission is read (never written), and an in-memory copy gets the solution's version of every
check cell (nbgrader ``grade: true``, hidden tests included), matched by ``grade_id``. The copy runs
in a fresh kernel in a temporary folder with a per-cell timeout; a check cell earns its points
when it runs without an error. A broken, crashing or hanging submission gets zeros with a message
and never stops the others. Manually graded cells (``grade`` and ``solution`` both true) are skipped.
"""
from __future__ import annotations

import argparse
import copy
import csv
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import nbformat
from tqdm.auto import tqdm

from .notebooks import nbgrader_meta, read_notebook, strip_outputs
from ..settings import PROFILES
from .runner import error_line, execute


@dataclass
class ExerciseResult:
    """One gradebook row: a submission's points for one check cell (exercise)."""

    submission: str
    exercise: str
    points: float
    max_points: float
    message: str


def check_cells(solution: nbformat.NotebookNode) -> dict[str, nbformat.NotebookNode]:
    """The solution's auto-graded check cells by grade_id, in notebook order."""
    checks = {}
    for cell in solution.cells:
        meta = nbgrader_meta(cell)
        if cell.cell_type == "code" and meta.get("grade") and not meta.get("solution") and meta.get("grade_id"):
            checks[meta["grade_id"]] = cell
    return checks


def graded_copy(submission: nbformat.NotebookNode, checks: dict) -> tuple[nbformat.NotebookNode, dict[str, list[int]]]:
    """Copy of ``submission`` with the solution's check cells swapped in; also where each check sits."""
    nb, where = copy.deepcopy(submission), {}
    for index, cell in enumerate(nb.cells):
        grade_id = nbgrader_meta(cell).get("grade_id")
        if grade_id in checks:
            nb.cells[index] = copy.deepcopy(checks[grade_id])
            where.setdefault(grade_id, []).append(index)
    return strip_outputs(nb), where


def _score(nb, indices: list[int], stop: int | None, reason: str | None) -> tuple[bool, str]:
    """(passed, message) for a check found at ``indices`` after a run that stopped at ``stop``."""
    for index in indices:
        if reason is not None and (stop is None or index > stop):
            where = f" in cell {stop + 1}" if stop is not None else ""
            return False, f"not run: the notebook stopped{where} ({reason})"
        if index == stop:
            return False, f"{reason} in this check (cell {index + 1})"
        errors = [o for o in nb.cells[index].outputs if o.output_type == "error"]
        if errors:
            return False, error_line(errors[-1].ename, errors[-1].evalue)
    return True, "passed"


def _check_args(timeout: float, profile: str) -> None:
    if not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds per cell, got {timeout!r}")
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")


def grade_submission(submission_path: str | Path, solution_path: str | Path, timeout: float = 120,
                     profile: str = "ci") -> list[ExerciseResult]:
    """Grade one submission against its solution notebook; one result per check cell."""
    _check_args(timeout, profile)
    checks = check_cells(read_notebook(solution_path))
    if not checks:
        raise ValueError(f"{solution_path} has no check cells (code cells with nbgrader grade: true)")
    name = str(submission_path)

    def row(grade_id: str, passed: bool, message: str) -> ExerciseResult:
        max_points = float(nbgrader_meta(checks[grade_id]).get("points", 0))
        return ExerciseResult(name, grade_id, max_points if passed else 0.0, max_points, message)

    try:
        submission = read_notebook(submission_path)
        graded, where = graded_copy(submission, checks)
    except Exception as exc:  # unreadable, not JSON, not a notebook: zeros, never a crash
        return [row(g, False, error_line("could not read the submission", str(exc))) for g in checks]
    with tempfile.TemporaryDirectory(prefix="course-grade-", ignore_cleanup_errors=True) as tmp:
        stop, reason = execute(graded, cwd=tmp, timeout=timeout, profile=profile, allow_errors=True, quiet=True)
    results = []
    for grade_id in checks:
        if grade_id not in where:
            results.append(row(grade_id, False, f"check cell {grade_id} missing from the submission"))
        else:
            results.append(row(grade_id, *_score(graded, where[grade_id], stop, reason)))
    return results


def write_csv(results: list[ExerciseResult], out_csv: str | Path) -> None:
    """Write the gradebook: columns submission, exercise, points, max_points, message."""
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with out_csv.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=[field.name for field in fields(ExerciseResult)])
        writer.writeheader()
        writer.writerows(asdict(r) for r in results)


def summary(results: list[ExerciseResult]) -> str:
    """A table of each submission's total and maximum points."""
    totals: dict[str, list[float]] = {}
    for r in results:
        total = totals.setdefault(r.submission, [0.0, 0.0])
        total[0] += r.points
        total[1] += r.max_points
    width = max([len("submission")] + [len(s) for s in totals])
    lines = [f"{'submission':<{width}}  points"]
    lines += [f"{s:<{width}}  {p:g} / {m:g}" for s, (p, m) in totals.items()]
    return "\n".join(lines)


def grade(solution_path: str | Path, submissions: list, out_csv: str | Path, timeout: float = 120,
          profile: str = "ci") -> list[ExerciseResult]:
    """Grade every submission, write the CSV gradebook, print a summary and return all rows."""
    _check_args(timeout, profile)
    checks = check_cells(read_notebook(solution_path))
    if not checks:
        raise ValueError(f"{solution_path} has no check cells (code cells with nbgrader grade: true)")
    results: list[ExerciseResult] = []
    for submission in tqdm(list(submissions), desc="grading", unit="submission"):
        try:
            results += grade_submission(submission, solution_path, timeout, profile)
        except Exception as exc:  # belt and braces: one submission never stops the others
            message = f"grading failed: {error_line(type(exc).__name__, str(exc))}"
            results += [ExerciseResult(str(submission), g, 0.0, float(nbgrader_meta(c).get("points", 0)), message)
                        for g, c in checks.items()]
    write_csv(results, out_csv)
    print(summary(results))
    return results


def find_solution(lab: str, solutions_dir: str | Path = "solutions") -> Path:
    """The solution notebook of lab ``lab`` ('01', '1' or '01_attention') in ``solutions_dir``."""
    lab = f"{int(lab):02d}" if str(lab).isdigit() else str(lab)
    found = [p for p in sorted(Path(solutions_dir).glob("*.ipynb")) if p.stem == lab or p.stem.startswith(lab + "_")]
    if len(found) != 1:
        problem = "no notebook" if not found else f"{len(found)} notebooks ({', '.join(p.name for p in found)})"
        raise ValueError(f"--lab {lab}: {problem} named {lab}_*.ipynb in {solutions_dir}/; "
                         "pass the lab's number or full name, or --solutions FOLDER")
    return found[0]


def expand(paths: list[str]) -> list[Path]:
    """Submission paths, with each folder replaced by the notebooks inside it."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.rglob("*.ipynb") if ".ipynb_checkpoints" not in q.parts)
        else:
            out.append(p)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `course grade`."""
    parser.add_argument("submissions", nargs="+", metavar="SUBMISSION",
                        help="submitted notebooks, or folders of them")
    parser.add_argument("--lab", required=True, help="lab number or name, e.g. 01 (finds solutions/01_*.ipynb)")
    parser.add_argument("--out", required=True, help="gradebook CSV to write, e.g. grades.csv")
    parser.add_argument("--solutions", default="solutions", help="folder of solution notebooks (default: solutions)")
    parser.add_argument("--timeout", type=int, default=120, help="seconds allowed per cell (default: 120)")
    parser.add_argument("--profile", choices=PROFILES, default="ci",
                        help="COURSE_PROFILE for the kernels (default: ci)")


def main(args: argparse.Namespace) -> int:
    """Run `course grade`; returns 0 when grading ran, whatever the scores."""
    try:
        solution = find_solution(args.lab, args.solutions)
        grade(solution, expand(args.submissions), args.out, args.timeout, args.profile)
    except ValueError as exc:
        print(f"course grade: {exc}")
        return 2
    print(f"gradebook written to {args.out}")
    return 0
