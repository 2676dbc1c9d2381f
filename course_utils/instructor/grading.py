"""`course grade`: grade lab submissions into a gradebook CSV.

Each submission is read (never written) and runs in a fresh kernel, in its own temporary folder,
inside a sandbox (``sandbox.py``: no network, read-only filesystem, bounded memory, processes and
output, every process killed at the end) with a per-cell timeout. The submission's own cells run in
that kernel; each check cell (nbgrader ``grade: true``, matched by ``grade_id``) is replaced by the
solution's version (hidden tests included) and run by the grader, in a child process bounded in
memory and time (``checkproc.py``), on proxies of the student's objects (``remote.py``), so the
verdict is out of the submission's reach. A broken,
crashing, hanging or misbehaving submission gets zeros with a message saying why and never stops
or changes the others. Manually graded cells (``grade`` and ``solution`` both true) are skipped.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import multiprocessing
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import nbformat

from ..settings import PROFILES
from . import checkproc, gradebook, sandbox
from .feedback import write_feedback
from .notebooks import nbgrader_meta, read_notebook, strip_outputs
from ..checks import RunCache, fenced
from .runner import error_line, grading_env

# Error text in a cell that means the submission hit the sandbox, and the rule the gradebook names.
RULES = (("Read-only file system", "sandbox violation (wrote outside its temporary folder)"),
         ("Network is unreachable", "sandbox violation (network access)"),
         ("Temporary failure in name resolution", "sandbox violation (network access)"),
         ("No such file or directory: '/", "sandbox violation (read outside its temporary folder)"),
         ("MemoryError", "memory limit"), ("can't allocate memory", "memory limit"),
         ("Resource temporarily unavailable", "process limit"), ("File too large", "file size limit"))


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


def _check_args(timeout: float, profile: str) -> None:
    if not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds per cell, got {timeout!r}")
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")


def _client_class():
    """nbclient's client with the output of each cell capped (a flood of prints cannot fill the grader).

    Widgets and display updates are not graded: their messages are dropped, so a flood of them costs nothing.
    """
    from nbclient import NotebookClient

    class CappedClient(NotebookClient):
        def process_message(self, msg, cell, cell_index):
            if msg["msg_type"].startswith("comm") or msg["msg_type"] == "update_display_data":
                return None
            msg["content"].pop("transient", None)  # no display ids: nothing to update later
            return super().process_message(msg, cell, cell_index)

        def output(self, outs, msg, display_id, cell_index):
            used = getattr(self, "_used", {})
            self._used = used
            used[id(outs)] = used.get(id(outs), 0) + len(str(msg.get("content", "")))
            if used[id(outs)] > sandbox.Limits().output_bytes:
                if used[id(outs)] - len(str(msg.get("content", ""))) <= sandbox.Limits().output_bytes:
                    outs.append(nbformat.v4.new_output("stream", name="stderr", text="[output limit reached]\n"))
                return None
            return super().output(outs, msg, display_id, cell_index)

    return CappedClient


def _kernel_manager(workdir: Path, prefix: list[str] | None):
    """A kernel manager whose kernel runs behind ``prefix`` (the sandbox), talking over files in ``workdir``."""
    from jupyter_client.manager import AsyncKernelManager

    class SandboxedKernelManager(AsyncKernelManager):
        def format_kernel_cmd(self, extra_arguments=None):
            return list(prefix or []) + super().format_kernel_cmd(extra_arguments)

        def write_connection_file(self, **kwargs):  # written 0600 by us; the sandbox's user must read it
            super().write_connection_file(**kwargs)
            if prefix is not None:
                sandbox.hand_over(self.connection_file)

    if prefix is None:
        return SandboxedKernelManager(kernel_name="python3")
    # No network inside the sandbox: the kernel's ZeroMQ sockets are Unix sockets in its folder.
    return SandboxedKernelManager(kernel_name="python3", transport="ipc", ip=str(workdir / "kernel"),
                                  connection_file=str(workdir / "kernel.json"))


@dataclass(frozen=True)
class Death:
    """How a submission's kernel died: ``why`` in words; ``at_limit`` when a sandbox limit killed it."""

    why: str
    at_limit: bool


