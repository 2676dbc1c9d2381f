"""requirements-lock.txt pins pyproject.toml's dependencies (inside its ranges, with hashes, torch agreeing with the
Makefile), environment.yml leaves the libraries to it, dependency ranges are tested ones, and the console script is
wired up."""
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


LOCK = ROOT / "requirements-lock.txt"


def _environment_yml() -> str:
    return (ROOT / "environment.yml").read_text()


def _environment_dependencies() -> list[str]:
    """environment.yml's top-level `dependencies:` entries (conda packages, and `pip:` if it has one)."""
    lines = _environment_yml().splitlines()
    start = lines.index("dependencies:")
    return [line.strip()[2:] for line in lines[start + 1:] if line.startswith("  - ")]


def _lock_entries() -> dict[str, tuple[str, str, int]]:
    """requirements-lock.txt as {name: (version, environment marker, number of hashes)}."""
    entries: dict[str, list] = {}
    name = None
    for line in LOCK.read_text().splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            pin, _, marker = line.rstrip(" \\").partition(" ; ")
            name, version = pin.split("==")
            assert name.lower() not in entries, f"{name} is pinned twice in the lock"
            name = name.lower()
            entries[name] = [version, marker, 0]
        elif line.strip().startswith("--hash=sha256:") and name is not None:
            entries[name][2] += 1
    return {key: tuple(value) for key, value in entries.items()}


def _lock_comment(prefix: str) -> str:
    return next(line.removeprefix(prefix) for line in LOCK.read_text().splitlines() if line.startswith(prefix))


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_environment_yml_leaves_every_library_to_the_lock():
    """conda gives Python and pip only; `make install VENV="$CONDA_PREFIX"` installs the lock into the env, so
    environment.yml cannot drift from pyproject.toml or from what CI tested."""
    assert sorted(_environment_dependencies()) == ["pip", "python=3.11"], (
        "environment.yml lists libraries of its own: leave them to requirements-lock.txt (make install)")
    assert "make install VENV=\"$CONDA_PREFIX\"" in _environment_yml()
    assert "for Python 3.11+" in LOCK.read_text()[:1000], "environment.yml's python=3.11 must be the lock's Python"


def test_the_lock_pins_every_dependency_inside_pyprojects_range():
    project = _pyproject()["project"]
    entries = _lock_entries()
    torch_pin = Requirement(_lock_comment("# installed by TORCH_SPEC: "))
    build = _pyproject()["build-system"]["requires"]
    for line in project["dependencies"] + project["optional-dependencies"]["dev"] + build:
        req = Requirement(line)
        if _normal(req.name) == "torch":
            version = next(iter(torch_pin.specifier)).version
        else:
            assert _normal(req.name) in entries, f"{req.name} is in pyproject.toml but not in the lock: run `make lock`"
            version = entries[_normal(req.name)][0]
        assert req.specifier.contains(version, prereleases=True), (
            f"the lock pins {req.name}=={version}, outside pyproject's {line}: run `make lock`")


def test_every_lock_entry_is_exact_and_hashed_and_torch_is_left_to_torch_spec():
    entries = _lock_entries()
    assert len(entries) > 100, "the lock looks truncated"
    for name, (version, _, hashes) in entries.items():
        assert re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", version), f"{name}=={version} is not an exact pin"
        assert hashes >= 1, f"{name}=={version} has no hash: `pip install --require-hashes` would refuse the lock"
    cuda = [name for name in entries if name == "torch" or name == "triton" or name.startswith(("nvidia-", "cuda-"))]
    assert not cuda, f"torch and its CUDA-only packages come from TORCH_SPEC, not the lock: {cuda}"


def test_torch_pin_in_the_lock_agrees_with_the_makefiles_torch_spec():
    makefile = (ROOT / "Makefile").read_text()
    spec = re.search(r"^TORCH_SPEC \?= (\S+)$", makefile, re.M).group(1)
    assert _lock_comment("# installed by TORCH_SPEC: ") == spec, (
        "the lock was resolved against another torch than the Makefile installs: run `make lock`")


def test_make_install_installs_the_lock_and_reinstalls_when_it_changes():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^LOCK := requirements-lock\.txt$", makefile, re.M)
    assert re.search(r"^\$\(VENV\)/\.installed: .*\$\(LOCK\)", makefile, re.M), "a refreshed lock must reinstall"
    assert "pip install --require-hashes --no-deps -r $(LOCK)" in makefile
    assert "pip install --no-deps --no-build-isolation -e ." in makefile and "pip check" in makefile


def test_lock_script_leaves_out_only_what_torchs_cuda_build_alone_needs():
    import importlib.util

    spec = importlib.util.spec_from_file_location("lock_script", ROOT / ".ci" / "lock.py")
    lock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lock)
    text = """\
torch==2.13.0 \\
    --hash=sha256:aa
    # via llm-course (pyproject.toml)
sympy==1.14.0 \\
    --hash=sha256:bb
    # via torch
nvidia-cublas==13.1 ; sys_platform == 'linux' \\
    --hash=sha256:cc
    # via
    #   cuda-toolkit
    #   torch
cuda-toolkit==13.0 ; sys_platform == 'linux' \\
    --hash=sha256:dd
    # via torch
nvidia-shared==1.0 ; sys_platform == 'linux' \\
    --hash=sha256:ee
    # via
    #   bitsandbytes
    #   torch
"""
    assert lock.left_out(lock._blocks(text)) == {"torch", "nvidia-cublas", "cuda-toolkit"}


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
