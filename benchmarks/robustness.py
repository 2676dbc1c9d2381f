"""Robustness matrix: run every lecture and solution across numerics x lesson seed x model build, record every assert.

Each matrix cell is named ``<numerics>-s<seed>[-m<k>]``:

- numerics ``native`` (the CPU's own MKL and ATen kernels) or the alternative: ``avx2``
  (MKL_ENABLE_INSTRUCTIONS=AVX2, ATEN_CPU_CAPABILITY=avx2) on a CPU with AVX-512, ``avx``
  (MKL_ENABLE_INSTRUCTIONS=AVX) on one without;
- ``s<seed>`` sets COURSE_SEED, the lesson's training and sampling seed;
- ``m<k>`` sets COURSE_MODELS_DIR to course models rebuilt with seed k (built once, by
  ``python -m course_utils models build --seed K --out build/robustness/models-seed<K>``).

Every notebook runs in a fresh kernel in the ``ci`` profile, like ``make test``, with errors allowed so
that later asserts still run. Before it runs, each comparison inside an ``assert`` is rewritten in memory
(the notebook files are never written) into a call that evaluates it exactly as Python would and appends
its operands and margin to a JSONL file; an assert without a comparison is recorded as passed or failed. One JSON result per (machine, cell, notebook) goes to
``benchmarks/robustness/results/<machine>/<cell>/<folder>__<name>.json``; existing ones are skipped, so
the matrix can be run in pieces. ``report`` gathers them into ``benchmarks/robustness/summary.json`` and
a table in ``benchmarks/README.md``.

    .venv/bin/python benchmarks/robustness.py run                    # the default matrix, 2 notebooks at a time
    .venv/bin/python benchmarks/robustness.py run --cells native-s0,avx2-s0 --notebooks 01_attention
    .venv/bin/python benchmarks/robustness.py report
"""
from __future__ import annotations

import argparse
import ast
import copy
import inspect
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "robustness" / "results"
SUMMARY = ROOT / "benchmarks" / "robustness" / "summary.json"
README = ROOT / "benchmarks" / "README.md"
MARKERS = ("<!-- robustness:start -->", "<!-- robustness:end -->")
COURSE_README = ROOT / "docs" / "outcomes.md"  # the course's outcome table (linked from README.md)
OUTCOME_MARKERS = ("<!-- outcomes:start -->", "<!-- outcomes:end -->")
HELPER = "__course_outcome__"  # dunder names are not mangled inside class bodies
OUTCOMES_ENV = "COURSE_OUTCOMES_FILE"
SEEDS = (0, 1, 2)
CI_ENV = {"COURSE_PROFILE": "ci", "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
NUMERICS = {"native": {},
            "avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
            "avx": {"MKL_ENABLE_INSTRUCTIONS": "AVX"}}
OPS = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=",
       ast.Is: "is", ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in"}


# ---------------------------------------------------------------- the machine and the matrix

def cpu_info(path: str | Path = "/proc/cpuinfo") -> tuple[str, set[str]]:
    """(CPU model name, set of CPU flags) from /proc/cpuinfo; ("unknown", empty set) where it cannot be read."""
    try:
        text = Path(path).read_text()
    except OSError:
        return platform.processor() or "unknown", set()
    name = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.MULTILINE)
    return (name.group(1).strip() if name else "unknown"), set(flags.group(1).split() if flags else ())