def _death(km, cgroups: list[Path], limits: sandbox.Limits) -> Death:
    """How the kernel of ``km`` died: the sandbox limit it reached, else its exit status."""
    reached = sandbox.limit_reached(cgroups, limits)
    if reached:
        return Death(reached, True)
    code = getattr(getattr(km.provisioner, "process", None), "returncode", None)
    if code is None:
        return Death("no exit status", False)
    signal_number = -code if code < 0 else code - 128 if code > 128 else 0  # bwrap reports a signal as 128 + N
    return Death(f"killed by signal {signal_number}" if signal_number else f"exit code {code}", False)


def _rules_broken(cell) -> list[str]:
    found = []
    for out in cell.get("outputs", []):
        text = f"{out.get('ename', '')}: {out.get('evalue', '')}" if out.get("output_type") == "error" else ""
        found += [rule for needle, rule in RULES if needle in text]
    return found


def run_graded(nb, checks: dict, checker: checkproc.CheckProcess, workdir: Path, timeout: float, profile: str,
               hide: list) -> tuple[dict[str, tuple[bool, str]], list[str], Death | None]:
    """Run the submission's cells in its sandboxed kernel and each check in ``checker``'s bounded process.

    Returns ({grade_id: (passed, message)} for the checks reached, notes on rules the submission broke,
    how the kernel died or None).
    """
    from jupyter_core.utils import run_sync

    limits = sandbox.Limits()
    cgroups = sandbox.kernel_cgroups(workdir.name, limits) if sandbox.unavailable_reason() is None else []
    km = _kernel_manager(workdir, sandbox.sandbox_prefix(workdir, hide, limits, cgroups))
    client = _client_class()(nb, km=km, timeout=max(1, int(timeout)), kernel_name="python3", allow_errors=True)
    try:
        verdicts, notes = _run_cells(client, nb, checks, checker, workdir, timeout, profile)
        died = any("the kernel died" in message for _, message in verdicts.values())
        return verdicts, notes, _death(km, cgroups, limits) if died else None
    finally:
        checker.close()  # nbclient leaves a kernel it did not create running: kill it, and with it the whole sandbox
        if run_sync(km.is_alive)():
            run_sync(km.shutdown_kernel)(now=True)
        sandbox.remove_cgroups(cgroups)


