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
