"""The package's shape holds: notebook-side code never depends on the instructor's tools, and the
bitsandbytes CPU-kernel notice is kept out of students' outputs."""
import ast
import logging
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "course_utils"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_notebook_side_modules_do_not_import_the_instructor_tools():
    notebook_side = [p for p in PACKAGE.rglob("*.py") if "instructor" not in p.parts and p.name != "cli.py"]
    assert len(notebook_side) > 10
    for path in notebook_side:
        bad = [n for n in _imports(path) if "instructor" in n]
        assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}: notebooks' helpers must not need the grader"


def test_world_does_not_depend_on_checks():
    for path in (PACKAGE / "world").glob("*.py"):
        assert not [n for n in _imports(path) if "checks" in n], f"{path.name}: the world must not import checks"


def test_bitsandbytes_kernel_notice_is_silenced():
    import course_utils  # noqa: F401

    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    assert not logger.isEnabledFor(logging.WARNING), "the kernels-community notice would reach notebooks"
    assert logger.isEnabledFor(logging.ERROR), "real bitsandbytes errors must still show"


def test_world_holds_data_generators_only():
    """The world makes data; the models trained on it (course_utils.models) and the lessons sit above it."""
    for path in (PACKAGE / "world").glob("*.py"):
        outside = [n for n in _imports(path) if n.startswith("..") or (n.startswith("course_utils")
                                                                      and not n.startswith("course_utils.world"))]
        assert not outside, f"world/{path.name} imports {outside}: the world must not depend on models or lessons"
