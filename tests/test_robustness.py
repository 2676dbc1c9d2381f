"""benchmarks/robustness.py: assert comparisons recorded through the real nbclient path, resumable runs, the report."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "robustness.py"


def load_robustness():
    spec = importlib.util.spec_from_file_location("robustness", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["robustness"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


rb = load_robustness()
MACHINE = {"cpu": "Test CPU", "avx512f": True, "avx512_bf16": False, "amx": False, "cores": 2, "python": "3.11",
           "torch": "2.13.0", "transformers": "5.25.0", "slug": "test-cpu-avx512-2c"}

TOY = [
    new_markdown_cell("# toy"),
    new_code_cell("x = 5\nassert x >= 3, 'x too small'"),                                    # 1: passes, margin 2
    new_code_cell("y = 1.5\nassert y >= 2, f'y is {y}, want >= 2, got less'"),                # 2: fails, margin -0.5
    new_code_cell("calls = []\ndef mid():\n    calls.append(1)\n    return 0.5\n"
                  "assert 0.25 <= mid() <= 1, 'out of range'\nassert len(calls) == 1"),      # 3: chain, mid() once
    new_code_cell("import numpy as np, torch\nxs = [np.float32(0.5), torch.tensor(0.25), 2]\n"
                  "assert all(x > 0 for x in xs)"),                                          # 4: worst of 3 is 0.25
    new_code_cell("assert 'cat' == 'cat', 'strings'"),                                       # 5: non-numeric
    new_code_cell("%time z = 3\nassert z < 4"),                                              # 6: magic, margin 1
    new_code_cell("import os, course_utils\nprint(open('data.txt').read())\n"
                  "assert os.environ['COURSE_SEED'] == '1'\nassert os.environ['OMP_NUM_THREADS'] == '1'\n"
                  "assert os.environ['COURSE_PROFILE'] == 'ci'\n"
                  "assert course_utils.__file__.startswith(os.environ['PYTHONPATH'].split(os.pathsep)[0])"),
    new_code_cell("assert bool(calls)\nassert 'make_recorder' not in globals()"),             # 8: no comparison
    new_code_cell("t = torch.tensor([1, 2])\nassert not (t == 5).any()"),                      # 9: element-wise
]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """The toy notebooks run through run_matrix in cell native-s1, two kernels in parallel."""
    root = tmp_path_factory.mktemp("course")
    (root / "lectures").mkdir()
    (root / "lectures" / "data.txt").write_text("read from the notebook's folder")
    nbformat.write(new_notebook(cells=TOY), root / "lectures" / "01_toy.ipynb")
    nbformat.write(new_notebook(cells=[new_code_cell("assert 2 > 1")]), root / "lectures" / "02_tiny.ipynb")
    sources = {p: p.read_text() for p in (root / "lectures").glob("*.ipynb")}
    notebooks = sorted(sources)
    finished = rb.run_matrix([rb.parse_cell("native-s1", True)], notebooks, root / "results", jobs=2, timeout=120,
                             machine=MACHINE)
    return {"root": root, "finished": finished, "sources": sources, "notebooks": notebooks,
            "result": json.loads(rb.result_path(root / "results", MACHINE["slug"], "native-s1", notebooks[0]).read_text())}


def by_source(result):
    return {a["source"]: a for a in result["asserts"]}


def test_every_assert_comparison_is_recorded_with_its_values_and_margin(toy_run):
    asserts = by_source(toy_run["result"])
    assert (asserts["x >= 3"]["left"], asserts["x >= 3"]["right"], asserts["x >= 3"]["margin"]) == (5.0, 3.0, 2.0)
    assert asserts["x >= 3"]["cell"] == 1 and asserts["x >= 3"]["passed"]
    assert asserts["y >= 2"]["margin"] == pytest.approx(-0.5) and not asserts["y >= 2"]["passed"]
    assert asserts["0.25 <= mid()"]["margin"] == pytest.approx(0.25) and asserts["mid() <= 1"]["margin"] == 0.5
    assert asserts["len(calls) == 1"]["passed"]  # the middle of the chain was evaluated once
    assert asserts["x > 0"]["count"] == 3 and asserts["x > 0"]["margin"] == pytest.approx(0.25)
    assert asserts["x > 0"]["left"] == pytest.approx(0.25)  # the torch 0-dim tensor, the worst of the three
    assert asserts["z < 4"]["cell"] == 6 and asserts["z < 4"]["margin"] == 1.0
    strings = asserts["'cat' == 'cat'"]
    assert strings["passed"] and strings["margin"] is None and strings["left_value"] == "'cat'"
    assert asserts["bool(calls)"]["op"] == "holds" and asserts["bool(calls)"]["passed"]
    assert asserts["'make_recorder' not in globals()"]["passed"]  # the hidden cell leaves only the helper behind
    assert "t == 5" not in asserts, "an element-wise comparison is an intermediate tensor, not an outcome"


def test_a_failing_assert_fails_its_cell_and_later_cells_still_run(toy_run):
    result = toy_run["result"]
    assert result["status"] == "failed" and result["stopped"] is None
    assert result["errors"] == [{"cell": 2, "ename": "AssertionError", "evalue": "y is 1.5, want >= 2, got less"}]
    assert {a["cell"] for a in result["asserts"]} == {1, 2, 3, 4, 5, 6, 7, 8}


def test_the_kernel_runs_in_the_ci_profile_with_the_cells_seed_and_this_checkout(toy_run):
    result = toy_run["result"]
    environment = [a for a in result["asserts"] if a["cell"] == 7]
    assert len(environment) == 4 and all(a["passed"] for a in environment), environment
    assert result["env"] == {"COURSE_PROFILE": "ci", "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
                             "COURSE_SEED": "1"}
    assert (result["cell"], result["seed"], result["notebook"]) == ("native-s1", 1, "lectures/01_toy")


def test_the_notebooks_on_disk_are_untouched(toy_run):
    assert {p: p.read_text() for p in toy_run["sources"]} == toy_run["sources"]
    tiny = json.loads(rb.result_path(toy_run["root"] / "results", MACHINE["slug"], "native-s1",
                                     toy_run["notebooks"][1]).read_text())
    assert tiny["status"] == "passed" and tiny["asserts"][0]["margin"] == 1.0


def test_a_notebook_past_its_timeout_is_stopped_with_what_it_recorded(tmp_path):
    (tmp_path / "lectures").mkdir()
    notebook = tmp_path / "lectures" / "03_slow.ipynb"
    cells = [new_code_cell("assert 1 < 2"), new_code_cell("import time\ntime.sleep(120)"), new_code_cell("assert 3 > 2")]
    nbformat.write(new_notebook(cells=cells), notebook)
    result, = rb.run_matrix([rb.Cell("native", 0)], [notebook], tmp_path / "results", timeout=12, machine=MACHINE)
    assert result["status"] == "stopped" and result["stopped"].startswith("timed out in cell 1"), result["stopped"]
    assert [a["source"] for a in result["asserts"]] == ["1 < 2"] and result["seconds"] < 60


def test_finished_pairs_are_skipped_unless_forced(toy_run, monkeypatch, capsys):
    results, notebooks = toy_run["root"] / "results", toy_run["notebooks"]
    ran = []

    def fake_run_one(cell, notebook, out, *args):
        ran.append((cell.name, notebook.name))
        return {**toy_run["result"], "cell": cell.name}

    monkeypatch.setattr(rb, "run_one", fake_run_one)
    monkeypatch.setattr(rb, "aten_capability", lambda cell: "avx512")
    cells = [rb.parse_cell("native-s1", True), rb.parse_cell("avx2-s0", True)]
    rb.run_matrix(cells, notebooks, results, machine=MACHINE)
    assert sorted(ran) == [("avx2-s0", "01_toy.ipynb"), ("avx2-s0", "02_tiny.ipynb")]
    assert "2 notebook runs to do, 2 of 4 have a result (skipped" in capsys.readouterr().out
    ran.clear()
    rb.run_matrix(cells[:1], notebooks, results, machine=MACHINE, force=True)
    assert sorted(ran) == [("native-s1", "01_toy.ipynb"), ("native-s1", "02_tiny.ipynb")]


def test_an_interrupted_result_does_not_count_as_done(tmp_path, monkeypatch):
    notebook = tmp_path / "lectures" / "01_x.ipynb"
    out = rb.result_path(tmp_path / "results", MACHINE["slug"], "native-s0", notebook)
    out.parent.mkdir(parents=True)
    out.with_suffix(".json.tmp").write_text("{")
    ran = []
    monkeypatch.setattr(rb, "run_one", lambda cell, nb, *args: ran.append(nb) or {**synthetic("native-s0", [])})
    monkeypatch.setattr(rb, "aten_capability", lambda cell: None)
    rb.run_matrix([rb.parse_cell("native-s0", True)], [notebook], tmp_path / "results", machine=MACHINE)
    assert ran == [notebook]


def test_model_cells_build_their_models_once_and_are_left_out_when_that_fails(tmp_path, monkeypatch):
    commands, ran = [], []
    monkeypatch.setattr(rb, "models_dir", lambda k: tmp_path / f"models-seed{k}")
    monkeypatch.setattr(rb.subprocess, "run", lambda command, **kw: commands.append(command) or
                        subprocess.CompletedProcess(command, 1))
    monkeypatch.setattr(rb, "run_one", lambda cell, nb, *args: ran.append(cell.name) or synthetic(cell.name, []))
    monkeypatch.setattr(rb, "aten_capability", lambda cell: None)
    notebooks = [tmp_path / "lectures" / "01_x.ipynb", tmp_path / "solutions" / "01_x.ipynb"]
    cells = [rb.parse_cell("native-s0", True), rb.parse_cell("native-s0-m3", True)]
    rb.run_matrix(cells, notebooks, tmp_path / "results", machine=MACHINE)
    assert ran == ["native-s0", "native-s0"]
    assert commands == [[sys.executable, "-m", "course_utils", "models", "build", "--seed", "3",
                         "--out", str(tmp_path / "models-seed3")]]
    (tmp_path / "models-seed3").mkdir()
    (tmp_path / "models-seed3" / "manifest.json").write_text("{}")
    commands.clear()
    rb.run_matrix(cells, notebooks, tmp_path / "results", machine=MACHINE)
    assert commands == [] and ran[2:].count("native-s0-m3") == 2  # (the stub writes no results: native-s0 reruns)


def test_an_error_outside_the_notebooks_stops_the_run_without_starting_the_rest(tmp_path, monkeypatch):
    ran = []

    def broken(cell, notebook, *args):
        ran.append(notebook)
        raise RuntimeError("No such kernel named python3")

    monkeypatch.setattr(rb, "run_one", broken)
    monkeypatch.setattr(rb, "aten_capability", lambda cell: None)
    notebooks = [tmp_path / "lectures" / f"0{i}_x.ipynb" for i in range(1, 5)]
    with pytest.raises(RuntimeError, match="No such kernel"):
        rb.run_matrix([rb.Cell("native", 0)], notebooks, tmp_path / "results", jobs=1, machine=MACHINE)
    assert len(ran) < len(notebooks) and not (tmp_path / "results").exists()


def test_cells_and_their_environments():
    assert rb.parse_cell("avx2-s1-m2", True) == rb.Cell("avx2", 1, 2)
    assert rb.cell_env(rb.Cell("avx2", 1))["ATEN_CPU_CAPABILITY"] == "avx2"
    assert rb.cell_env(rb.Cell("native", 0, 1))["COURSE_MODELS_DIR"].endswith("build/robustness/models-seed1")
    assert rb.default_cells(True) == ["native-s0", "native-s1", "native-s2", "avx2-s0", "avx2-s1", "avx2-s2",
                                      "native-s0-m1"]
    assert rb.default_cells(False)[3] == "avx-s0" and rb.cell_env(rb.Cell("avx", 0))["MKL_ENABLE_INSTRUCTIONS"] == "AVX"
    with pytest.raises(ValueError, match="no AVX-512"):
        rb.parse_cell("avx2-s0", False)
    with pytest.raises(ValueError, match="native-s0"):
        rb.parse_cell("fast-s0", True)


def test_native_drops_inherited_numerics_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    assert "MKL_ENABLE_INSTRUCTIONS" not in rb.kernel_env(rb.Cell("native", 0), tmp_path / "o.jsonl")
    assert rb.kernel_env(rb.Cell("avx", 0), tmp_path / "o.jsonl")["MKL_ENABLE_INSTRUCTIONS"] == "AVX"


def test_machine_reads_cpu_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: Intel(R) Xeon(R) Platinum 8480C\nflags\t\t: fpu avx2 avx512f amx_tile\n")
    name, flags = rb.cpu_info(cpuinfo)
    assert name == "Intel(R) Xeon(R) Platinum 8480C" and {"avx512f", "amx_tile"} <= flags
    info = {"cpu": name, "amx": True, "avx512f": True, "cores": 2}
    assert rb.machine_slug(info) == "intel-xeon-platinum-8480c-amx-2c"


# ---------------------------------------------------------------- the report, on synthetic results

def synthetic(cell, asserts, notebook="lectures/01_x", machine=MACHINE, seconds=10.0, errors=()):
    return {"notebook": notebook, "machine": machine, "cell": cell, "seconds": seconds, "errors": list(errors),
            "status": "failed" if errors else "passed", "stopped": None, "asserts": asserts}


def outcome(left, right, source="purity > 3 * chance", cell=7):
    return {"cell": cell, "source": source, "op": ">", "count": 1, "failed": int(left <= right),
            "passed": left > right, "left": left, "right": right, "margin": left - right}


@pytest.fixture
def written(tmp_path):
    """Synthetic results on one AVX-512 machine, reported into a README with markers."""
    results = tmp_path / "results"
    runs = [synthetic("native-s0", [outcome(0.6, 0.3), outcome(2.0, 1.0, "loss_drop > 1", cell=9)], seconds=10),
            synthetic("native-s1", [outcome(0.9, 0.3), outcome(1.5, 1.0, "loss_drop > 1", cell=9)], seconds=30),
            synthetic("avx2-s0", [outcome(0.5, 0.35), outcome(0.9, 1.0, "loss_drop > 1", cell=9)], seconds=20,
                      errors=[{"cell": 9, "ename": "AssertionError", "evalue": "no drop"}])]
    for r in runs:
        path = results / MACHINE["slug"] / r["cell"] / "lectures__01_x.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(r))
    readme = tmp_path / "README.md"
    readme.write_text(f"# Benchmarks\n\nprose before\n\n{rb.MARKERS[0]}\nold table\n{rb.MARKERS[1]}\n\nprose after\n")
    course = tmp_path / "COURSE.md"
    course.write_text(f"# Course\n\n{rb.OUTCOME_MARKERS[0]}\nold outcomes\n{rb.OUTCOME_MARKERS[1]}\n")
    summary = rb.report(results, tmp_path / "summary.json", readme, ["lectures/01_x", "solutions/01_x"], course)
    return {"summary": summary, "readme": readme.read_text(), "path": tmp_path / "summary.json",
            "course": course.read_text()}


def test_report_gives_median_range_bound_and_worst_margin(written):
    purity, drop = written["summary"]["notebooks"]["lectures/01_x"]["asserts"]
    assert purity["left"] == {"median": 0.6, "min": 0.5, "max": 0.9}
    assert purity["bound"] == {"median": 0.3, "min": 0.3, "max": 0.35}
    assert purity["worst_margin"] == pytest.approx(0.15) and (purity["passed"], purity["run"]) == (3, 3)
    assert drop["worst_margin"] == pytest.approx(-0.1) and (drop["passed"], drop["run"]) == (2, 3)
    assert drop["failed_in"] == [f"{MACHINE['slug']}:avx2-s0"]
    assert json.loads(written["path"].read_text()) == json.loads(json.dumps(written["summary"]))


def test_report_names_the_missing_cells(written):
    missing = written["summary"]["missing"][MACHINE["slug"]]
    assert missing["native-s0"] == ["solutions/01_x"]  # ran the lecture only
    assert set(missing) == {"native-s0", "native-s1", "native-s2", "avx2-s0", "avx2-s1", "avx2-s2", "native-s0-m1"}
    assert "native-s2, " in written["readme"] and "native-s0 (1 of 2 notebooks)" in written["readme"]


def test_report_rewrites_only_the_marked_section(written):
    readme = written["readme"]
    assert readme.startswith("# Benchmarks\n\nprose before\n\n") and readme.endswith("\n\nprose after\n")
    assert "old table" not in readme
    assert "| 7 | `purity > 3 * chance` | 0.6 [0.5, 0.9] | 0.3 [0.3, 0.35] | 0.15 | 3/3 |" in readme
    assert "| 9 | `loss_drop > 1` | 1.5 [0.9, 2] | 1 | -0.1 | 2/3 (failed: test-cpu-avx512-2c:avx2-s0) |" in readme
    assert "native-s0, native-s1, avx2-s0" not in readme  # cells are listed sorted
    assert "`test-cpu-avx512-2c`: avx2-s0, native-s0, native-s1" in readme
    assert "Errored: cell 9 AssertionError in 1 runs" in readme


def test_report_writes_the_course_readme_outcome_table(written):
    course = written["course"]
    assert "old outcomes" not in course and "from 3 notebook runs" in course
    assert "| lectures/01_x | `purity > 3 * chance` | 0.6 [0.5, 0.9] | 0.3 [0.3, 0.35] | 0.15 | 3/3 |" in course


def test_an_assert_keeps_one_row_when_cells_are_added_above_it():
    """Runs before and after a markdown cell was inserted: the same assert, one row; a repeated source, two rows."""
    old = synthetic("native-s0", [outcome(0.6, 0.3, cell=7), outcome(0.1, 0.0, "err < 1", cell=9),
                                  outcome(0.2, 0.0, "err < 1", cell=12)])
    new = synthetic("native-s1", [outcome(0.8, 0.3, cell=8), outcome(0.3, 0.0, "err < 1", cell=10),
                                  outcome(0.4, 0.0, "err < 1", cell=13)])
    rows = rb.summarize_asserts([old, new])
    assert [(r["source"], r["cell"], r["run"]) for r in rows] == [
        ("purity > 3 * chance", 8, 2), ("err < 1", 10, 2), ("err < 1", 13, 2)]
    assert rows[2]["left"] == {"median": pytest.approx(0.3), "min": 0.2, "max": 0.4}


def test_an_assert_the_notebook_no_longer_holds_is_left_out(tmp_path):
    """Runs of an older version of a notebook keep counting for the asserts it still holds, and only for those."""
    old = synthetic("native-s0", [outcome(0.6, 0.3, cell=7), outcome(0.1, 0.0, "err < 1", cell=9)])
    new = synthetic("native-s1", [outcome(0.8, 0.3, cell=7)])
    rows = rb.summarize_asserts([old, new], current={"purity > 3 * chance"})
    assert [(r["source"], r["run"]) for r in rows] == [("purity > 3 * chance", 2)]
    nb = tmp_path / "nb.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "%matplotlib inline\nassert purity > 3 * chance, 'why'\nassert 0 < err < 1\nassert torch.allclose(a, b)")]), nb)
    assert rb.assert_sources(nb) == {"purity > 3 * chance", "0 < err", "err < 1", "torch.allclose(a, b)"}
    assert rb.assert_sources(tmp_path / "missing.ipynb") is None


def test_report_refuses_a_readme_without_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    with pytest.raises(SystemExit, match="lacks the markers"):
        rb.update_readme(readme, "table")


def test_the_course_outcome_table_lives_in_docs_between_its_markers():
    text = rb.COURSE_README.read_text()
    assert rb.COURSE_README == rb.ROOT / "docs" / "outcomes.md"
    assert text.index(rb.OUTCOME_MARKERS[0]) < text.index(rb.OUTCOME_MARKERS[1])
    assert "(docs/outcomes.md)" in (rb.ROOT / "README.md").read_text(), "the README links to the table"
