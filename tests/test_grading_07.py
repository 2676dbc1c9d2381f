"""Grading lab 07 end to end: the solution gets full marks, the untouched lab 0, and the mistakes the issue
lists lose exactly the points of the exercises they break, with a message naming the mistake. The third wrong
notebook also wraps the model with PEFT (the oracle) instead of its own add_lora: traced, that exercise loses its
points (a wrong notebook must keep some points, so the bitsandbytes route of double quantization is shown in
tests/test_agent.py instead)."""
from pathlib import Path

import pytest

from course_utils.instructor.notebooks import nbgrader_meta, read_notebook
from course_utils.instructor.release import replace_solution
from notebook_helpers import assert_lost_exactly, total

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "07_lora_qlora.ipynb"
TOTAL = 12


def edit(nb, grade_id, old, new):
    """Copy of ``nb`` whose cell ``grade_id`` has ``old`` replaced by ``new`` (a one-line mistake)."""
    nb = read_notebook(SOLUTION) if nb is None else nb
    cell = next(c for c in nb.cells if nbgrader_meta(c).get("grade_id") == grade_id)
    assert old in cell.source, (grade_id, old)
    cell.source = cell.source.replace(old, new)
    return nb


PEFT_ADD_LORA = """
from peft import LoraConfig, inject_adapter_in_model
config = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(target_modules), lora_dropout=0.0, fan_in_fan_out=True)
return inject_adapter_in_model(config, model)
"""


@pytest.fixture(scope="module")
def gradebook(grade_notebooks):
    lora = "lora_layer_impl"
    wrong_versions = {  # one mistake per exercise at most, so three notebooks cover the list
        # B initialised randomly, NF4 with uniform levels, wrapping without freezing the model, and a pager that
        # evicts first in first out (a state used again is not made the most recently used)
        "random_b_uniform_levels_unfrozen_fifo": edit(
            edit(edit(edit(None, lora, "torch.zeros(out_features, r, dtype=dtype)", "torch.randn(out_features, r, dtype=dtype)"),
                      "nf4_impl", "- NF4[None, :]", "- torch.linspace(-1, 1, 16)[None, :]"),
                 "add_lora_impl", "model.requires_grad_(False)", "pass  # (forgot to freeze the model)"),
            "page_schedule_impl", "device.move_to_end(name)", "pass  # (first in, first out)"),
        # alpha instead of alpha / r, the nibbles in the wrong order, and double quantization without the offset
        "alpha_scaling_nibbles_no_offset": edit(edit(edit(None, lora, "else alpha / r", "else alpha"),
                                                     "nf4_impl", "packed = (codes[0::2] << 4) | codes[1::2]",
                                                     "packed = (codes[1::2] << 4) | codes[0::2]"),
                                                "double_quant_impl", "offset = absmax.mean()", "offset = absmax.mean() * 0"),
        # A and B swapped (A zero, B random), one absmax for the whole tensor, and no room made for the activations;
        # add_lora calls PEFT instead
        "swapped_ab_whole_absmax_peft_called_no_room": replace_solution(
            edit(edit(edit(edit(None, "page_schedule_impl", "paged_out, paged_in = make_room(act), 0",
                                "paged_out, paged_in = 0, 0"), lora, "torch.zeros(out_features, r, dtype=dtype)",
                           "torch.randn(out_features, r, dtype=dtype)"),
                      lora, "nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))", "nn.init.zeros_(self.lora_A)"),
                 "nf4_impl", "absmax = blocks.abs().max(dim=1).values",
                 "absmax = blocks.abs().max().expand(len(blocks))"),
            "add_lora_impl", PEFT_ADD_LORA),
    }
    return grade_notebooks(SOLUTION, wrong_versions)



def test_solution_gets_full_marks(gradebook):
    assert total(gradebook["solution"]) == (TOTAL, TOTAL), {k: r.message for k, r in gradebook["solution"].items()}


def test_untouched_lab_gets_zero(gradebook):
    rows = gradebook["untouched_lab"]
    assert total(rows) == (0, TOTAL)
    assert all("NotImplementedError" in r.message for r in rows.values()), {k: r.message for k, r in rows.items()}


@pytest.mark.parametrize("name, lost", [  # exercise -> words its message must contain
    ("random_b_uniform_levels_unfrozen_fifo", {"lora_layer_check": "lora_B is not zero", "nf4_check": "uniform",
                                               "add_lora_check": "freeze every parameter",
                                               "page_schedule_check": "MOST recently used"}),
    ("alpha_scaling_nibbles_no_offset", {"lora_layer_check": "alpha instead of alpha / r", "nf4_check": "wrong order",
                                         "double_quant_check": "MEAN of the absmax"}),
    ("swapped_ab_whole_absmax_peft_called_no_room", {"lora_layer_check": "swapped",
                                                     "nf4_check": "one absmax for the whole tensor",
                                                     "add_lora_check": "forbidden call: the exercise may not use peft",
                                                     "page_schedule_check": "activations need room first"}),
])
def test_plausible_mistakes_lose_the_points_they_break(gradebook, name, lost):
    assert_lost_exactly(gradebook[name], lost, partial=True)
