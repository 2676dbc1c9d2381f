"""Checks for lab 07 (a LoRA layer, wrapping a model, NF4, double quantization); PEFT and bitsandbytes are the oracles.

Oracles: PEFT's LoRA layer (``inject_adapter_in_model``) with the student's A and B copied into
``lora_A["default"]`` / ``lora_B["default"]`` (``fan_in_fan_out`` for GPT-2's ``Conv1D``), its
``merge``; ``get_peft_model``'s trainable-parameter count; ``bitsandbytes.functional.quantize_4bit``
with ``quant_type="nf4"`` (packed bytes and absmax), ``dequantize_4bit``, and the nested state that
``compress_statistics=True`` (double quantization) produces. When a result is wrong, the checks compare
it with typical mistakes (scaling alpha instead of alpha/r, uniform levels, nibbles swapped, ...) and
name the one that matches.
"""
from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from . import CheckError, assert_close, assert_unchanged, call_student, forbids_modules, passed

# The oracles are PEFT (the LoRA layer, get_peft_model) and bitsandbytes (NF4, double quantization), and this module
# holds references (_nf4_variants): when `course grade` calls the student's code, code from none may run.
# course_utils.lora is not forbidden: it holds no answer, only helpers the exercise itself calls (in_out_features,
# is_fan_in_fan_out). Nor is transformers: the check hands the student's code GPT-2's Conv1D layers and a GPT-2.
LORA_ANSWERS = ("peft", "course_utils.checks")
QUANT_ANSWERS = ("bitsandbytes", "course_utils.checks")
ORACLES = ("peft", "bitsandbytes.functional")  # loaded once by `course grade`'s check server (checkproc.preload)

# (kind, in, out, r, alpha, use_rslora): rsLoRA scales by alpha / sqrt(r) instead of alpha / r
LAYERS = (("Linear", 48, 32, 4, 8, False), ("Conv1D", 64, 96, 8, 16, False), ("Linear", 16, 40, 2, 2, False),
          ("Conv1D", 32, 48, 4, 8, True), ("Linear", 24, 16, 16, 4, True))


def _quiet_bnb():
    import bitsandbytes.functional as bf  # imported late: the lab's first cells need no bitsandbytes
    return bf


def _base(kind: str, n_in: int, n_out: int, gen: torch.Generator) -> nn.Module:
    layer = nn.Linear(n_in, n_out) if kind == "Linear" else Conv1D(n_out, n_in)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return layer.double()


class _Box(nn.Module):
    """One layer in a module, so that PEFT can put its LoRA layer there."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


def peft_lora_layer(base: nn.Module, A: torch.Tensor, B: torch.Tensor, alpha: float,
                    use_rslora: bool = False) -> nn.Module:
    """PEFT's LoRA layer around a copy of ``base`` with ``A`` (r, in) and ``B`` (out, r) copied in."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=A.shape[0], lora_alpha=alpha, target_modules=["layer"], lora_dropout=0.0,
                        fan_in_fan_out=isinstance(base, Conv1D), use_rslora=use_rslora)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        box = inject_adapter_in_model(config, _Box(copy.deepcopy(base)))
    layer = box.layer
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(A)
        layer.lora_B["default"].weight.copy_(B)
    return layer.double().eval()


def _build(cls, *args) -> nn.Module:
    try:
        return cls(*args)
    except NotImplementedError:
        raise
    except Exception as exc:
        raise CheckError(f"{cls.__name__}{tuple(type(a).__name__ if isinstance(a, nn.Module) else a for a in args)} "
                         f"failed: {type(exc).__name__}: {exc}") from exc


def _params(layer) -> dict[str, torch.Tensor]:
    """The layer's parameters by name, as copies (requires_grad kept): works on the student's module or its proxy."""
    return {name: p for name, p in layer.named_parameters()}


