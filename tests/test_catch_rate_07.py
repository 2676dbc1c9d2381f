"""Lab 07 wrong submissions found by re-measuring the catch rate (issue 24 §6): each loses its exercise's check."""
import math
from pathlib import Path

import pytest
import torch

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


def test_the_solution_passes_double_quantization(sol):
    for seed in (0, 9, 31):
        checks.check_double_quant(sol["double_quantize"], sol["double_dequantize"], seed=seed)


def test_absmax2_as_the_largest_signed_value_loses(sol):
    def signed_absmax2(absmax, blocksize=256):
        offset = absmax.mean()
        n_blocks = math.ceil(absmax.numel() / blocksize)
        padded = torch.nn.functional.pad(absmax - offset, (0, n_blocks * blocksize - absmax.numel())).view(n_blocks, -1)
        absmax2 = padded.max(dim=1).values  # the largest value, not the largest |value|
        scaled = (padded / absmax2[:, None]).reshape(-1)[: absmax.numel()]
        codes = (scaled[:, None] - sol["DYNAMIC"][None, :]).abs().argmin(dim=1).to(torch.uint8)
        return codes, absmax2, offset

    for seed in (0, 9):
        with pytest.raises(CheckError, match="absmax2 .the nested absmax.: values differ"):
            checks.check_double_quant(signed_absmax2, sol["double_dequantize"], seed=seed)
