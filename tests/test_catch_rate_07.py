"""Lab 07 plausible wrong submissions (issue 24 §6): each loses its exercise's check; correct variants pass."""
import copy
import math
from pathlib import Path

import pytest
import torch

from course_utils.checks import CheckError
from course_utils.checks import lora as checks
from catch_rate import catch_rate_tests
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


# ---------------------------------------------------------------- every exercise: wrong versions vs right ones
# (the targeted tests above stay; these measure the catch rate over all five exercises, visible and hidden seeds)

SOL = solution_namespace(SOLUTION, "checks import lora")
LoRALinear, DYNAMIC, NF4 = SOL["LoRALinear"], SOL["DYNAMIC"], SOL["NF4"]


def check_layer(cls):
    """The visible and the hidden LoRALinear check."""
    checks.check_lora_layer(cls)
    checks.check_lora_layer(cls, seed=7)


def check_add(fn):
    """The visible and the hidden add_lora check."""
    checks.check_add_lora(fn)
    checks.check_add_lora(fn, seed=3)


def check_nf4_pair(pair):
    """The visible and the hidden NF4 check of (quantize, dequantize)."""
    checks.check_nf4(*pair)
    checks.check_nf4(*pair, seed=5)


def check_double(pair):
    """The visible and the hidden double-quantization check of (quantize, dequantize)."""
    checks.check_double_quant(*pair)
    checks.check_double_quant(*pair, seed=9)


def check_paging(fn):
    """The visible and the hidden page_schedule check."""
    checks.check_page_schedule(fn)
    checks.check_page_schedule(fn, seed=4)


def lora_with(init_a=None, scaling=None, init_b=None, **overrides):
    """The solution's LoRALinear with A's init, the scaling, B's init or a method replaced."""
    class Variant(LoRALinear):
        def __init__(self, base, r, alpha, use_rslora=False):
            super().__init__(base, r, alpha, use_rslora)
            with torch.no_grad():
                if init_a:
                    init_a(self.lora_A)
                if init_b:
                    init_b(self.lora_B)
            if scaling:
                self.scaling = scaling(r, alpha, use_rslora)
    for name, method in overrides.items():
        setattr(Variant, name, method)
    return Variant


def merge_in_place(self):
    with torch.no_grad():
        delta = (self.lora_B @ self.lora_A) * self.scaling
        self.base.weight += delta.T if SOL["is_fan_in_fan_out"](self.base) else delta
    return self.base


def merge_untransposed(self):
    merged = copy.deepcopy(self.base)
    with torch.no_grad():
        merged.weight += ((self.lora_B @ self.lora_A) * self.scaling).reshape(merged.weight.shape)
    return merged


def forward_update_no_grad(self, x):
    with torch.no_grad():
        update = (x @ self.lora_A.T @ self.lora_B.T) * self.scaling
    return self.base(x) + update


def a_like_a_linear_of_r_inputs(A):
    """kaiming_uniform_ on A's transpose (in, r): the bound 1/sqrt(r) instead of 1/sqrt(in_features)."""
    A.copy_(torch.nn.init.kaiming_uniform_(torch.empty(A.shape[::-1], dtype=A.dtype), a=math.sqrt(5)).T)


def a_matching_std_normal(A):
    """A normal with PEFT's standard deviation (1/sqrt(3 in_features)) but not its uniform shape."""
    A.normal_(0, 1 / math.sqrt(3 * A.shape[1]))


def by_name_part(name, targets):
    """The solution's rule: the last part of the module's name is a target."""
    return name.split(".")[-1] in targets


def add_lora_with(select=by_name_part, freeze="before"):
    """The solution's add_lora with its own name selection, or the model frozen "after" wrapping or "never"."""
    def add_lora(model, target_modules, r, alpha):
        if freeze == "before":
            model.requires_grad_(False)
        for name in [n for n, _ in model.named_modules() if n and select(n, target_modules)]:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, LoRALinear(model.get_submodule(name), r, alpha))
        if freeze == "after":
            model.requires_grad_(False)
        return model
    return add_lora