def machine_info() -> dict:
    """This machine: CPU, the vector extensions that change float kernels, cores and library versions."""
    name, flags = cpu_info()
    info = {"cpu": name, "avx512f": "avx512f" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "amx": any(f.startswith("amx") for f in flags), "cores": len(os.sched_getaffinity(0)),
            "python": platform.python_version()}
    for package in ("torch", "transformers"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = None
    return info | {"slug": machine_slug(info)}


def machine_slug(info: dict) -> str:
    """A folder name for the machine, e.g. ``amd-epyc-avx512-2c``."""
    vector = "amx" if info["amx"] else "avx512" if info["avx512f"] else "noavx512"
    cpu = re.sub(r"[^a-z0-9]+", "-", re.sub(r"\(r\)|\(tm\)|cpu|processor|@.*", "", info["cpu"].lower())).strip("-")
    return f"{cpu or 'cpu'}-{vector}-{info['cores']}c"


def alternative_numerics(avx512: bool) -> str:
    """The numerics beside ``native``: AVX2 code paths on an AVX-512 CPU, AVX ones on a CPU without AVX-512."""
    return "avx2" if avx512 else "avx"


def default_cells(avx512: bool) -> list[str]:
    """The full matrix on such a machine: both numerics x seeds 0, 1, 2, plus native-s0-m1."""
    return [f"{n}-s{s}" for n in ("native", alternative_numerics(avx512)) for s in SEEDS] + ["native-s0-m1"]


@dataclass(frozen=True)
class Cell:
    numerics: str
    seed: int
    model_seed: int | None = None

    @property
    def name(self) -> str:
        return f"{self.numerics}-s{self.seed}" + ("" if self.model_seed is None else f"-m{self.model_seed}")


def parse_cell(name: str, avx512: bool) -> Cell:
    """``avx2-s1-m2`` -> Cell("avx2", 1, 2); refuses numerics that would not differ from native on this CPU."""
    match = re.fullmatch(r"(native|avx2|avx)-s(\d+)(?:-m(\d+))?", name.strip())
    if not match:
        raise ValueError(f"cell {name!r} is not <native|avx2|avx>-s<seed>[-m<model seed>], e.g. native-s0, avx2-s1-m1")
    if match.group(1) == "avx2" and not avx512:
        raise ValueError(f"cell {name!r}: this CPU has no AVX-512, so AVX2 is its native numerics; use avx-s<seed>")
    return Cell(match.group(1), int(match.group(2)), None if match.group(3) is None else int(match.group(3)))


def models_dir(model_seed: int) -> Path:
    """Where course models rebuilt with ``model_seed`` live (build/ is git-ignored)."""
    return ROOT / "build" / "robustness" / f"models-seed{model_seed}"


def cell_env(cell: Cell) -> dict[str, str]:
    """The variables the runner sets for a cell's kernels (recorded in each result)."""
    env = CI_ENV | NUMERICS[cell.numerics] | {"COURSE_SEED": str(cell.seed)}
    if cell.model_seed is not None:
        env["COURSE_MODELS_DIR"] = str(models_dir(cell.model_seed))
    return env


def kernel_env(cell: Cell, outcomes: Path) -> dict[str, str]:
    """Our environment without inherited numerics settings, plus the cell's, the JSONL path and this checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env | cell_env(cell) | {OUTCOMES_ENV: str(outcomes)}


def aten_capability(cell: Cell) -> str | None:
    """The ATen CPU capability torch really uses under the cell's numerics (None if torch cannot say)."""
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    run = subprocess.run([sys.executable, "-c", code], env=kernel_env(cell, Path(os.devnull)),
                         capture_output=True, text=True, check=False)
    return run.stdout.strip() or None if run.returncode == 0 else None


def ensure_models(model_seed: int, python: str = sys.executable) -> bool:
    """Build the course models with ``model_seed`` into models_dir(model_seed) unless it holds files; False if that failed."""
    out = models_dir(model_seed)
    if out.is_dir() and any(out.iterdir()):
        return True
    command = [python, "-m", "course_utils", "models", "build", "--seed", str(model_seed), "--out", str(out)]
    print("building models:", " ".join(command), flush=True)
    env = os.environ | {"PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    if subprocess.run(command, cwd=ROOT, env=env, check=False).returncode == 0:
        return True
    print(f"building the models for -m{model_seed} failed; its cells are left out of this run", flush=True)
    return False


# ---------------------------------------------------------------- recording asserts

def make_recorder(path):
    """The helper a hidden cell defines in the kernel: compares like Python and appends one JSON line per comparison."""
    import json
    import math
    import operator

    compare = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
               ">=": operator.ge, "is": operator.is_, "is not": operator.is_not,
               "in": lambda a, b: a in b, "not in": lambda a, b: a not in b,
               "holds": lambda a, b: a}  # an assert without a comparison: its test's own value
    out = open(path, "a", buffering=1)  # noqa: SIM115 (open for the kernel's life; each line reaches the file at once)
    state = {}

    def number(value):
        """A finite float for a real Python/numpy number or a 0-dim numpy/torch value, else None."""
        if isinstance(value, (bool, str, bytes)) or "bool" in str(getattr(value, "dtype", "")):
            return None
        if not isinstance(value, (int, float)) and getattr(value, "ndim", None) != 0:
            return None
        try:
            value = float(value)
        except (TypeError, ValueError):
            return None
        return value if math.isfinite(value) else None

    def shown(value):
        """A short text for a value that is not a number (no repr of big objects)."""
        return repr(value)[:80] if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__

    def record(cell, source, left, op, right, result):
        a, b = number(left), number(right)
        margin = None if a is None or b is None else a - b if op in (">", ">=") else b - a if op in ("<", "<=") else None
        try:
            passed = bool(result)
        except Exception:  # noqa: BLE001 (bool() of an array, or of anything, may raise anything)
            return  # an element-wise comparison (a tensor of results) is an intermediate value, not an outcome
        row = {"cell": cell, "source": source, "op": op, "left": a, "right": b, "margin": margin, "passed": passed}
        if op == "holds":
            row |= {"left": None, "right": None}
        elif a is None or b is None:
            row |= {"left_value": shown(left), "right_value": shown(right)}
        out.write(json.dumps(row) + "\n")

    def outcome(cell, source, left, op, right):
        result = compare[op](left, right)  # raises exactly where Python's comparison would
        state["right"] = right  # the next link of a chained comparison starts from it
        try:
            record(cell, source, left, op, right, result)
        except Exception:  # noqa: BLE001, S110 (recording must never change what the assert does)
            pass
        return result

    outcome.last = lambda: state.pop("right")
    return outcome


RECORDER_SOURCE = inspect.getsource(make_recorder)  # read once: an edit of this file during a run must not change it


def helper_cell_source() -> str:
    """The hidden first cell: defines the helper from ``make_recorder`` and removes the factory again."""
    return RECORDER_SOURCE + f"\n{HELPER} = make_recorder(__import__('os').environ['{OUTCOMES_ENV}'])\ndel make_recorder\n"


class _AssertComparisons(ast.NodeTransformer):
    """Turns each comparison inside an assert's test into calls of the helper (chains: one call per link)."""

    def __init__(self, source: str, cell_index: int):
        self.source, self.cell_index, self.in_assert, self.count = source, cell_index, 0, 0
        self.recorded: list[str] = []  # the source text of each comparison it records

    def visit_Assert(self, node: ast.Assert) -> ast.Assert:
        if not any(isinstance(n, ast.Compare) for n in ast.walk(node.test)):  # e.g. assert torch.allclose(a, b)
            node.test = self.call(node.test, "holds", ast.Constant(None), self.text(node.test))
            return node
        self.in_assert += 1
        node.test = self.visit(node.test)  # the message is left alone
        self.in_assert -= 1
        return node

    def text(self, node: ast.AST) -> str:
        """The node's source text, whitespace collapsed."""
        return " ".join((ast.get_source_segment(self.source, node) or ast.unparse(node)).split())

    def call(self, left: ast.AST, op: str, right: ast.AST, source: str) -> ast.Call:
        """``__course_outcome__(cell, source, left, op, right)``."""
        self.count += 1
        self.recorded.append(source)
        args = [ast.Constant(self.cell_index), ast.Constant(source), left, ast.Constant(op), right]
        return ast.Call(ast.Name(HELPER, ast.Load()), args, [])

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        if not self.in_assert:
            return self.generic_visit(node)
        texts, whole = [self.text(n) for n in (node.left, *node.comparators)], self.text(node)
        self.generic_visit(node)  # comparisons nested in the operands first
        calls, operands = [], [node.left, *node.comparators]
        for i, op in enumerate(node.ops):  # a chain a < b < c: b is evaluated once, the helper hands it on
            source = whole if len(node.ops) == 1 else f"{texts[i]} {OPS[type(op)]} {texts[i + 1]}"
            left = operands[0] if i == 0 else ast.Call(
                ast.Attribute(ast.Name(HELPER, ast.Load()), "last", ast.Load()), [], [])
            calls.append(self.call(left, OPS[type(op)], operands[i + 1], source))
        return calls[0] if len(calls) == 1 else ast.BoolOp(ast.And(), calls)


def _parse(source: str) -> tuple[ast.Module, str] | None:
    """(tree, the Python source it was parsed from) of a cell, or None where it cannot be parsed."""
    try:
        return ast.parse(source), source
    except SyntaxError:  # IPython syntax (%magics, !commands): try IPython's own translation to Python
        from IPython.core.inputtransformer2 import TransformerManager
        source = TransformerManager().transform_cell(source)
        try:
            return ast.parse(source), source
        except SyntaxError:
            return None


def assert_sources(path: Path) -> set[str] | None:
    """The source texts of the assert comparisons the notebook at ``path`` holds today (None where there is none)."""
    if not path.exists():
        return None
    import nbformat

    found: set[str] = set()
    for index, cell in enumerate(nbformat.read(path, as_version=4).cells):
        parsed = _parse(cell.source) if cell.cell_type == "code" else None
        if parsed is not None:
            transformer = _AssertComparisons(parsed[1], index)
            transformer.visit(parsed[0])
            found.update(transformer.recorded)
    return found


def instrument_source(source: str, cell_index: int) -> str | None:
    """The cell's code with every assert comparison recorded, or None where nothing changes or it cannot be parsed."""
    parsed = _parse(source)
    if parsed is None:
        return None
    tree, source = parsed
    transformer = _AssertComparisons(source, cell_index)
    tree = ast.fix_missing_locations(transformer.visit(tree))
    if not transformer.count:
        return None
    # a trailing ";" hides the cell's last value in IPython; keep it
    code = ast.unparse(tree) + (";" if source.rstrip().endswith(";") else "")
    try:
        ast.parse(code)
    except SyntaxError:  # ast.unparse could not write it back (never seen): run the cell as it is
        return None
    return code


def instrument_notebook(nb):
    """A copy of ``nb`` with its assert comparisons recorded and the helper's hidden cell first (cell indices shift by 1)."""
    from nbformat.v4 import new_code_cell

    nb = copy.deepcopy(nb)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            cell.source = instrument_source(cell.source, index) or cell.source
    hidden = new_code_cell(helper_cell_source(), metadata={"tags": ["robustness-helper"], "jupyter": {"source_hidden": True}})
    nb.cells.insert(0, hidden)
    return nb


def aggregate(records: list[dict]) -> list[dict]:
    """One entry per (cell, comparison source): how often it ran and failed, and its worst case (least margin)."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["cell"], r["source"]), []).append(r)
    entries = []
    for (cell, source), rows in groups.items():
        failed = [r for r in rows if r["passed"] is not True]
        numeric = [r for r in rows if r["margin"] is not None]
        worst = min(numeric, key=lambda r: r["margin"]) if numeric else (failed or rows)[0]
        entry = {"cell": cell, "source": source, "op": worst["op"], "count": len(rows), "failed": len(failed),
                 "passed": not failed, "left": worst["left"], "right": worst["right"], "margin": worst["margin"]}
        entries.append(entry | {k: worst[k] for k in ("left_value", "right_value") if k in worst})
    return sorted(entries, key=lambda e: e["cell"])


# ---------------------------------------------------------------- running the matrix

def notebook_key(path: Path) -> str:
    """``lectures/01_attention`` for lectures/01_attention.ipynb."""
    return f"{path.parent.name}/{path.stem}"


def result_path(results: Path, slug: str, cell: str, notebook: Path) -> Path:
    """``<results>/<machine>/<cell>/<folder>__<name>.json``."""
    return Path(results) / slug / cell / f"{notebook.parent.name}__{notebook.stem}.json"


def default_notebooks() -> list[Path]:
    """All lectures and solutions of the course, in course order."""
    return sorted((ROOT / "lectures").glob("*.ipynb")) + sorted((ROOT / "solutions").glob("*.ipynb"))


def select_notebooks(patterns: list[str] | None) -> list[Path]:
    """Notebook paths, or names matched against the course's (``01_attention`` picks the lecture and the solution)."""
    if not patterns:
        return default_notebooks()
    chosen = []
    for pattern in patterns:
        matches = [Path(pattern).resolve()] if Path(pattern).is_file() else [
            p for p in default_notebooks() if pattern in f"{p.parent.name}/{p.name}"]
        if not matches:
            raise ValueError(f"no notebook matches {pattern!r}; give a path or part of e.g. lectures/01_attention.ipynb")
        chosen += [p for p in matches if p not in chosen]
    return chosen


def execute(nb, cwd: Path, env: dict, timeout: float) -> str | None:
    """Run ``nb`` in place in a fresh kernel, errors allowed, ``timeout`` seconds in all; why it stopped early, or None."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    deadline, current = time.monotonic() + timeout, {"index": 0}
    client = NotebookClient(nb, kernel_name="python3", allow_errors=True,
                            timeout_func=lambda cell: max(1, int(deadline - time.monotonic())),
                            on_cell_execute=lambda cell, cell_index: current.update(index=cell_index - 1))
    try:
        client.execute(cwd=str(cwd), env=env, stderr=subprocess.DEVNULL)
    except CellTimeoutError:
        return f"timed out in cell {current['index']} ({timeout:g} s per notebook)"
    except DeadKernelError:
        return f"the kernel died in cell {current['index']}"
    return None  # anything else (no kernel could start) is raised: it is this machine's fault, not a result


def cell_errors(nb) -> list[dict]:
    """Each errored cell of an executed instrumented notebook: (index in the original notebook, ename, evalue's first line)."""
    errors = []
    for index, cell in enumerate(nb.cells[1:]):
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                evalue = (output.evalue.splitlines() or [""])[0][:300]
                errors.append({"cell": index, "ename": output.ename, "evalue": evalue})
    return errors


def run_one(cell: Cell, notebook: Path, out: Path, timeout: float, machine: dict, capability: str | None) -> dict:
    """Run one notebook in one matrix cell, write its result JSON to ``out`` and return it."""
    import nbformat

    out.parent.mkdir(parents=True, exist_ok=True)
    outcomes = out.with_suffix(".jsonl.tmp")
    outcomes.unlink(missing_ok=True)
    started, start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), time.perf_counter()
    nb = instrument_notebook(nbformat.read(notebook, as_version=4))
    stopped = execute(nb, notebook.resolve().parent, kernel_env(cell, outcomes), timeout)
    records = [json.loads(line) for line in outcomes.read_text().splitlines() if line.strip()] if outcomes.exists() else []
    errors = cell_errors(nb)
    result = {"notebook": notebook_key(notebook), "machine": machine, "cell": cell.name, "numerics": cell.numerics,
              "seed": cell.seed, "model_seed": cell.model_seed, "env": cell_env(cell), "aten_capability": capability,
              "started": started, "seconds": round(time.perf_counter() - start, 1),
              "status": "stopped" if stopped else "failed" if errors else "passed", "stopped": stopped,
              "errors": errors, "asserts": aggregate(records)}
    partial = out.with_suffix(".json.tmp")
    partial.write_text(json.dumps(result, indent=1) + "\n")
    partial.replace(out)  # a result file exists only once complete: an interrupted run leaves nothing to skip
    outcomes.unlink(missing_ok=True)
    return result


def progress_line(done: int, total: int, r: dict) -> str:
    """One line per finished notebook: cell, notebook, seconds, status, asserts and the least margin."""
    failed = sum(not a["passed"] for a in r["asserts"])
    margins = [a for a in r["asserts"] if a["margin"] is not None]
    worst = min(margins, key=lambda a: a["margin"]) if margins else None
    least = f", least margin {worst['margin']:.4g} ({short(worst['source'], 40)})" if worst else ""
    why = f" ({r['stopped']})" if r["stopped"] else ""
    if r["errors"] and not r["stopped"]:
        why = f" (errors in cells {sorted({e['cell'] for e in r['errors']})})"
    return (f"[{done}/{total}] {r['cell']:<13} {r['notebook']:<32} {r['seconds']:7.1f} s  {r['status']}{why}; "
            f"{len(r['asserts'])} asserts, {failed} failed{least}")


def run_matrix(cells: list[Cell], notebooks: list[Path], results: Path = RESULTS, jobs: int = 2,
               timeout: float = 1800, force: bool = False, machine: dict | None = None) -> list[dict]:
    """Run every (cell, notebook) without a result yet (all with ``force``), ``jobs`` at a time; returns the new results."""
    machine = machine or machine_info()
    pairs = [(c, nb) for c in cells for nb in notebooks]
    done = [(c, nb) for c, nb in pairs if result_path(results, machine["slug"], c.name, nb).exists()]
    todo = pairs if force else [pair for pair in pairs if pair not in done]
    print(f"{machine['slug']}: {len(todo)} notebook runs to do, {len(done)} of {len(pairs)} have a result "
          f"{'(rerun: --force)' if force else '(skipped; --force reruns them)'}; results in {results}", flush=True)
    failed_builds = {k for k in {c.model_seed for c, _ in todo} - {None} if not ensure_models(k)}
    todo = [(c, nb) for c, nb in todo if c.model_seed not in failed_builds]
    capabilities = {numerics: aten_capability(c) for numerics, c in {c.numerics: c for c, _ in todo}.items()}
    finished = []
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        futures = [pool.submit(run_one, c, nb, result_path(results, machine["slug"], c.name, nb), timeout, machine,
                               capabilities[c.numerics]) for c, nb in todo]
        try:
            for future in as_completed(futures):
                finished.append(future.result())
                print(progress_line(len(finished), len(todo), finished[-1]), flush=True)
        except BaseException:  # an error or Ctrl-C: drop the queued notebooks; the running ones finish and are kept
            pool.shutdown(cancel_futures=True)
            raise
    return finished


# ---------------------------------------------------------------- the report

def load_results(results: Path = RESULTS) -> list[dict]:
    """Every result file under ``results``."""
    return [json.loads(p.read_text()) for p in sorted(Path(results).glob("*/*/*.json"))]


def spread(values: list[float]) -> dict | None:
    """Median, min and max of the values (None when there are none)."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)} if values else None


def missing_cells(results: list[dict], notebooks: list[str]) -> dict[str, dict[str, list[str]]]:
    """Per machine, per cell of its full matrix: the notebooks without a result."""
    done, machines = {}, {}
    for r in results:
        machines[r["machine"]["slug"]] = r["machine"]
        done.setdefault(r["machine"]["slug"], set()).add((r["cell"], r["notebook"]))
    missing = {}
    for slug, machine in machines.items():
        for cell in default_cells(machine["avx512f"]):
            absent = [nb for nb in notebooks if (cell, nb) not in done[slug]]
            if absent:
                missing.setdefault(slug, {})[cell] = absent
    return missing


def summarize_asserts(runs: list[dict], current: set[str] | None = None) -> list[dict]:
    """Per (assert cell, comparison) over the runs of one notebook: left value and bound spread, worst margin, passes.

    ``current``: the comparisons the notebook holds today; an assert it no longer holds is left out (None: keep all).
    """
    by_key: dict[tuple, list[tuple[str, dict]]] = {}
    for r in runs:  # keyed by source and occurrence, not cell index: a markdown cell added above must not split rows
        occurrence: dict[str, int] = {}
        for a in sorted(r["asserts"], key=lambda a: a["cell"]):
            if current is not None and a["source"] not in current:
                continue
            occurrence[a["source"]] = occurrence.get(a["source"], -1) + 1
            by_key.setdefault((a["source"], occurrence[a["source"]]), []).append((f"{r['machine']['slug']}:{r['cell']}", a))
    rows = []
    for (source, _), seen in sorted(by_key.items(), key=lambda kv: max(a["cell"] for _, a in kv[1])):
        entries = [a for _, a in seen]
        cell = max(a["cell"] for a in entries)  # the newest notebook's index (cells are only ever added above)
        margins = [a["margin"] for a in entries if a["margin"] is not None]
        rows.append({"cell": cell, "source": source, "op": entries[0]["op"],
                     "left": spread([a["left"] for a in entries if a["left"] is not None]),
                     "bound": spread([a["right"] for a in entries if a["right"] is not None]),
                     "worst_margin": min(margins) if margins else None,
                     "passed": sum(a["passed"] for a in entries), "run": len(entries),
                     "failed_in": [where for where, a in seen if not a["passed"]]})
    return rows


def summarize(results: list[dict], notebooks: list[str]) -> dict:
    """The summary.json content: machines, missing cells, and per notebook its runs and asserts."""
    per_notebook = {}
    for r in results:
        per_notebook.setdefault(r["notebook"], []).append(r)
    summary = {"results": len(results), "machines": {r["machine"]["slug"]: r["machine"] for r in results},
               "missing": missing_cells(results, notebooks), "notebooks": {}}
    for nb in sorted(per_notebook, key=lambda n: (n.split("/")[0] != "lectures", n)):
        runs = per_notebook[nb]
        cells: dict[str, list[str]] = {}
        for r in sorted(runs, key=lambda r: r["cell"]):
            cells.setdefault(r["machine"]["slug"], []).append(r["cell"])
        errors = {}
        for r in runs:
            for e in r["errors"]:
                errors.setdefault(f"cell {e['cell']} {e['ename']}", []).append(f"{r['machine']['slug']}:{r['cell']}")
        summary["notebooks"][nb] = {"cells": cells, "statuses": {s: sum(r["status"] == s for r in runs) for s in
                                                                  sorted({r["status"] for r in runs})},
                                    "seconds": spread([r["seconds"] for r in runs]), "errors": errors,
                                    "stopped": {f"{r['machine']['slug']}:{r['cell']}": r["stopped"] for r in runs if r["stopped"]},
                                    "asserts": summarize_asserts(runs, assert_sources(ROOT / f"{nb}.ipynb"))}
    return summary


def short(text: str, width: int = 60) -> str:
    """Whitespace collapsed and cut to ``width`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def number(x: float | None) -> str:
    """Four significant digits, or a dash."""
    return "–" if x is None else f"{x:.4g}"


def value_cell(s: dict | None, always_range: bool = True) -> str:
    """``median [min, max]``; only the median where the range is one value and not ``always_range``."""
    if s is None:
        return "–"
    if number(s["min"]) == number(s["max"]) and not always_range:
        return number(s["median"])
    return f"{number(s['median'])} [{number(s['min'])}, {number(s['max'])}]"


def missing_line(missing: dict, notebooks: int) -> str:
    """The line on top: which cells of the full matrix lack results, per machine."""
    if not missing:
        return "Missing from the full matrix: nothing (every machine ran every cell of its matrix on every notebook)."
    parts = []
    for slug, cells in missing.items():
        described = [c if len(nbs) == notebooks else f"{c} ({len(nbs)} of {notebooks} notebooks)" for c, nbs in cells.items()]
        parts.append(f"`{slug}`: " + ", ".join(described))
    return "Missing from the full matrix: " + "; ".join(parts) + "."


def markdown(summary: dict, notebooks: int) -> str:
    """The README section between the markers."""
    lines = [f"_Written by `benchmarks/robustness.py report` from {summary['results']} result files; do not edit by hand._",
             "", "Each notebook's rows are the asserts it holds today: runs of an earlier version of it count for the "
             "asserts it kept, and an assert it no longer holds is left out.", "", missing_line(summary["missing"], notebooks), ""]
    for slug, m in summary["machines"].items():
        lines.append(f"- `{slug}`: {m['cpu']}, {m['cores']} cores, AVX-512 {'yes' if m['avx512f'] else 'no'}, "
                     f"AVX512-BF16 {'yes' if m['avx512_bf16'] else 'no'}, AMX {'yes' if m['amx'] else 'no'}, "
                     f"torch {m['torch']}, transformers {m['transformers']}")
    for nb, s in summary["notebooks"].items():
        cells = "; ".join(f"`{slug}`: {', '.join(cs)}" for slug, cs in s["cells"].items())
        statuses = ", ".join(f"{n} {status}" for status, n in s["statuses"].items())
        t = s["seconds"]
        head = f"**{nb}** ({statuses}; {t['median']:.0f} s [{t['min']:.0f}, {t['max']:.0f}]) — cells run: {cells}"
        lines += ["", head, ""]
        lines += ["| cell | assert | left value: median [min, max] | bound | worst margin | passed / run |",
                  "|---:|---|---|---|---:|---:|"] if s["asserts"] else ["No asserts recorded."]
        for a in s["asserts"]:
            failed = f" (failed: {', '.join(a['failed_in'])})" if a["failed_in"] else ""
            source = short(a["source"]).replace("|", "\\|")
            lines.append(f"| {a['cell']} | `{source}` | {value_cell(a['left'])} | {value_cell(a['bound'], False)} "
                         f"| {number(a['worst_margin'])} | {a['passed']}/{a['run']}{failed} |")
        for error, where in s["errors"].items():
            lines.append(f"\nErrored: {error} in {len(where)} runs ({', '.join(where)}).")
        for where, why in s["stopped"].items():
            lines.append(f"\nStopped early in {where}: {why}.")
    return "\n".join(lines)


def outcomes_markdown(summary: dict) -> str:
    """The course's outcome table (docs/outcomes.md): each numeric asserted outcome as median [min, max] over the runs, with its bound."""
    lines = [f"_Written by `benchmarks/robustness.py report` from {summary['results']} notebook runs "
             f"(see [benchmarks/README.md](../benchmarks/README.md) for the matrix); do not edit by hand._", "",
             "| notebook | asserted outcome | measured: median [min, max] | bound | worst margin | held / runs |",
             "|---|---|---|---|---:|---:|"]
    for nb, s in summary["notebooks"].items():
        for a in s["asserts"]:
            if a["left"] is None or a["op"] not in (">", ">=", "<", "<="):
                continue
            source = short(a["source"], 70).replace("|", "\\|")
            lines.append(f"| {nb} | `{source}` | {value_cell(a['left'])} | {value_cell(a['bound'], False)} "
                         f"| {number(a['worst_margin'])} | {a['passed']}/{a['run']} |")
    return "\n".join(lines)


def update_readme(readme: Path, section: str, markers: tuple[str, str] = MARKERS) -> None:
    """Replace the text between ``markers`` in ``readme`` with ``section``."""
    text = readme.read_text()
    start, end = text.find(markers[0]), text.find(markers[1])
    if start < 0 or end < start:
        raise SystemExit(f"{readme} lacks the markers {markers[0]} ... {markers[1]}; add them where the table goes")
    readme.write_text(text[: start + len(markers[0])] + "\n" + section + "\n" + text[end:])


def report(results: Path = RESULTS, summary_path: Path = SUMMARY, readme: Path = README,
           notebooks: list[str] | None = None, course_readme: Path | None = COURSE_README) -> dict:
    """Gather every result into ``summary_path``, the robustness section and the course's outcome table."""
    notebooks = notebooks or [notebook_key(p) for p in default_notebooks()]
    summary = summarize(load_results(results), notebooks)
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    section = markdown(summary, len(notebooks))
    update_readme(readme, section)
    if course_readme is not None:
        update_readme(course_readme, outcomes_markdown(summary), OUTCOME_MARKERS)
    print(section)
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the matrix (or part of it); finished (cell, notebook) pairs are skipped")
    run.add_argument("--cells", help="comma-separated cells, e.g. native-s0,avx2-s1,native-s0-m1 (default: the full matrix)")
    run.add_argument("--notebooks", nargs="+", help="notebook paths or parts of names, e.g. 01_attention (default: all)")
    run.add_argument("--jobs", type=int, default=2, help="notebooks run in parallel (default 2)")
    run.add_argument("--timeout", type=float, default=1800, help="seconds allowed per notebook (default 1800)")
    run.add_argument("--force", action="store_true", help="rerun pairs that already have a result")
    run.add_argument("--results", type=Path, default=RESULTS, help=f"results folder (default {RESULTS.relative_to(ROOT)})")
    rep = commands.add_parser("report", help="write summary.json and the table in benchmarks/README.md")
    rep.add_argument("--results", type=Path, default=RESULTS, help="results folder")
    rep.add_argument("--summary", type=Path, default=SUMMARY, help="where summary.json goes")
    rep.add_argument("--readme", type=Path, default=README, help="the README whose robustness section is rewritten")
    args = parser.parse_args(argv)
    if args.command == "report":
        report(args.results, args.summary, args.readme)
        return
    machine = machine_info()
    try:
        names = args.cells.split(",") if args.cells else default_cells(machine["avx512f"])
        cells = [parse_cell(name, machine["avx512f"]) for name in names]
        notebooks = select_notebooks(args.notebooks)
    except ValueError as exc:
        parser.error(str(exc))
    run_matrix(cells, notebooks, args.results, args.jobs, args.timeout, args.force, machine)
    print(f"next: {sys.executable} benchmarks/robustness.py report")


if __name__ == "__main__":
    main()
