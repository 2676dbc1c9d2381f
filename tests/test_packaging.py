"""environment.yml's pip list mirrors pyproject.toml, dependency ranges are tested ones, and the console
script is wired up."""
import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower()


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _environment_pip() -> list[str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    return [line.strip()[2:] for line in lines[start + 1:] if line.strip().startswith("- ") and "-e" not in line]


def test_environment_yml_mirrors_pyproject():
    project = _pyproject()["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["dev"]
    assert sorted(_environment_pip()) == sorted(wanted), (
        "environment.yml's pip list and pyproject.toml (dependencies + dev extras) differ: edit both together")


def test_environment_yml_installs_the_course_package():
    assert "- -e ." in (ROOT / "environment.yml").read_text(), "environment.yml must install the course itself"


def test_console_script_points_at_cli_main():
    from course_utils import cli

    assert _pyproject()["project"]["scripts"]["course"] == "course_utils.cli:main"
    assert callable(cli.main)


def test_every_subcommand_module_has_the_cli_interface():
    import importlib

    from course_utils.cli import SUBCOMMANDS

    for module, _ in SUBCOMMANDS.values():
        mod = importlib.import_module(f"course_utils.{module}")
        assert callable(getattr(mod, "add_arguments", None)) and callable(getattr(mod, "main", None)), module


def test_every_dependency_has_a_tested_lower_bound_and_a_cap():
    project = _pyproject()["project"]
    for line in project["dependencies"] + project["optional-dependencies"]["dev"]:
        req = Requirement(line)
        ops = {spec.operator for spec in req.specifier}
        assert ops == {">=", "<"}, f"{line}: give a lower bound (the version CI runs) and a cap (the next major)"
        installed = metadata.version(req.name)
        assert req.specifier.contains(installed, prereleases=True), (
            f"{req.name} {installed} is installed here but {line} excludes it: the range must hold the tested version")
        lower = next(s.version for s in req.specifier if s.operator == ">=")
        cap = next(s.version for s in req.specifier if s.operator == "<")
        assert cap == str(int(lower.split(".")[0]) + 1), f"{line}: cap at the next major release ({lower} -> <{cap}?)"


def test_the_ref_colab_installs_exists_in_this_repository():
    """Setup cells install llm-course at course_utils.REF; a ref that does not exist breaks every Colab run."""
    import shutil
    import subprocess

    import pytest

    from course_utils import REF

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    found = [ref for ref in (REF, f"origin/{REF}", f"refs/tags/{REF}")
             if subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], cwd=ROOT,
                               capture_output=True).returncode == 0]
    assert found, f"course_utils.REF = {REF!r} is neither a branch nor a tag of this repository: create it or fix REF"


def test_the_package_version_is_defined_once():
    import course_utils

    project = _pyproject()["project"]
    assert "version" not in project and "version" in project["dynamic"], "pyproject must read the version"
    assert _pyproject()["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "course_utils.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", course_utils.__version__)