def _param(params: dict, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    p = params.get(name)
    if not torch.is_tensor(p):
        raise CheckError(f"LoRALinear must have an nn.Parameter named {name} (found parameters {sorted(params)})")
    if tuple(p.shape) != shape:
        hint = (" A and B look swapped: A maps the input down, (r, in_features); B maps back up, (out_features, r)"
                if tuple(p.shape) in ((shape[1], shape[0]),) or sorted(p.shape) != sorted(shape) else "")
        raise CheckError(f"{name} has shape {tuple(p.shape)}, expected {shape}.{hint}")
    return p


def _lora_output(base, x, A, B, scaling):
    return base(x) + (x @ A.T @ B.T) * scaling


@forbids_modules(*LORA_ANSWERS)
def check_lora_layer(cls, seed: int = 0) -> None:
    """Exercise 1: ``cls(base, r, alpha, use_rslora)`` against PEFT's LoRA layer with the same A and B, then its merge.

    The layer is used only through calls, ``named_parameters``, ``state_dict`` and ``load_state_dict``
    (so the check works on the grader's proxy of the student's module); PEFT's layer is built here.
    """
    gen = torch.Generator().manual_seed(seed)
    scaled = []  # every lora_A divided by PEFT's bound: uniform on [-1, 1] when initialised like PEFT
    for kind, n_in, n_out, r, alpha, rslora in LAYERS:
        base = _base(kind, n_in, n_out, gen)
        what = f"LoRALinear({kind}(in={n_in}, out={n_out}), r={r}, alpha={alpha}, use_rslora={rslora})"
        layer = _build(cls, copy.deepcopy(base), r, alpha, rslora)
        params = _params(layer)
        A, B = _param(params, "lora_A", (r, n_in)), _param(params, "lora_B", (n_out, r))
        if A.dtype != torch.float64 or B.dtype != torch.float64:
            raise CheckError(f"{what}: lora_A and lora_B are {A.dtype} / {B.dtype} but the base weight is "
                             "float64: create them with the base weight's dtype")
        frozen = [n for n, p in params.items() if p.requires_grad and not n.startswith("lora_")]
        if frozen:
            raise CheckError(f"{what}: the base layer's {frozen} still require gradients: freeze the base "
                             "(requires_grad_(False)); only lora_A and lora_B are trained")
        if not (A.requires_grad and B.requires_grad):
            raise CheckError(f"{what}: lora_A and lora_B must require gradients (they are what we train)")
        if not torch.all(B == 0):
            if torch.all(A == 0):
                raise CheckError(f"{what}: A is zero and B random: the initialisations of A and B are swapped. "
                                 "Initialise B to zero and A randomly (like PEFT: kaiming_uniform_ with a=sqrt(5))")
            raise CheckError(f"{what}: lora_B is not zero at initialisation, so the wrapped layer no longer "
                             "computes the base model's output. Initialise B with zeros (and A randomly)")
        if torch.all(A == 0) or A.std() == 0:
            raise CheckError(f"{what}: lora_A must be initialised randomly (with A and B both zero, no gradient "
                             "reaches B... nor A): use nn.init.kaiming_uniform_(A, a=math.sqrt(5))")
        _check_init_bound(A, n_in, what)
        scaled.append(A.detach().flatten() * math.sqrt(n_in))
        x = torch.randn(5, n_in, generator=gen, dtype=torch.float64)
        layer.train()
        y0 = call_student(layer, f"{what}(x)", x)
        if not torch.is_tensor(y0) or y0.shape != (5, n_out):
            raise CheckError(f"{what}(x) must return a tensor of shape (5, {n_out}), got "
                             f"{getattr(y0, 'shape', type(y0).__name__)}")
        with torch.no_grad():
            assert_close(y0.detach(), base(x), f"{what} at initialisation", atol=1e-9,
                         hint="with B = 0 the output must equal the base layer's")
        if not y0.requires_grad:
            raise CheckError(f"{what}: the output does not depend on lora_A and lora_B through autograd, so no "
                             "gradient reaches them: compute the update in forward as (x @ A.T @ B.T) * alpha / r")
        B = torch.randn(B.shape, generator=gen, dtype=torch.float64)  # a trained-looking adapter
        state = call_student(layer.state_dict, f"{what}.state_dict()")
        call_student(layer.load_state_dict, f"{what}.load_state_dict(...)", {**state, "lora_B": B})
        layer.eval()
        oracle = peft_lora_layer(base, A.detach(), B, alpha, rslora)
        with torch.no_grad():
            got, expected = call_student(layer, f"{what}(x)", x), oracle(x)
            mistakes = {
                "use_rslora=True must scale the update by alpha / sqrt(r) (rsLoRA), not alpha / r" if rslora else
                "use_rslora=False scales the update by alpha / r; only use_rslora=True uses alpha / sqrt(r)":
                    _lora_output(base, x, A, B, alpha / r if rslora else alpha / math.sqrt(r)),
                "the update is scaled by alpha instead of alpha / r (PEFT's scaling['default'])"
                + (" or alpha / sqrt(r) with use_rslora=True" if rslora else ""):
                    _lora_output(base, x, A, B, alpha),
                "the update is not scaled: multiply (x @ A.T @ B.T) by alpha / r": _lora_output(base, x, A, B, 1.0),
                "the update is scaled by r / alpha: the scaling is alpha / r": _lora_output(base, x, A, B, r / alpha),
                "the base layer's output is missing: return base(x) + the scaled update":
                    expected - base(x),
            }
        got = got.detach()
        if expected.shape == got.shape and not torch.allclose(got, expected, atol=1e-8):
            for message, wrong in mistakes.items():
                if torch.allclose(got, wrong, atol=1e-8):
                    raise CheckError(f"{what}: {message}")
        assert_close(got, expected, f"{what} output vs PEFT's LoRA layer with the same A and B", atol=1e-8,
                     hint="forward = base(x) + (x @ A.T @ B.T) * scaling, scaling = alpha / r "
                          "(alpha / sqrt(r) with use_rslora=True)")
        _check_merge(layer, oracle, base, x, what)
    spread = torch.cat(scaled).std().item() * math.sqrt(3)  # 1 for a uniform distribution on [-1, 1]
    if not 0.8 < spread < 1.2:
        raise CheckError(f"lora_A's values spread {spread:.2f} times as wide as PEFT's initialisation (uniform in "
                         "+-1/sqrt(in_features)): use nn.init.kaiming_uniform_(A, a=math.sqrt(5))")
    passed("LoRALinear (equal to PEFT's LoRA layer; B starts at zero; merge)")


def _check_init_bound(A: torch.Tensor, n_in: int, what: str) -> None:
    """lora_A within PEFT's initialisation range: kaiming_uniform_(a=sqrt(5)) is uniform in +-1/sqrt(in_features)."""
    bound = 1 / math.sqrt(n_in)
    if A.detach().abs().max() > bound * (1 + 1e-6):
        raise CheckError(f"{what}: lora_A has values up to {A.detach().abs().max().item():.3g}, outside PEFT's "
                         f"initialisation range +-1/sqrt(in_features) = +-{bound:.3g}: use "
                         "nn.init.kaiming_uniform_(A, a=math.sqrt(5))")


def _check_merge(layer, oracle: nn.Module, base: nn.Module, x: torch.Tensor, what: str) -> None:
    before = {k: v.clone() for k, v in call_student(layer.state_dict, f"{what}.state_dict()").items()}
    merged = call_student(layer.merge, f"{what}.merge()")
    after = call_student(layer.state_dict, f"{what}.state_dict()")
    changed = [name for name, value in before.items() if not torch.equal(after.get(name), value)]
    if changed:
        raise CheckError(f"{what}.merge() changed {changed} in place: return a new layer (copy.deepcopy the "
                         "base) and leave the adapter as it was, so it can still be removed")
    if merged.__class__ is not type(base):  # __class__: the proxy of a student's object answers for its type
        raise CheckError(f"{what}.merge() must return a plain {type(base).__name__} (no adapter left, so no extra "
                         f"latency), got {getattr(merged.__class__, '__name__', merged.__class__)}")
    with torch.no_grad():
        oracle.merge()
        unmerged = call_student(layer, f"{what}(x)", x).detach()
        assert_close(merged.weight.detach().double(), oracle.get_base_layer().weight.detach(),
                     f"{what}.merge() weight vs PEFT's merged weight", atol=1e-8,
                     hint="W = W0 + scaling * B @ A; GPT-2's Conv1D stores W transposed, (in, out), so add "
                          "the transpose there")
        assert_close(call_student(merged, f"{what}.merge()(x)", x).detach().double(), unmerged,
                     f"{what}: merged output vs unmerged output", atol=1e-8)


@forbids_modules(*LORA_ANSWERS)
def check_add_lora(fn: Callable, seed: int = 0) -> None:
    """Exercise 2: ``fn(model, target_modules, r, alpha)`` against ``get_peft_model``'s counts and wrapped modules.

    The wrapped model is read through ``named_parameters`` (names, shapes, requires_grad) and one forward
    with every ``lora_B`` set to zero, which must give the unwrapped model's logits.
    """
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    from ..pretrain import build_gpt2

    # ["c_fc", "proj"]: "proj" ends c_proj's name but is not a whole name part, so PEFT wraps no c_proj
    for targets, r, alpha, n_layer in ((["c_attn"], 4, 8, 2), (["c_attn", "c_proj"], 2, 4, 2),
                                        (["c_fc"], 8, 8, 3), (["c_fc", "proj"], 4, 8, 2)):
        torch.manual_seed(seed)
        model = build_gpt2(vocab_size=50, n_layer=n_layer, n_head=2, n_embd=32, block_size=16).eval()
        ids = torch.randint(50, (2, 12), generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        config = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0, fan_in_fan_out=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = get_peft_model(copy.deepcopy(model), config)
        expected_trainable, expected_total = reference.get_nb_trainable_parameters()
        expected_names = {n.removeprefix("base_model.model.") for n, m in reference.named_modules()
                          if isinstance(m, LoraLayer)}
        what = f"add_lora(model, target_modules={targets}, r={r}, alpha={alpha})"
        wrapped = call_student(fn, what, model, targets, r, alpha)
        if wrapped is None:
            raise CheckError(f"{what}: return the model")
        params = call_student(wrapped.named_parameters, f"{what}.named_parameters()")
        params = list(params)
        names = {n.removesuffix(".lora_A") for n, _ in params if n.endswith(".lora_A")}
        if names != expected_names:
            missing, extra = sorted(expected_names - names), sorted(names - expected_names)
            raise CheckError(f"{what}: wrap exactly the modules whose name ends with a target, as PEFT does. "
                             f"Not wrapped: {missing[:4]}; wrapped but should not be: {extra[:4]}")
        total = sum(p.numel() for _, p in params)
        trainable = sum(p.numel() for _, p in params if p.requires_grad)
        if total != expected_total:
            raise CheckError(f"{what}: the model has {total} parameters, PEFT's {expected_total}: add only lora_A "
                             "and lora_B to each wrapped layer and keep all the original weights")
        if trainable != expected_trainable:
            extra = [n for n, p in params if p.requires_grad and "lora_" not in n]
            hint = (f" Still trainable: {extra[:3]}...: freeze every parameter of the model (requires_grad_(False)) "
                    "before adding the adapters" if extra else
                    " Nothing is trainable: freeze the model BEFORE adding the adapters (requires_grad_(False) after "
                    "them freezes lora_A and lora_B too)" if trainable == 0 else "")
            raise CheckError(f"{what}: {trainable} trainable parameters, get_peft_model has {expected_trainable} "
                             f"({100 * expected_trainable / expected_total:.2f}% of {expected_total}).{hint}")
        # B = 0 whatever LoRALinear does (exercise 1's job)
        state = call_student(wrapped.state_dict, f"{what}.state_dict()")
        call_student(wrapped.load_state_dict, f"{what}.load_state_dict(...)",
                     {k: torch.zeros_like(v) if k.endswith(".lora_B") else v for k, v in state.items()})
        wrapped.eval()
        out = call_student(wrapped, f"{what}: the wrapped model's forward", ids)
        assert_close(out.logits.detach(), logits, f"{what}: logits of the wrapped model before training", atol=1e-5,
                     hint="with every B at zero the wrapped model must compute what the model computed")
    passed("add_lora (the same modules and trainable-parameter count as get_peft_model)")


# ---------------------------------------------------------------- NF4 and double quantization

NF4_SHAPES = (((128, 64), 64), ((64, 192), 64), ((96, 256), 128), ((32, 320), 64))


def _weights(shape, gen, scale):
    return (torch.randn(shape, generator=gen) * scale).float()


def _nearest(scaled: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    return (scaled[:, None] - code[None, :]).abs().argmin(dim=1).to(torch.uint8)


def _pack(idx: torch.Tensor, high_first: bool = True) -> torch.Tensor:
    hi, lo = (idx[0::2], idx[1::2]) if high_first else (idx[1::2], idx[0::2])
    return (hi << 4) | lo


def _nf4_variants(w: torch.Tensor, blocksize: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(packed, absmax) of typical wrong NF4 quantizers, for the diagnosis."""
    bf = _quiet_bnb()
    nf4 = bf.get_4bit_type("nf4", device="cpu")
    blocks = w.reshape(-1, blocksize)
    absmax = blocks.abs().max(dim=1).values
    scaled = (blocks * (1 / absmax[:, None])).reshape(-1)
    whole = w.abs().max()
    return {
        "the levels are uniform (torch.linspace(-1, 1, 16)): NF4's 16 levels are quantiles of a normal "
        "distribution, bitsandbytes.functional.get_4bit_type('nf4')": (_pack(_nearest(scaled, torch.linspace(-1, 1, 16))), absmax),
        "the two codes of a byte are in the wrong order: the FIRST value goes in the HIGH nibble, "
        "(first << 4) | second": (_pack(_nearest(scaled, nf4), high_first=False), absmax),
        "one absmax for the whole tensor: NF4 scales each block of blocksize consecutive values by its own absmax":
            (_pack(_nearest((w.reshape(-1) / whole), nf4)), whole.reshape(1).expand(len(absmax))),
    }


def _packed_equal(got: torch.Tensor, expected: torch.Tensor, w: torch.Tensor, absmax: torch.Tensor,
                  blocksize: int) -> bool:
    """Bit-identical, except for values within float32 rounding of a decision boundary between two levels."""
    if torch.equal(got, expected):
        return True
    bf = _quiet_bnb()
    nf4 = bf.get_4bit_type("nf4", device="cpu").double()
    bounds = (nf4[:-1] + nf4[1:]) / 2
    scaled = (w.double().reshape(-1, blocksize) / absmax.double()[:, None]).reshape(-1)
    near = (scaled[:, None] - bounds[None, :]).abs().min(dim=1).values < 1e-6
    differs = torch.stack([(got >> 4) != (expected >> 4), (got & 15) != (expected & 15)], dim=1).reshape(-1)
    return bool((~differs | near).all())


@forbids_modules(*QUANT_ANSWERS)
def check_nf4(quantize: Callable, dequantize: Callable, seed: int = 0) -> None:
    """Exercise 3: ``quantize(w, blocksize)`` and ``dequantize(packed, absmax, shape, blocksize)`` against bitsandbytes.

    Both must leave their inputs unchanged (the caller uses w, packed and absmax again).
    """
    bf = _quiet_bnb()
    gen = torch.Generator().manual_seed(seed)
    for i, (shape, blocksize) in enumerate(NF4_SHAPES):
        w = _weights(shape, gen, scale=[0.02, 1.0, 3.0, 0.5][i])
        w[0, 0] = 0.0  # an exact zero must map to NF4's zero level
        what = f"nf4_quantize(w of shape {shape}, blocksize={blocksize})"
        q, state = bf.quantize_4bit(w, blocksize=blocksize, quant_type="nf4")
        expected_packed, expected_absmax = q.reshape(-1), state.absmax
        given = w.clone()
        result = quantize(given, blocksize)
        assert_unchanged({"w": given}, {"w": w}, what)
        if not (isinstance(result, tuple) and len(result) == 2):
            raise CheckError(f"{what}: return a tuple (packed, absmax)")
        packed, absmax = result
        if not torch.is_tensor(packed) or packed.dtype != torch.uint8:
            raise CheckError(f"{what}: packed must be a torch.uint8 tensor (two 4-bit codes per byte), got "
                             f"{getattr(packed, 'dtype', type(packed).__name__)}")
        packed = packed.reshape(-1)
        if packed.numel() != expected_packed.numel():
            raise CheckError(f"{what}: {packed.numel()} bytes, expected {expected_packed.numel()} (one byte per "
                             "PAIR of values: pack two 4-bit codes into each byte)")
        for message, (wrong_packed, wrong_absmax) in _nf4_variants(w, blocksize).items():
            if torch.equal(packed, wrong_packed) and not torch.equal(packed, expected_packed):
                raise CheckError(f"{what}: {message}")
        if not torch.is_tensor(absmax) or absmax.reshape(-1).shape != expected_absmax.shape:
            raise CheckError(f"{what}: absmax must hold one float per block of {blocksize} values, "
                             f"{expected_absmax.numel()} here, got {getattr(absmax, 'shape', type(absmax).__name__)}")
        if not torch.equal(absmax.reshape(-1).float(), expected_absmax):
            assert_close(absmax.reshape(-1).float(), expected_absmax, f"{what}: absmax", atol=0, rtol=0,
                         hint="absmax of a block is the largest |value| among its blocksize consecutive values")
        if not _packed_equal(packed, expected_packed, w, expected_absmax, blocksize):
            first = (packed != expected_packed).nonzero()[0].item()
            raise CheckError(f"{what}: packed bytes differ from bitsandbytes' quantize_4bit(quant_type='nf4'), "
                             f"first at byte {first}: yours {packed[first].item():#04x}, bitsandbytes' "
                             f"{expected_packed[first].item():#04x}. Scale each block by 1/absmax, pick the NEAREST "
                             "NF4 level, and pack (first << 4) | second")
        what = f"nf4_dequantize(packed, absmax, {shape}, blocksize={blocksize})"
        given = {"packed": q.clone(), "absmax": state.absmax.clone()}
        got = dequantize(given["packed"], given["absmax"], shape, blocksize)
        assert_unchanged(given, {"packed": q, "absmax": state.absmax}, what)
        expected = bf.dequantize_4bit(q, state)
        if torch.is_tensor(got) and got.shape == expected.shape:
            wrong = bf.dequantize_4bit(_pack(torch.stack([q.reshape(-1) & 15, q.reshape(-1) >> 4], 1).reshape(-1))
                                       .reshape(q.shape), state)
            if torch.allclose(got.float(), wrong, atol=1e-6) and not torch.allclose(wrong, expected):
                raise CheckError(f"{what}: the nibbles are read in the wrong order: the HIGH nibble (byte >> 4) "
                                 "holds the first value, the low one (byte & 15) the second")
        assert_close(got, expected, f"{what} vs bitsandbytes' dequantize_4bit", atol=1e-6, rtol=1e-6,
                     hint="value = NF4[code] * absmax of its block, reshaped to shape")
    passed("NF4 quantize / dequantize (bit-identical to bitsandbytes)")


@forbids_modules(*QUANT_ANSWERS)
def check_double_quant(quantize: Callable, dequantize: Callable, seed: int = 0, min_agreement: float = 0.99) -> None:
    """Exercise 4: double quantization of the absmax constants against bitsandbytes' nested state.

    ``quantize(absmax, blocksize)`` returns ``(codes, absmax2, offset)``; ``dequantize(codes, absmax2,
    offset, blocksize)`` returns the absmax constants. bitsandbytes' CPU and CUDA kernels search the
    8-bit code approximately, so a code may differ from theirs only where yours is at least as near. Both must
    leave their inputs unchanged.
    """
    bf = _quiet_bnb()
    code = bf.create_dynamic_map()
    gen = torch.Generator().manual_seed(seed)
    # the last case: a few rows near zero, so the absmax values furthest from their mean lie BELOW it (negative
    # after subtracting the offset): absmax2 must be the largest |value|, not the largest value
    for shape, scale, few_small in (((1024, 64), 0.02, False), ((320, 192), 1.0, False), ((64, 128), 5.0, False),
                                    ((512, 64), 1.0, True)):
        w = _weights(shape, gen, scale)
        rows = torch.rand(shape[0], 1, generator=gen)  # rows of different scales
        w = w * (torch.where(rows < 0.05, 0.01, 1.0) if few_small else rows)
        _, state = bf.quantize_4bit(w, blocksize=64, quant_type="nf4")
        _, nested = bf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
        absmax, blocksize = state.absmax, nested.state2.blocksize
        what = f"double_quantize({absmax.numel()} absmax values, blocksize={blocksize})"
        given = absmax.clone()
        result = quantize(given, blocksize)
        assert_unchanged({"absmax": given}, {"absmax": absmax}, what)
        if not (isinstance(result, tuple) and len(result) == 3):
            raise CheckError(f"{what}: return a tuple (codes, absmax2, offset)")
        codes, absmax2, offset = result
        offset = torch.as_tensor(offset, dtype=torch.float32)
        if not torch.allclose(offset, nested.offset, rtol=1e-6, atol=0):
            raise CheckError(f"{what}: offset {offset.item():.6g}, bitsandbytes' {nested.offset.item():.6g}: the "
                             "offset is the MEAN of the absmax values (subtract it first, so they centre on zero "
                             "and use the signed 8-bit code well)")
        n_blocks = math.ceil(absmax.numel() / blocksize)
        if not torch.is_tensor(absmax2) or absmax2.numel() != n_blocks:
            raise CheckError(f"{what}: absmax2 must hold one value per block of {blocksize} absmax constants "
                             f"({n_blocks} here, the last one shorter), got "
                             f"{getattr(absmax2, 'shape', type(absmax2).__name__)}")
        if not torch.allclose(absmax2.reshape(-1).float(), nested.state2.absmax, rtol=1e-6, atol=0):
            no_offset = torch.nn.functional.pad(absmax, (0, n_blocks * blocksize - absmax.numel()))
            if torch.allclose(absmax2.reshape(-1).float(), no_offset.view(n_blocks, blocksize).abs().max(1).values):
                raise CheckError(f"{what}: absmax2 is taken before subtracting the offset: subtract the mean first")
            assert_close(absmax2.reshape(-1).float(), nested.state2.absmax, f"{what}: absmax2 (the nested absmax)",
                         atol=0, rtol=1e-6, hint="absmax2 = max |absmax - offset| over each block of blocksize values")
        if not torch.is_tensor(codes) or codes.dtype != torch.uint8 or codes.numel() != absmax.numel():
            raise CheckError(f"{what}: codes must be a torch.uint8 tensor with one 8-bit code per absmax value")
        codes = codes.reshape(-1)
        scaled = torch.nn.functional.pad(absmax.double() - offset.double(), (0, n_blocks * blocksize - absmax.numel()))
        scaled = (scaled.view(n_blocks, blocksize) / nested.state2.absmax.double()[:, None]).reshape(-1)[:absmax.numel()]
        code64 = code.double()
        mine, theirs = (code64[codes.long()] - scaled).abs(), (code64[nested.absmax.long()] - scaled).abs()
        agreement = (codes == nested.absmax).float().mean().item()
        if (mine > theirs + 1e-7).any() or agreement < min_agreement:
            raise CheckError(f"{what}: codes agree with bitsandbytes' for {100 * agreement:.1f}% of the values: map "
                             "each (absmax - offset) / absmax2 to the index of the NEAREST value of the dynamic "
                             "8-bit code (bitsandbytes.functional.create_dynamic_map())")
        what = f"double_dequantize(codes, absmax2, offset, blocksize={blocksize})"
        originals = {"codes": nested.absmax, "absmax2": nested.state2.absmax, "offset": nested.offset}
        given = {name: value.clone() for name, value in originals.items()}
        got = dequantize(given["codes"], given["absmax2"], given["offset"], blocksize)
        assert_unchanged(given, originals, what)
        expected = bf.dequantize_blockwise(nested.absmax, nested.state2) + nested.offset
        assert_close(got, expected, f"{what} vs bitsandbytes' nested state", atol=1e-6, rtol=1e-6,
                     hint="absmax = code[codes] * absmax2 of its block + offset")
    passed("double quantization (the nested state of bitsandbytes' compress_statistics=True)")


# (what the case tests, the message when only this case fails, steps, activations, budget); the first case that
# disagrees with course_utils.paging.page_schedule names the mistake, so the cases go from simple to subtle
_S = [("m.a", 400), ("m.b", 400), ("m.c", 800)]
PAGE_CASES = (
    ("every state fits", "with room for every state, each is paged in once (step 1) and never again; bytes in = "
     "the bytes of the states paged in, bytes out 0",
     [_S, _S, _S], [0, 0, 0], 4000),
    ("the order of the states", "evict the LEAST recently used state first (the one touched longest ago)",
     [[("a", 300), ("b", 300), ("c", 300)], [("c", 300), ("a", 300), ("b", 300), ("d", 300)]], [0, 0], 700),
    ("a state used again", "a state the optimizer touches again becomes the MOST recently used (least recently "
     "used out first, not first in first out: move it to the end when it is used, not only when paged in)",
     [[("a", 100), ("b", 100), ("a", 100), ("c", 100)], [("a", 100), ("d", 100), ("b", 100)]], [0, 0], 200),
    ("a spike of activations", "the step's activations need room first: page out the least recently used states "
     "until state + activations <= budget, then run the optimizer (paging back in what it touches); the peak "
     "counts activations too",
     [_S, _S, _S, _S], [1000, 1000, 2800, 1000], 3200),
    ("states of different sizes", "page out one state at a time, least recently used first, only until the new "
     "one fits: sum(resident) + nbytes <= budget",
     [[("w", 500), ("x", 100), ("y", 200), ("z", 600)], [("x", 100), ("w", 500), ("y", 200)]], [300, 900], 1200),
)


@forbids_modules("course_utils.paging", "course_utils.checks")
def check_page_schedule(fn: Callable, seed: int = 0) -> None:
    """Exercise 5: ``fn(steps, activations, budget)`` against ``course_utils.paging.page_schedule``, case by case.

    ``seed`` adds a random case (a random subset and order of states each step, random activations).
    """
    from ..paging import page_schedule

    gen = torch.Generator().manual_seed(seed)
    sizes = {f"s{i}": int(s) for i, s in enumerate(torch.randint(1, 9, (8,), generator=gen) * 100)}
    steps = [[(n, sizes[n]) for n in (f"s{int(i)}" for i in torch.randperm(8, generator=gen)[:6])] for _ in range(6)]
    cases = PAGE_CASES + (("random orders and sizes", "compare step by step with the rules above", steps,
                           [int(a) for a in torch.randint(0, 15, (6,), generator=gen) * 100], 2400),)
    for name, hint, steps, activations, budget in cases:
        what = f"page_schedule({name}: {len(steps)} steps, budget {budget})"
        expected = page_schedule(steps, activations, budget)
        got = call_student(fn, what, [list(s) for s in steps], list(activations), budget)
        try:
            got = [tuple(int(v) for v in row) for row in got]
        except (TypeError, ValueError):
            raise CheckError(f"{what}: return a list with one (bytes_in, bytes_out, peak) tuple of ints per step, "
                             f"got {got!r:.120}") from None
        if got != expected:
            step = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
            mine = got[step] if step < len(got) else "no row"
            theirs = expected[step] if step < len(expected) else "no row"
            raise CheckError(f"{what}: step {step + 1} gives (in, out, peak) = {mine}, expected {theirs}: {hint}")
    for steps, activations, budget, why in (([[("a", 100)]], [300], 200, "activations larger than the budget"),
                                            ([[("a", 300)]], [0], 200, "a state larger than the budget")):
        try:
            fn(steps, activations, budget)
        except MemoryError:
            continue
        except NotImplementedError:
            raise
        except Exception as exc:
            raise CheckError(f"page_schedule with {why} raised {type(exc).__name__}, expected MemoryError") from exc
        raise CheckError(f"page_schedule with {why} must raise MemoryError (paging cannot help there)")
    passed("page_schedule (the same bytes paged in and out and peak as the course's reference, every case)")
