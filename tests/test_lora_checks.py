"""Lab 07's checks: the solution passes (visible and hidden checks), and the plausible mistakes the issue
lists fail with a message that names the mistake. The solution code is read from solutions/07_lora_qlora.ipynb."""
import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from course_utils.checks import CheckError
from course_utils.checks import lora as checks
from course_utils.instructor.notebooks import nbgrader_meta, read_notebook
from notebook_helpers import solution_namespace

SOLUTION = Path(__file__).resolve().parents[1] / "solutions" / "07_lora_qlora.ipynb"


@pytest.fixture(scope="module")
def sol():
    """The solution's imports and every solution cell, executed into one namespace."""
    return solution_namespace(SOLUTION, "checks import lora")


def test_solution_passes_every_check_cell_hidden_tests_included(sol, capsys):
    cells = [c for c in read_notebook(SOLUTION).cells if nbgrader_meta(c).get("grade")]
    assert len(cells) == 5 and sum(nbgrader_meta(c)["points"] for c in cells) == 12
    for cell in cells:
        exec(cell.source, dict(sol))
    assert capsys.readouterr().out.count("all checks passed") == 10  # visible + hidden


# --- Exercise 1: the LoRA layer ---------------------------------------------------------------------

def _layer(sol, init=None, forward=None, merge=None):
    """The solution's LoRALinear with ``init(self)`` run after __init__, or another forward / merge."""
    base = sol["LoRALinear"]
    attrs = {}
    if init is not None:
        def __init__(self, layer, r, alpha, use_rslora=False):
            base.__init__(self, layer, r, alpha, use_rslora)
            init(self)
        attrs["__init__"] = __init__
    if forward is not None:
        attrs["forward"] = forward
    if merge is not None:
        attrs["merge"] = merge
    return type("Wrong", (base,), attrs)


def random_b(self):
    with torch.no_grad():
        nn.init.kaiming_uniform_(self.lora_B, a=math.sqrt(5))


def swapped_init(self):
    """A zero and B random: the initialisations of A and B swapped."""
    with torch.no_grad():
        self.lora_A.zero_()
        nn.init.kaiming_uniform_(self.lora_B, a=math.sqrt(5))


def normal_a(self):  # "random" but not PEFT's distribution: standard normal
    with torch.no_grad():
        nn.init.normal_(self.lora_A)


def tiny_a(self):  # within PEFT's range, but 100 times too narrow
    with torch.no_grad():
        nn.init.uniform_(self.lora_A, -0.01 / math.sqrt(self.lora_A.shape[1]), 0.01 / math.sqrt(self.lora_A.shape[1]))


def default_kaiming_a(self):  # kaiming_uniform_ without a=sqrt(5): sqrt(6) times too wide
    with torch.no_grad():
        nn.init.kaiming_uniform_(self.lora_A)


def peft_like_by_hand(self):  # a correct variant: the same uniform distribution written out
    with torch.no_grad():
        bound = 1 / math.sqrt(self.lora_A.shape[1])
        self.lora_A.uniform_(-bound, bound)


def test_a_correct_initialisation_written_differently_passes(sol):
    checks.check_lora_layer(_layer(sol, init=peft_like_by_hand))


def alpha_scaling(self, x):
    return self.base(x) + (x @ self.lora_A.T @ self.lora_B.T) * self.alpha


def detached_update(self, x):
    return self.base(x) + (x @ self.lora_A.detach().T @ self.lora_B.detach().T) * self.scaling


def merge_returns_adapter(self):
    return copy.deepcopy(self)


def no_transpose_merge(self):
    merged = copy.deepcopy(self.base)
    with torch.no_grad():
        delta = self.lora_B @ self.lora_A * self.scaling
        merged.weight += delta.reshape(merged.weight.shape)
    return merged


def in_place_merge(self):
    delta = (self.lora_B @ self.lora_A) * self.scaling
    with torch.no_grad():
        self.base.weight += delta.T if isinstance(self.base, checks.Conv1D) else delta
    return self.base


def unfrozen_base(self):
    self.base.requires_grad_(True)


def rslora_ignored(self):
    self.scaling = self.alpha / self.r


def rslora_always(self):
    self.scaling = self.alpha / math.sqrt(self.r)