def _run_cells(client, nb, checks: dict, checker: checkproc.CheckProcess, workdir: Path, timeout: float,
               profile: str) -> tuple[dict[str, tuple[bool, str]], list[str]]:
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    verdicts: dict[str, tuple[bool, str]] = {}
    notes: list[str] = []
    failed: list[str] = []  # the student's cells that raised, as "cell N (ErrorName)"
    env = grading_env(profile)
    with client.setup_kernel(cwd=str(workdir), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
        kernel = checkproc.kernel_runner(client)
        # The kernel side of remote checks (it imports torch) loads before any student code, untimed.
        client.timeout = max(120, int(timeout))
        client.execute_cell(nbformat.v4.new_code_cell("import course_utils.instructor.agent"), 0, store_history=False)
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            grade_id = nbgrader_meta(cell).get("grade_id")
            if grade_id in checks:
                if grade_id not in verdicts and in_kernel(checks[grade_id]):
                    passed, message, stop = _kernel_verdict(client, checks[grade_id], index, timeout)
                    verdicts[grade_id] = passed, message
                    if stop:
                        return _stopped(verdicts, checks, index, stop), notes
                elif grade_id not in verdicts:
                    passed, message, stop = checker.run(checks[grade_id].source, index, kernel)
                    verdicts[grade_id] = passed, knock_on(message, failed)
                    if stop:
                        return _stopped(verdicts, checks, index, stop), notes
                continue
            try:
                client.timeout = max(1, int(timeout))
                client.execute_cell(cell, index)
            except CellTimeoutError:
                return _stopped(verdicts, checks, index, f"timed out after {int(timeout)} s"), notes
            except DeadKernelError:
                reason = "the kernel died (killed at the memory or process limit, or it exited)"
                return _stopped(verdicts, checks, index, reason), notes
            notes += [f"{rule} in cell {index + 1}" for rule in _rules_broken(cell)]
            failed += [f"cell {index + 1} ({fenced(o.get('ename', 'Error'), 40)})" for o in cell.get("outputs", [])
                       if o.get("output_type") == "error"][:1]
    return verdicts, notes


def knock_on(message: str, failed: list[str]) -> str:
    """``message``, naming the earlier cells that failed when the check missed a name they should have defined."""
    if "NameError" not in message or not failed:
        return message
    cells = ", ".join(failed[-3:])
    return (f"{message} [probably a knock-on error: {cells} failed earlier and did not define everything; "
            "fix that first]")


def in_kernel(check_cell) -> bool:
    """True for a check the proxies cannot run yet (the solution's cell metadata says so): it runs in the kernel."""
    return check_cell.get("metadata", {}).get("course", {}).get("verdict") == "kernel"


def _kernel_verdict(client, check_cell, index: int, timeout: float) -> tuple[bool, str, str | None]:
    """(passed, message, why the run must stop) of a check run the old way, in the student's (sandboxed) kernel."""
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    cell = copy.deepcopy(check_cell)
    try:
        client.timeout = max(1, int(timeout))
        client.execute_cell(cell, index)
    except CellTimeoutError:
        return False, f"timed out after {int(timeout)} s in this check (cell {index + 1})", "timed out"
    except DeadKernelError:
        return False, f"the kernel died in this check (cell {index + 1})", "the kernel died"
    errors = [o for o in cell.outputs if o.get("output_type") == "error"]
    if errors:
        return False, error_line(fenced(errors[0].get("ename", "Error"), 40), fenced(errors[0].get("evalue", ""))), None
    return True, "passed (checked in the student's kernel)", None


def _stopped(verdicts: dict, checks: dict, index: int, reason: str) -> dict:
    for grade_id in checks:
        verdicts.setdefault(grade_id, (False, f"not run: the notebook stopped in cell {index + 1} ({reason})"))
    return verdicts


def _remove(folder: Path, tries: int = 50) -> None:
    """Delete the submission's folder, waiting for its kernel's last files (sockets) to go."""
    for _ in range(tries):
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            return
        time.sleep(0.1)


_warned = False


def _warn_unsandboxed() -> None:
    global _warned
    reason = sandbox.unavailable_reason()
    if reason is not None and not _warned:
        _warned = True
        warnings.warn(f"grading is NOT sandboxed: {reason}. Submissions run with your permissions "
                      "(network, files); checks still run in the grader's process.", stacklevel=3)
    elif reason is None and not _warned and (missing := sandbox.cgroups_missing_reason()) is not None:
        _warned = True
        print(f"course grade: note: no cgroup per kernel on this machine ({missing}); each of a kernel's processes "
              "keeps its own limits, but together they may use more memory than one (docs/grader_guarantees.md)",
              file=sys.stderr, flush=True)


def grade_submission(submission_path: str | Path, solution_path: str | Path, timeout: float = 120,
                     profile: str = "ci", hide: list | None = None, run_cache: RunCache | None = None
                     ) -> list[ExerciseResult]:
    """Grade one submission against its solution notebook; one result per check cell.

    ``hide``: folders the submission's sandbox must not see (the submission's and the solution's
    folders are always hidden). ``run_cache``: the grading run's (``grade`` makes one), or None.
    """
    _check_args(timeout, profile)
    solution = read_notebook(solution_path)
    checks = check_cells(solution)
    if not checks:
        raise ValueError(f"{solution_path} has no check cells (code cells with nbgrader grade: true)")
    _warn_unsandboxed()
    name = str(submission_path)

    def row(grade_id: str, passed: bool, message: str) -> ExerciseResult:
        max_points = float(nbgrader_meta(checks[grade_id]).get("points", 0))
        return ExerciseResult(name, grade_id, max_points if passed else 0.0, max_points, message)

    try:
        submission = read_notebook(submission_path)
        graded, where = graded_copy(submission, checks)
    except Exception as exc:  # unreadable, not JSON, not a notebook: zeros, never a crash
        return [row(g, False, error_line("could not read the submission", str(exc))) for g in checks]
    hide = [Path(submission_path).resolve().parent, Path(solution_path).resolve().parent,
            Path(tempfile.gettempdir()), *(hide or [])]
    shift = secrets.randbelow(checkproc.SEED_SHIFTS)  # the hidden tests' inputs, drawn now (both runs share them)
    verdicts, notes, died = _run_in_sandbox(graded, checks, solution_path, timeout, profile, hide, shift,
                                             run_cache)
    if died is not None and not died.at_limit:
        # A kernel killed by no limit of ours may have died of the machine, not the submission: one more run.
        print(f"course grade: {name}: the kernel died ({died.why}); grading it again in a fresh kernel",
              file=sys.stderr, flush=True)
        verdicts, notes, again = _run_in_sandbox(graded, checks, solution_path, timeout, profile, hide, shift,
                                                 run_cache)
        died = again and Death(f"{again.why}; it died again when graded a second time", again.at_limit)
    if died is not None:
        verdicts = {g: (passed, message.replace("the kernel died", f"the kernel died ({died.why})", 1))
                    for g, (passed, message) in verdicts.items()}
    results = []
    for grade_id in checks:
        if grade_id not in where:
            results.append(row(grade_id, False, f"check cell {grade_id} missing from the submission"))
            continue
        passed, message = verdicts.get(grade_id, (False, "not run"))
        broken = notes + [rule for needle, rule in RULES if needle in message]
        if not passed and broken:
            message = f"{message} [rules broken: {'; '.join(dict.fromkeys(broken))}]"
        results.append(row(grade_id, passed, message))
    return results


def _run_in_sandbox(graded, checks: dict, solution_path, timeout: float, profile: str, hide: list,
                    seed_shift: int, run_cache: RunCache | None = None
                    ) -> tuple[dict[str, tuple[bool, str]], list[str], Death | None]:
    """``run_graded`` in a fresh folder of its own (a size-limited tmpfs where the machine allows one)."""
    tmp = Path(tempfile.mkdtemp(prefix="course-grade-")).resolve()
    mounted = sandbox.unavailable_reason() is None and sandbox.mount_workdir(tmp)
    checker = checkproc.CheckProcess(solution_path, profile, tmp, timeout, seed_shift=seed_shift,
                                     run_cache=run_cache)
    checker.warm()
    try:
        return run_graded(graded, checks, checker, tmp, timeout, profile, hide)
    finally:
        if mounted:
            sandbox.unmount_workdir(tmp)
        _remove(tmp)


def _grade_one(submission: str, solution_path: str, timeout: float, profile: str, hide: list,
               run_cache: RunCache | None = None) -> tuple[str, list[ExerciseResult], float]:
    """(submission, its rows, seconds taken); a failure of the grader itself gives zeros, never a crash."""
    start = time.perf_counter()
    try:
        results = grade_submission(submission, solution_path, timeout, profile, hide, run_cache)
    except Exception as exc:  # belt and braces: one submission never stops the others
        message = f"grading failed: {error_line(type(exc).__name__, str(exc))}"
        checks = check_cells(read_notebook(solution_path))
        results = [ExerciseResult(submission, g, 0.0, float(nbgrader_meta(c).get("points", 0)), message)
                   for g, c in checks.items()]
    return submission, results, time.perf_counter() - start


def _worker_threads(jobs: int) -> None:
    """In each grading process: the machine's cores shared between the jobs (kernels inherit it)."""
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))


