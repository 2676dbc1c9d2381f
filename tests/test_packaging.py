"""environment.yml's pip list mirrors pyproject.toml, and the console script is wired up."""
import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

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