def nf4_quantize_with(absmax_of=lambda b: b.abs().max(dim=1).values, nearest=None, in_place=False):
    """The solution's nf4_quantize with its absmax, its level choice or an in-place scaling replaced."""
    def nf4_quantize(w, blocksize=64):
        blocks = w.reshape(-1, blocksize) if in_place else w.float().reshape(-1, blocksize)
        absmax = absmax_of(blocks).clone()
        if in_place:
            blocks /= absmax[:, None]
            scaled = blocks.reshape(-1)
        else:
            scaled = (blocks * (1 / absmax[:, None])).reshape(-1)
        codes = (nearest or (lambda s: (s[:, None] - NF4[None, :]).abs().argmin(dim=1)))(scaled).to(torch.uint8)
        return (codes[0::2] << 4) | codes[1::2], absmax
    return nf4_quantize


def nf4_uniform_level(scaled):
    """The nearest of 16 evenly spaced levels instead of NF4's."""
    return (scaled[:, None] - torch.linspace(-1, 1, 16)[None, :]).abs().argmin(dim=1)


def nf4_floor_level(scaled):
    """The level just below (searchsorted), not the nearest."""
    return (torch.searchsorted(NF4.contiguous(), scaled.contiguous(), right=True) - 1).clamp(0, 15)


def nf4_nearest_by_midpoints(scaled):
    """bucketize against the midpoints between levels: the nearest level, another way."""
    return torch.bucketize(scaled, (NF4[:-1] + NF4[1:]) / 2)


def nf4_dequantize_low_first(packed, absmax, shape, blocksize=64):
    packed = packed.reshape(-1)
    codes = torch.stack([packed & 15, packed >> 4], dim=1).reshape(-1).long()
    return (NF4[codes].reshape(-1, blocksize) * absmax.reshape(-1, 1)).reshape(shape)


def nf4_dequantize_by_repeat(packed, absmax, shape, blocksize=64):
    """Codes by bit masks, each absmax repeated over its block: right."""
    codes = torch.stack([(packed.reshape(-1) & 0xF0) >> 4, packed.reshape(-1) & 0x0F], dim=1).reshape(-1).long()
    return (NF4[codes] * absmax.reshape(-1).repeat_interleave(blocksize)).reshape(shape)


def double_quantize_with(offset_of=lambda a: a.mean(), absmax2_of=lambda p: p.abs().max(dim=1).values,
                         in_place=False):
    """The solution's double_quantize with its offset, its absmax2 or an in-place centring replaced."""
    def double_quantize(absmax, blocksize=256):
        offset = offset_of(absmax).clone()
        centred = absmax.sub_(offset) if in_place else absmax - offset
        n_blocks = math.ceil(centred.numel() / blocksize)
        padded = torch.nn.functional.pad(centred, (0, n_blocks * blocksize - centred.numel())).view(n_blocks, -1)
        if absmax2_of is None:  # the absmax of the values before subtracting the offset
            uncentred = torch.nn.functional.pad(absmax, (0, padded.numel() - absmax.numel()))
            absmax2 = uncentred.view(n_blocks, -1).abs().amax(1)
        else:
            absmax2 = absmax2_of(padded)
        scaled = (padded / absmax2[:, None]).reshape(-1)[: centred.numel()]
        return (scaled[:, None] - DYNAMIC[None, :]).abs().argmin(dim=1).to(torch.uint8), absmax2, offset
    return double_quantize


def double_quantize_by_split(absmax, blocksize=256):
    """Blocks by torch.split (the last one shorter), no padding: right."""
    offset = absmax.mean()
    codes, absmax2 = [], []
    for block in (absmax - offset).split(blocksize):
        top = block.abs().max()
        codes.append((block[:, None] / top - DYNAMIC[None, :]).abs().argmin(dim=1).to(torch.uint8))
        absmax2.append(top)
    return torch.cat(codes), torch.stack(absmax2), offset


def double_dequantize_without_offset(codes, absmax2, offset, blocksize=256):
    return DYNAMIC[codes.long()] * absmax2.repeat_interleave(blocksize)[: codes.numel()]