def graded(submissions: list[str], solution_path: str, timeout: float, profile: str, hide: list,
           jobs: int = 1, run_cache: RunCache | None = None):
    """Yield (submission, rows, seconds) as each submission finishes, ``jobs`` of them at a time.

    Each job is a process of its own grading one submission in its own sandboxed kernel, with the
    same limits as when grading one at a time.
    """
    if jobs == 1:
        for submission in submissions:
            yield _grade_one(submission, solution_path, timeout, profile, hide, run_cache)
        return
    context = multiprocessing.get_context("spawn")  # no forked copies of the grader's threads or kernels
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker_threads, initargs=(jobs,)) as pool:
        futures = [pool.submit(_grade_one, s, solution_path, timeout, profile, hide, run_cache) for s in submissions]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BrokenProcessPool:
            raise RuntimeError("a grading process died; the gradebook keeps every finished submission: "
                               "run the same command again to grade the rest") from None
        finally:
            for future in futures:
                future.cancel()


@contextlib.contextmanager
def run_cache():
    """A ``RunCache`` for one grading run: a private temporary folder (kernels never see it) and a secret drawn now;
    the folder is deleted when the run ends."""
    folder = tempfile.mkdtemp(prefix="course-grade-run-")
    try:
        yield RunCache(folder, secrets.randbelow(checkproc.SEED_SHIFTS))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def grade(solution_path: str | Path, submissions: list, out_csv: str | Path, timeout: float = 120,
          profile: str = "ci", jobs: int = 1, fresh: bool = False, sheets: bool = True) -> list[ExerciseResult]:
    """Grade the submissions into the gradebook files (``gradebook.py``); returns their rows.

    ``out_csv`` is checked before anything is graded and gets each submission's rows as soon as it is
    graded; submissions already in it are not graded again (unless ``fresh``), so a stopped run resumes.
    ``sheets``: also write the per-student sheet, LMS files and feedback pages (a shard leaves them to the merge).
    """
    _check_args(timeout, profile)
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a whole number >= 1, got {jobs!r}")
    solution = read_notebook(solution_path)
    checks = check_cells(solution)
    if not checks:
        raise ValueError(f"{solution_path} has no check cells (code cells with nbgrader grade: true)")
    lab, submissions = Path(solution_path).stem, [str(s) for s in submissions]
    out = gradebook.check_out(out_csv)
    ids = gradebook.student_ids(submissions, lab)
    book = gradebook.Gradebook(out, lab, list(checks), fresh)
    todo = [s for s in submissions if s not in book.done]
    for s in todo:
        if ids[s] in book.students:
            raise ValueError(f"{out} already grades student {ids[s]!r} from {book.students[ids[s]]}, not {s}; "
                             "pass --fresh to grade everything again, or give another --out")
    if len(todo) < len(submissions):
        print(f"resuming {out}: {len(submissions) - len(todo)} of {len(submissions)} submissions already graded "
              "(pass --fresh to grade them again)")
    untouched = gradebook.lab_sources(solution)
    hide = [out.resolve().parent, *{Path(p).resolve().parent for p in todo}]
    with run_cache() as cache:
        for n, (submission, results, seconds) in enumerate(
                graded(todo, str(solution_path), timeout, profile, hide, jobs, cache), 1):
            flag = gradebook.flags(submission, [r.message for r in results], untouched)
            book.add(results, ids[submission], flag)
            total, most = sum(r.points for r in results), sum(r.max_points for r in results)
            print(f"[{n}/{len(todo)}] {ids[submission]}: {total:g} / {most:g}{'  ' + flag if flag else ''} "
                  f"({seconds:.1f} s)", flush=True)
            if flag == gradebook.UNREADABLE:
                print(f"course grade: {submission}: {results[0].message}", file=sys.stderr, flush=True)
    rows = [r for r in book.rows if r["submission"] in set(submissions)]
    if sheets:
        gradebook.write_sheets(book.rows, out)
        write_feedback(book.rows, out)
    return [ExerciseResult(r["submission"], r["exercise"], float(r["points"]), float(r["max_points"]), r["message"])
            for r in rows]


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
    """Submission paths, each folder replaced by the notebooks inside it; a path that is missing, not a
    notebook or a folder without notebooks is an error (nothing would be graded from it)."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.rglob("*.ipynb") if ".ipynb_checkpoints" not in q.parts)
            if not found:
                raise ValueError(f"{p}/ holds no notebooks (*.ipynb); give the folder of the submitted labs")
            out += found
        elif not p.exists():
            raise ValueError(f"{p}: no such file or folder")
        elif p.suffix != ".ipynb":
            raise ValueError(f"{p} is not a notebook (.ipynb); give submitted notebooks or folders of them")
        else:
            out.append(p)
    return out


def shard(submissions: list, spec: str) -> list:
    """The submissions of shard ``spec`` ('i/N', 1 <= i <= N): every N-th one of the sorted list, from the i-th."""
    try:
        i, n = (int(x) for x in spec.split("/"))
        assert 1 <= i <= n
    except (ValueError, AssertionError):
        raise ValueError(f"--shard {spec}: give i/N with 1 <= i <= N, e.g. --shard 3/8") from None
    return sorted(submissions, key=str)[i - 1::n]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `course grade`."""
    parser.add_argument("submissions", nargs="+", metavar="SUBMISSION",
                        help="submitted notebooks, or folders of them (searched recursively)")
    parser.add_argument("--lab", required=True, help="lab number or name, e.g. 01 (finds solutions/01_*.ipynb)")
    parser.add_argument("--out", required=True,
                        help="gradebook CSV to write, e.g. grades.csv; the per-student sheet, LMS imports and "
                             "feedback pages are written beside it. Running again with the same --out resumes")
    parser.add_argument("--solutions", default="solutions", help="folder of solution notebooks (default: solutions)")
    parser.add_argument("--timeout", type=int, default=120, help="seconds allowed per cell (default: 120)")
    parser.add_argument("--profile", choices=PROFILES, default="ci",
                        help="COURSE_PROFILE for the kernels (default: ci)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="submissions graded at once, each in its own sandboxed kernel (default: 1)")
    parser.add_argument("--shard", metavar="I/N",
                        help="grade only shard I of N (e.g. 2/8), for a batch job array; then `course merge`")
    parser.add_argument("--fresh", action="store_true", help="start --out over instead of resuming it")


def main(args: argparse.Namespace) -> int:
    """Run `course grade`: 0 when grading ran, 2 on bad arguments, 1 when no submission could be read."""
    try:
        solution = find_solution(args.lab, args.solutions)
        submissions = expand(args.submissions)
        if args.shard:
            submissions = shard(submissions, args.shard)
        results = grade(solution, submissions, args.out, args.timeout, args.profile, args.jobs, args.fresh,
                        sheets=not args.shard)
    except (ValueError, RuntimeError) as exc:
        print(f"course grade: {exc}", file=sys.stderr)
        return 2
    if args.shard:
        print(f"shard {args.shard} written to {args.out}; when every shard is done, merge them: "
              "course merge --out GRADEBOOK.csv SHARD.csv ...")
    else:
        print(f"gradebook written to {args.out} (per student: {Path(args.out).with_suffix('')}.students.csv)")
    if results and all(r.message.startswith(gradebook.UNREADABLE_MESSAGE) for r in results):
        print("course grade: no submission could be read; check that these are the students' notebooks",
              file=sys.stderr)
        return 1
    return 0