@pytest.mark.parametrize("wrong, words", [
    (dict(init=random_b), "lora_B is not zero"),
    (dict(init=swapped_init), "swapped"),
    (dict(init=normal_a), "outside PEFT's initialisation range"),
    (dict(init=default_kaiming_a), "outside PEFT's initialisation range"),
    (dict(init=tiny_a), "spread 0.01 times"),
    (dict(forward=alpha_scaling), "alpha instead of alpha / r"),
    (dict(init=unfrozen_base), "freeze the base"),
    (dict(init=rslora_ignored), "use_rslora=True must scale the update by alpha / sqrt"),
    (dict(init=rslora_always), "only use_rslora=True uses alpha / sqrt"),
    (dict(merge=no_transpose_merge), "Conv1D stores W transposed"),
    (dict(merge=in_place_merge), "in place"),
    (dict(forward=detached_update), "no gradient reaches them"),
    (dict(merge=merge_returns_adapter), "must return a plain Linear"),
])
def test_lora_layer_mistakes_are_named(sol, wrong, words):
    with pytest.raises(CheckError, match=words):
        checks.check_lora_layer(_layer(sol, **wrong))


def test_lora_layer_check_agrees_with_peft_on_the_solution(sol):
    """The oracle itself: PEFT's layer with the solution's A and B gives the solution's output."""
    layer = sol["LoRALinear"](nn.Linear(8, 6).double(), 2, 4)
    with torch.no_grad():
        layer.lora_B.normal_()
    oracle = checks.peft_lora_layer(layer.base, layer.lora_A.detach(), layer.lora_B.detach(), 4)
    x = torch.randn(3, 8, dtype=torch.float64)
    assert oracle.scaling["default"] == layer.scaling == 2.0
    torch.testing.assert_close(layer(x), oracle(x))
    rs = sol["LoRALinear"](nn.Linear(8, 6).double(), 4, 4, use_rslora=True)
    rs_oracle = checks.peft_lora_layer(rs.base, rs.lora_A.detach(), rs.lora_B.detach(), 4, use_rslora=True)
    assert rs_oracle.scaling["default"] == rs.scaling == 2.0  # alpha / sqrt(r)


# --- Exercise 2: wrapping --------------------------------------------------------------------------

def test_add_lora_without_freezing_loses(sol):
    def no_freeze(model, target_modules, r, alpha):
        for name in [n for n, _ in model.named_modules() if n.split(".")[-1] in target_modules]:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, sol["LoRALinear"](model.get_submodule(name), r, alpha))
        return model

    with pytest.raises(CheckError, match="freeze every parameter"):
        checks.check_add_lora(no_freeze)


def test_add_lora_exact_name_match_loses(sol):
    def first_only(model, target_modules, r, alpha):
        return sol["add_lora"](model, target_modules[:1], r, alpha)

    with pytest.raises(CheckError, match="Not wrapped"):
        checks.check_add_lora(first_only)


# --- Exercise 3: NF4 --------------------------------------------------------------------------------

def _nf4_with(sol, levels=None, high_first=True, whole_tensor=False):
    def quantize(w, blocksize=64):
        code = sol["NF4"] if levels is None else levels
        blocks = w.float().reshape(-1, blocksize)
        absmax = blocks.abs().max(dim=1).values
        if whole_tensor:
            absmax = w.abs().max().expand(len(absmax)).clone()
        idx = ((blocks * (1 / absmax[:, None])).reshape(-1)[:, None] - code).abs().argmin(1).to(torch.uint8)
        first, second = (idx[0::2], idx[1::2]) if high_first else (idx[1::2], idx[0::2])
        return (first << 4) | second, absmax

    return quantize


@pytest.mark.parametrize("kwargs, words", [
    (dict(levels=torch.linspace(-1, 1, 16)), "uniform"),
    (dict(high_first=False), "wrong order"),
    (dict(whole_tensor=True), "one absmax for the whole tensor"),
])
def test_nf4_mistakes_are_named(sol, kwargs, words):
    with pytest.raises(CheckError, match=words):
        checks.check_nf4(_nf4_with(sol, **kwargs), sol["nf4_dequantize"])


