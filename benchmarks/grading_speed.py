"""Seconds per submission of `course grade` with 1 and with 2 jobs, per lab, and what they project.

For each lab the class is ``--solutions`` copies of the solution notebook (they run every cell) and
one untouched released lab; it is graded once with ``jobs=1`` and once with ``jobs=2`` (``--repeats``
times each, the median kept), every kernel with OMP_NUM_THREADS=1. Printed: the median seconds per
submission graded one at a time, the wall time per submission of each run, the speed-up, and the
peak memory of the grading process and of the largest kernel (resident set, from getrusage).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/grading_speed.py                 # all labs, ~15 min on 2 cores
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/grading_speed.py --labs 01 06 --repeats 3
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import nbformat

from course_utils.instructor import grading
from course_utils.instructor.notebooks import read_notebook
from course_utils.instructor.release import release_notebook


def make_class(solution: Path, folder: Path, copies: int) -> list[Path]:
    """``copies`` solutions and one untouched lab, written to ``folder``."""
    nb = read_notebook(solution)
    paths = []
    for i in range(copies):
        nbformat.write(nb, folder / f"student{i + 1}.ipynb")
        paths.append(folder / f"student{i + 1}.ipynb")
    nbformat.write(release_notebook(nb), folder / "untouched.ipynb")
    return paths + [folder / "untouched.ipynb"]


def timed(solution: Path, paths: list[Path], jobs: int, out: Path) -> tuple[float, list[float]]:
    """(wall seconds, each submission's own seconds) of one grading run."""
    printed = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(printed):
        grading.grade(solution, paths, out, timeout=600, profile="ci", jobs=jobs, fresh=True)
    wall = time.perf_counter() - start
    return wall, [float(s) for s in re.findall(r"\((\d+\.\d) s\)", printed.getvalue())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--labs", nargs="*", default=[f"{i:02d}" for i in range(1, 9)], help="labs (default: all)")
    parser.add_argument("--solutions", type=int, default=3, help="solution copies per class (default: 3)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per lab and job count (default: 1)")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
          f"{args.solutions + 1} submissions per lab, {args.repeats} run(s) each, medians")
    print(f"{'lab':<24}{'s/sub 1 job':>12}{'wall/sub 1 job':>16}{'wall/sub 2 jobs':>17}{'speed-up':>10}")
    for lab in args.labs:
        solution = grading.find_solution(lab)
        folder = Path(tempfile.mkdtemp(prefix="grading-speed-"))
        try:
            paths = make_class(solution, folder, args.solutions)
            runs = {jobs: [timed(solution, paths, jobs, folder / "out" / f"g{jobs}.csv") for _ in range(args.repeats)]
                    for jobs in (1, 2)}
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        own = statistics.median(s for _, each in runs[1] for s in each)
        per = {jobs: statistics.median(wall for wall, _ in r) / len(paths) for jobs, r in runs.items()}
        print(f"{solution.stem:<24}{own:>12.1f}{per[1]:>16.1f}{per[2]:>17.1f}{per[1] / per[2]:>9.2f}x", flush=True)
    kib = 1024
    print(f"peak resident memory: grading process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // kib} MiB, "
          f"largest child (a kernel or a grading job) {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // kib} MiB")


if __name__ == "__main__":
    main()
