"""`course release`: generate every ``labs/NN_topic.ipynb`` from ``solutions/NN_topic.ipynb``.

The release replaces each ``### BEGIN SOLUTION`` ... ``### END SOLUTION`` region by a stub at the
marker's indentation, removes ``### BEGIN HIDDEN TESTS`` ... ``### END HIDDEN TESTS`` regions,
clears outputs and points the Colab badge at ``labs/``. ``--check`` writes nothing and fails when
``labs/`` is not exactly what the release would write (CI runs it). ``--student-copy DIR`` writes the
course students may see into a new folder, to publish apart from this repository (docs/instructors.md).
"""
from __future__ import annotations

import argparse
import copy
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat

from .notebooks import nbgrader_meta, read_notebook, set_header, strip_outputs

SOLUTION = ("### BEGIN SOLUTION", "### END SOLUTION")
HIDDEN = ("### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS")
CODE_STUB = ["# YOUR CODE HERE",
             'raise NotImplementedError("Write your solution here, then run the check cell below.")']
MARKDOWN_STUB = ["YOUR ANSWER HERE"]
# The Colab badge's link: .../github/<owner>/<repo>/blob/<branch>/solutions/NAME.ipynb
_BADGE = re.compile(r"(https://colab\.research\.google\.com/github/[^)\s]*)/solutions/")


def replace_regions(source: str, markers: tuple[str, str], stub: list[str] | None, where: str = "cell") -> str:
    """Replace each ``markers`` region of ``source`` by ``stub`` at the marker's indentation (None: drop it)."""
    begin, end = markers
    out: list[str] = []
    indent = None  # the begin marker's indentation while inside a region
    for line in source.split("\n"):
        text = line.strip()
        if indent is None and text.startswith(begin):
            indent = line[: len(line) - len(line.lstrip())]
            out.extend(indent + s if s else s for s in (stub or []))
        elif indent is None and text.startswith(end):
            raise ValueError(f"{where}: {end!r} without a {begin!r} before it; add the missing marker")
        elif indent is not None and text.startswith(begin):
            raise ValueError(f"{where}: {begin!r} inside another {begin!r} region; close the first one")
        elif indent is not None and text.startswith(end):
            indent = None
        elif indent is None:
            out.append(line)
    if indent is not None:
        raise ValueError(f"{where}: {begin!r} has no matching {end!r}; add the end marker")
    return "\n".join(out)


def release_notebook(nb: nbformat.NotebookNode, name: str = "notebook") -> nbformat.NotebookNode:
    """Return the student's lab made from solution notebook ``nb`` (``nb`` itself is not changed)."""
    lab = copy.deepcopy(nb)
    for index, cell in enumerate(lab.cells):
        where = f"{name}, cell {index + 1}"
        stub = MARKDOWN_STUB if cell.cell_type == "markdown" else CODE_STUB
        cell.source = replace_regions(cell.source, HIDDEN, None, where)
        cell.source = replace_regions(cell.source, SOLUTION, stub, where)
    if lab.cells:
        lab.cells[0].source = _BADGE.sub(r"\1/labs/", lab.cells[0].source)
    return strip_outputs(lab)


def replace_solution(nb: nbformat.NotebookNode, grade_id: str, code: str) -> nbformat.NotebookNode:
    """Copy of solution ``nb`` whose cell ``grade_id`` has ``code`` in each of its solution regions."""
    result = copy.deepcopy(nb)
    cells = [c for c in result.cells if nbgrader_meta(c).get("grade_id") == grade_id]
    if not cells:
        known = [nbgrader_meta(c)["grade_id"] for c in nb.cells if "grade_id" in nbgrader_meta(c)]
        raise ValueError(f"no cell with grade_id {grade_id!r}; known grade_ids: {known}")
    if not any(line.strip().startswith(SOLUTION[0]) for line in cells[0].source.split("\n")):
        raise ValueError(f"cell {grade_id!r} has no {SOLUTION[0]!r} region to replace")
    cells[0].source = replace_regions(cells[0].source, SOLUTION, textwrap.dedent(code).strip("\n").split("\n"),
                                      f"cell {grade_id!r}")
    return result


def lab_text(solution_path: str | Path) -> str:
    """The exact text ``course release`` writes for the lab of ``solution_path``."""
    path = Path(solution_path)
    nb = read_notebook(path)
    # nbformat invents random ids for cells saved without one; use stable ones so output is repeatable.
    raw_cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
    for index, (cell, raw) in enumerate(zip(nb.cells, raw_cells, strict=False)):
        if "id" in cell and "id" not in raw:
            cell.id = f"cell-{index}"
    return nbformat.writes(release_notebook(nb, name=str(path))) + "\n"