def test_nf4_dividing_instead_of_multiplying_by_the_reciprocal_still_passes(sol):
    """Only float32 rounding separates w / absmax from w * (1 / absmax): the check forgives values on a boundary."""
    def quantize(w, blocksize=64):
        blocks = w.float().reshape(-1, blocksize)
        absmax = blocks.abs().max(dim=1).values
        idx = ((blocks / absmax[:, None]).reshape(-1)[:, None] - sol["NF4"]).abs().argmin(1).to(torch.uint8)
        return (idx[0::2] << 4) | idx[1::2], absmax

    checks.check_nf4(quantize, sol["nf4_dequantize"])


def test_nf4_dequantize_with_swapped_nibbles_loses(sol):
    def dequantize(packed, absmax, shape, blocksize=64):
        packed = packed.reshape(-1)
        codes = torch.stack([packed & 15, packed >> 4], dim=1).reshape(-1).long()
        return (sol["NF4"][codes].reshape(-1, blocksize) * absmax[:, None]).reshape(shape)

    with pytest.raises(CheckError, match="nibbles are read in the wrong order"):
        checks.check_nf4(sol["nf4_quantize"], dequantize)


# --- Exercise 4: double quantization ----------------------------------------------------------------

def test_double_quant_without_offset_loses(sol):
    def no_offset(absmax, blocksize=256):
        codes, absmax2, _ = sol["double_quantize"](absmax + absmax.mean() * 0, blocksize)
        return codes, absmax2, torch.tensor(0.0)

    with pytest.raises(CheckError, match="MEAN of the absmax"):
        checks.check_double_quant(no_offset, sol["double_dequantize"])


def test_double_quant_one_block_loses(sol):
    def one_block(absmax, blocksize=256):
        return sol["double_quantize"](absmax, absmax.numel())

    with pytest.raises(CheckError, match="one value per block"):
        checks.check_double_quant(one_block, sol["double_dequantize"])


def test_double_quant_with_a_linear_code_loses(sol):
    def linear_code(absmax, blocksize=256):
        codes, absmax2, offset = sol["double_quantize"](absmax, blocksize)
        centred = (absmax - offset) / absmax2.repeat_interleave(blocksize)[: absmax.numel()]
        return ((centred + 1) / 2 * 255).round().to(torch.uint8), absmax2, offset

    with pytest.raises(CheckError, match="NEAREST value of the dynamic"):
        checks.check_double_quant(linear_code, sol["double_dequantize"])


# --- Exercise 5: the paging schedule ---------------------------------------------------------------

def _pager(evict_first=True, refresh=True, room_for_activations=True, peak_with_activations=True, raise_oom=True):
    """A page_schedule written with one rule changed (the keyword names it)."""
    from collections import OrderedDict

    def schedule(steps, activations, budget):
        device, rows = OrderedDict(), []

        def make_room(needed):
            freed = 0
            while device and sum(device.values()) + needed > budget:
                freed += device.popitem(last=not evict_first)[1]
            return freed

        for accesses, act in zip(steps, activations):
            if act > budget and raise_oom:
                raise MemoryError
            out = make_room(act) if room_for_activations else 0
            paged_in, peak = 0, sum(device.values()) + (act if peak_with_activations else 0)
            for name, nbytes in accesses:
                if nbytes > budget and raise_oom:
                    raise MemoryError
                if name in device:
                    if refresh:
                        device.move_to_end(name)
                    continue
                out += make_room(nbytes)
                device[name], paged_in = nbytes, paged_in + nbytes
                peak = max(peak, sum(device.values()))
            rows.append((paged_in, out, peak))
        return rows

    return schedule


def test_a_correct_schedule_written_differently_passes():
    checks.check_page_schedule(_pager())


@pytest.mark.parametrize("wrong, words", [
    (dict(refresh=False), "MOST recently used"),
    (dict(evict_first=False), "LEAST recently used state first"),
    (dict(room_for_activations=False), "activations need room first"),
    (dict(peak_with_activations=False), "the peak counts activations too"),
    (dict(raise_oom=False), "must raise MemoryError"),
])
def test_page_schedule_mistakes_are_named(wrong, words):
    with pytest.raises(CheckError, match=words):
        checks.check_page_schedule(_pager(**wrong))