def double_dequantize_repeat(codes, absmax2, offset, blocksize=256):
    """absmax2.repeat (tiles the blocks) instead of repeat_interleave."""
    return DYNAMIC[codes.long()] * absmax2.repeat(blocksize)[: codes.numel()] + offset


def page_schedule_fifo(steps, activations, budget):
    """First in, first out: a state used again is not moved to the end."""
    device, rows = {}, []
    for accesses, act in zip(steps, activations):
        if act > budget:
            raise MemoryError("activations exceed the budget")
        out = 0
        while device and sum(device.values()) + act > budget:
            out += device.pop(next(iter(device)))
        paged_in, peak = 0, sum(device.values()) + act
        for name, nbytes in accesses:
            if nbytes > budget:
                raise MemoryError("state exceeds the budget")
            if name in device:
                continue
            while device and sum(device.values()) + nbytes > budget:
                out += device.pop(next(iter(device)))
            device[name] = nbytes
            paged_in += nbytes
            peak = max(peak, sum(device.values()))
        rows.append((paged_in, out, peak))
    return rows


def page_schedule_peak_without_activations(steps, activations, budget):
    return [(i, o, p - a) for (i, o, p), a in zip(SOL["page_schedule"](steps, activations, budget), activations)]


def page_schedule_never_raises(steps, activations, budget):
    try:
        return SOL["page_schedule"](steps, activations, budget)
    except MemoryError:
        return [(0, 0, 0)] * len(steps)


WRONG = {
    "A and B inits swapped": (check_layer, lora_with(init_a=torch.nn.init.zeros_, init_b=torch.nn.init.normal_),
                              "initialisations of A and B are swapped"),
    "B not zero": (check_layer, lora_with(init_b=lambda B: torch.nn.init.normal_(B, std=0.01)), "lora_B is not zero"),
    "A standard normal": (check_layer, lora_with(init_a=torch.nn.init.normal_), "PEFT's initialisation range"),
    "A kaiming default a": (check_layer, lora_with(init_a=torch.nn.init.kaiming_uniform_),
                            "PEFT's initialisation range"),
    "A init on its transpose": (check_layer, lora_with(init_a=a_like_a_linear_of_r_inputs),
                                "PEFT's initialisation range"),
    "A small normal": (check_layer, lora_with(init_a=lambda A: A.normal_(0, 0.01)), "spread .* PEFT's"),
    "A normal with PEFT's std": (check_layer, lora_with(init_a=a_matching_std_normal), "PEFT's initialisation range"),
    "A uniform on [0, bound)": (check_layer, lora_with(init_a=lambda A: A.uniform_(0, 1 / math.sqrt(A.shape[1]))),
                                "spread .* PEFT's"),
    "scaling alpha / sqrt(r) always": (check_layer, lora_with(scaling=lambda r, a, rs: a / math.sqrt(r)),
                                       "only use_rslora=True uses alpha / sqrt"),
    "scaling ignores use_rslora": (check_layer, lora_with(scaling=lambda r, a, rs: a / r), "rsLoRA"),
    "scaling alpha": (check_layer, lora_with(scaling=lambda r, a, rs: a), "scaled by alpha instead"),
    "scaling r / alpha": (check_layer, lora_with(scaling=lambda r, a, rs: r / a), "scaled by r / alpha"),
    "forward without base": (check_layer, lora_with(forward=lambda self, x: (x @ self.lora_A.T @ self.lora_B.T)
                                                    * self.scaling), "must equal the base layer's"),
    "update under no_grad": (check_layer, lora_with(forward=forward_update_no_grad), "no gradient reaches"),
    "merge in place": (check_layer, lora_with(merge=merge_in_place), r"changed \[.*\] in place"),
    "merge untransposed": (check_layer, lora_with(merge=merge_untransposed), "merged weight"),
    "merge returns the adapter": (check_layer, lora_with(merge=lambda self: copy.deepcopy(self)),
                                  "must return a plain"),
    "add_lora suffix match": (check_add, add_lora_with(lambda n, t: n.endswith(tuple(t))), "wrapped but should not"),
    "add_lora substring match": (check_add, add_lora_with(lambda n, t: any(x in n for x in t)),
                                 "wrapped but should not"),
    "add_lora the first block only": (check_add, add_lora_with(lambda n, t: by_name_part(n, t)
                                                                and n.startswith("transformer.h.0.")), "Not wrapped"),
    "add_lora rest not frozen": (check_add, add_lora_with(freeze="never"), "Still trainable"),
    "add_lora frozen after wrapping": (check_add, add_lora_with(freeze="after"),
                                       "Nothing is trainable: freeze the model BEFORE"),
    "nf4 absmax signed": (check_nf4_pair, (nf4_quantize_with(absmax_of=lambda b: b.max(dim=1).values),
                                           SOL["nf4_dequantize"]), "absmax"),
    "nf4 floor level": (check_nf4_pair, (nf4_quantize_with(nearest=nf4_floor_level), SOL["nf4_dequantize"]),
                        "NEAREST"),
    "nf4 uniform levels": (check_nf4_pair, (nf4_quantize_with(nearest=nf4_uniform_level),
                                            SOL["nf4_dequantize"]), "uniform"),
    "nf4 scales w in place": (check_nf4_pair, (nf4_quantize_with(in_place=True), SOL["nf4_dequantize"]),
                              "changed w in place"),
    "nf4 dequantize low nibble first": (check_nf4_pair, (SOL["nf4_quantize"], nf4_dequantize_low_first),
                                        "wrong order"),
    "double offset median": (check_double, (double_quantize_with(offset_of=lambda a: a.median()),
                                            SOL["double_dequantize"]), "MEAN"),
    "double absmax2 before offset": (check_double, (double_quantize_with(absmax2_of=None), SOL["double_dequantize"]),
                                     "before subtracting the offset"),
    "double centres in place": (check_double, (double_quantize_with(in_place=True), SOL["double_dequantize"]),
                                "changed absmax in place"),
    "double dequantize without offset": (check_double, (SOL["double_quantize"], double_dequantize_without_offset),
                                         "nested state"),
    "double dequantize repeat": (check_double, (SOL["double_quantize"], double_dequantize_repeat), "nested state"),
    "paging fifo": (check_paging, page_schedule_fifo, "MOST recently used"),
    "paging peak without activations": (check_paging, page_schedule_peak_without_activations, "peak"),
    "paging never raises": (check_paging, page_schedule_never_raises, "must raise MemoryError"),
}


