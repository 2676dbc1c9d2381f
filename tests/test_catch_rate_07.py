"""Lab 07 wrong submissions found by re-measuring the catch rate (issue 24 §6): each loses its exercise's check."""
from pathlib import Path

import pytest

from course_utils.checks import CheckError
from course_utils.checks import lora as checks
from notebook_helpers import solution_namespace

SOLUTION = Path(__file__).resolve().parents[1] / "solutions" / "07_lora_qlora.ipynb"


@pytest.fixture(scope="module")
def sol():
    return solution_namespace(SOLUTION, "checks import lora")


def test_the_solution_passes_add_lora(sol):
    checks.check_add_lora(sol["add_lora"])


def test_module_names_matched_without_the_dot_boundary_lose(sol):
    def suffix_match(model, target_modules, r, alpha):
        model.requires_grad_(False)
        for name in [n for n, _ in model.named_modules() if n and n.endswith(tuple(target_modules))]:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, sol["LoRALinear"](model.get_submodule(name), r, alpha))
        return model

    with pytest.raises(CheckError, match="wrapped but should not be: .*c_proj"):
        checks.check_add_lora(suffix_match)