def release(solutions_dir: str | Path = "solutions", labs_dir: str | Path = "labs", check: bool = False) -> list[str]:
    """Write (or with ``check`` only compare) every lab; returns the lab paths that were stale or written.

    Labs without a solution are returned (and printed) too; they are never deleted.
    """
    solutions_dir, labs_dir = Path(solutions_dir), Path(labs_dir)
    if not solutions_dir.is_dir():
        raise ValueError(f"{solutions_dir} is not a folder; run `course release` from the course root "
                         "or pass --solutions")
    changed = []
    for solution in sorted(solutions_dir.glob("*.ipynb")):
        lab, text = labs_dir / solution.name, lab_text(solution)
        old = lab.read_text(encoding="utf-8") if lab.exists() else None
        if old == text:
            continue
        changed.append(str(lab))
        if check:
            print(f"{lab}: {'missing' if old is None else 'stale'} (made from {solution})")
        else:
            labs_dir.mkdir(parents=True, exist_ok=True)
            lab.write_text(text, encoding="utf-8", newline="\n")
            print(f"{lab}: {'created' if old is None else 'updated'} from {solution}")
    for lab in sorted(labs_dir.glob("*.ipynb")):
        if not (solutions_dir / lab.name).exists():
            changed.append(str(lab))
            print(f"{lab}: no {solutions_dir / lab.name}; delete the lab or add its solution")
    return changed


# What a student copy leaves out: the answers (solutions/), the tests and benchmarks that run them, CI.
PRIVATE = ("solutions/", "tests/", "benchmarks/", ".ci/")
MARKERS = (SOLUTION[0], HIDDEN[0])


def student_copy(dest: str | Path, root: str | Path = ".", repo_url: str | None = None) -> list[Path]:
    """Write the course without its answers to the new folder ``dest``; returns the files written.

    Copies the files git tracks in ``root`` except ``PRIVATE`` ones, with labs/ made afresh from solutions/;
    ``repo_url`` replaces the course's REPO_URL everywhere (the Colab badges and installs then point at
    the student repository). Fails if any copied notebook still holds a solution or hidden-test marker.
    """
    from .. import REPO_URL

    root, dest = Path(root).resolve(), Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise ValueError(f"{dest} exists and is not empty; give a new folder for the student copy")
    if dest.resolve().is_relative_to(root):
        raise ValueError(f"{dest} is inside the course ({root}); write the student copy outside it")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, text=True, check=False)
    if listed.returncode:
        raise ValueError(f"{root} is not a git checkout ({listed.stderr.strip()}); run this in the course repository")
    files = [f for f in listed.stdout.split("\0") if f and not f.startswith(PRIVATE) and (root / f).is_file()]
    written = []
    for name in files:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if name.startswith("labs/") and (root / "solutions" / Path(name).name).exists():
            target.write_text(lab_text(root / "solutions" / Path(name).name), encoding="utf-8", newline="\n")
        else:
            shutil.copy2(root / name, target)
        if repo_url and target.suffix in (".py", ".ipynb", ".md", ".toml", ".yml"):
            target.write_text(target.read_text(encoding="utf-8").replace(REPO_URL, repo_url.rstrip("/")),
                              encoding="utf-8", newline="\n")
        if target.suffix == ".ipynb" and any(m in target.read_text(encoding="utf-8") for m in MARKERS):
            shutil.rmtree(dest)
            raise ValueError(f"{name} holds a solution or hidden-test marker; nothing was written")
        written.append(target)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `course release`."""
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if labs/ is out of date")
    parser.add_argument("--solutions", default="solutions", help="folder of solution notebooks (default: solutions)")
    parser.add_argument("--labs", default="labs", help="folder of generated labs (default: labs)")
    parser.add_argument("--student-copy", metavar="DIR",
                        help="write the course without solutions, tests and benchmarks to the new folder DIR, "
                             "labs made afresh, to publish as the students' repository")
    parser.add_argument("--repo-url", help="with --student-copy: the students' repository URL, written into the "
                                           "Colab badges and installs instead of course_utils.REPO_URL")
    parser.add_argument("--headers", action="store_true",
                        help="first rewrite the Colab badge and setup cell of every lecture and solution from "
                             "course_utils.REPO_URL and REF (run it after changing REF for a release)")


def main(args: argparse.Namespace) -> int:
    """Run `course release`; returns the exit code."""
    if args.student_copy:
        try:
            written = student_copy(args.student_copy, ".", args.repo_url)
        except ValueError as exc:
            print(f"course release: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {len(written)} files to {args.student_copy} (no {', '.join(PRIVATE)}); see docs/instructors.md")
        return 0
    if args.headers:
        for folder in ("lectures", args.solutions):
            for path in sorted(Path(folder).glob("*.ipynb")):
                nb = read_notebook(path)
                if set_header(nb, Path(folder).name, path.stem):
                    nbformat.write(nb, path)
                    print(f"updated the header of {path}")
    try:
        changed = release(args.solutions, args.labs, check=args.check)
    except ValueError as exc:
        print(f"course release: {exc}")
        return 2
    if args.check and changed:
        print(f"{len(changed)} lab(s) out of date: run `course release` and commit {args.labs}/")
        return 1
    if not changed:
        print(f"{args.labs}/ is up to date with {args.solutions}/")
    return 0