RIGHT = {
    "solution layer": (check_layer, LoRALinear),
    "A uniform in +-1/sqrt(in)": (check_layer, lora_with(init_a=lambda A: A.uniform_(-1 / math.sqrt(A.shape[1]),
                                                                                     1 / math.sqrt(A.shape[1])))),
    "forward by F.linear": (check_layer, lora_with(forward=lambda self, x: self.base(x) + torch.nn.functional.linear(
        torch.nn.functional.linear(x, self.lora_A), self.lora_B) * self.scaling)),
    "solution add_lora": (check_add, SOL["add_lora"]),
    "add_lora endswith '.' + target": (check_add, add_lora_with(lambda n, t: any(n.endswith("." + x) for x in t))),
    "solution nf4": (check_nf4_pair, (SOL["nf4_quantize"], SOL["nf4_dequantize"])),
    "nf4 bucketize at midpoints": (check_nf4_pair, (nf4_quantize_with(nearest=nf4_nearest_by_midpoints),
                                                    SOL["nf4_dequantize"])),
    "nf4 dequantize by repeat_interleave": (check_nf4_pair, (SOL["nf4_quantize"], nf4_dequantize_by_repeat)),
    "solution double": (check_double, (SOL["double_quantize"], SOL["double_dequantize"])),
    "double by split": (check_double, (double_quantize_by_split, SOL["double_dequantize"])),
    "solution paging": (check_paging, SOL["page_schedule"]),
}


test_a_plausible_wrong_version_loses_its_check, test_a_correct_version_passes = catch_rate_tests(WRONG, RIGHT)
