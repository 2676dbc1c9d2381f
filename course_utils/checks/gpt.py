"""Checks for lab 03 (a GPT from scratch, the causal LM loss, decoding); `transformers` is the oracle.

Oracles: a random ``GPT2LMHeadModel`` (its attention, blocks and logits, with the same weights
copied into the student's modules), its loss with ``labels=``, ``generate`` (greedy and beam
search) and the logits warpers ``TemperatureLogitsWarper``, ``TopKLogitsWarper`` and
``TopPLogitsWarper``. The student's modules use GPT-2's names (``c_attn``, ``c_proj``, ``ln_1``,
``mlp.c_fc``, ``wte``, ``wpe``, ``h``, ``ln_f``, ``lm_head``) with ``nn.Linear`` layers; GPT-2 stores
those weights transposed (``Conv1D``), so ``copy_gpt2_weights`` transposes them. When a result is
wrong, the checks compare it with typical mistakes (no causal mask, no 1/sqrt(d), no shift, ...)
and name the one that matches.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers import (GPT2Config, GPT2LMHeadModel, GenerationConfig, TemperatureLogitsWarper,
                          TopKLogitsWarper, TopPLogitsWarper)
from transformers.pytorch_utils import Conv1D

from . import (CheckError, assert_close, assert_gradient_reaches, assert_unchanged, drawn_seed, fenced, forbids,
               forbids_modules, passed)
from ..handed import NextLogits

# Modules whose code the student's functions may not run while these checks call them: transformers (the oracle:
# GPT-2's modeling, its loss, generate and the logits warpers), the course's GPT-2 helpers (course_utils.pretrain:
# build_gpt2, lm_loss) and the checks themselves (reference_beam_search). The decoding exercises call a
# next_logits function that runs a transformers GPT-2 (course_utils.handed.NextLogits), so they forbid only
# transformers.generation, where generate and the warpers live.
MODEL_ANSWERS = ("transformers", "course_utils.pretrain", "course_utils.checks")
DECODING_ANSWERS = ("transformers.generation", "course_utils.checks")

ATOL = 1e-5


def random_gpt2(n_layer: int = 2, n_head: int = 2, n_embd: int = 32, vocab_size: int = 50, block_size: int = 16,
                seed: int = 0, std: float = 0.3) -> GPT2LMHeadModel:
    """A GPT-2 in float64 and eval mode with large random weights (so that mistakes change the output)."""
    config = GPT2Config(vocab_size=vocab_size, n_positions=block_size, n_embd=n_embd, n_layer=n_layer,
                        n_head=n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=None, eos_token_id=None, pad_token_id=None)
    model = GPT2LMHeadModel(config).double().eval()
    model.loss_type = "ForCausalLM"  # GPT-2's class name does not tell transformers which loss it uses
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            if p.dim() >= 2:
                p.copy_(noise * std)
            elif name.endswith("weight"):  # layer norm gains around 1
                p.copy_(1 + 0.2 * noise)
            else:
                p.copy_(0.1 * noise)
    return model


def copy_gpt2_weights(module: torch.nn.Module, hf_module: torch.nn.Module, prefix: str = "") -> None:
    """Copy the parameters of a GPT-2 (sub)module into the student's module with the same names."""
    theirs = dict(hf_module.named_parameters())
    mine = dict(module.named_parameters())
    conv1d = {f"{name}.weight" for name, m in hf_module.named_modules() if isinstance(m, Conv1D)}
    updates = {}
    for name, p in mine.items():
        source = theirs.get(prefix + name)
        if source is None:
            raise CheckError(f"your module has a parameter {fenced(name, 60)} that GPT-2 does not have: keep the layers "
                             "and names given in __init__ (GPT-2's names) and add no others")
        value = source.T if prefix + name in conv1d else source  # Conv1D stores (in, out), nn.Linear (out, in)
        if value.shape != p.shape:
            raise CheckError(f"parameter {fenced(name, 60)} has shape {tuple(p.shape)} but GPT-2's has {tuple(value.shape)}: "
                             "keep the layers given in __init__")
        updates[name] = value.detach().to(p.dtype)
    missing = [n[len(prefix):] for n in theirs if n.startswith(prefix) and n[len(prefix):] not in mine]
    if missing:
        raise CheckError(f"your module lacks GPT-2's parameters {missing}: keep the layers given in __init__")
    module.load_state_dict(updates, strict=False)  # one call, so it also works on a module graded remotely


def _build(cls, *args) -> torch.nn.Module:
    try:
        module = cls(*args)
    except NotImplementedError:
        raise
    except Exception as exc:
        raise CheckError(f"{cls.__name__}{args} failed: {type(exc).__name__}: {exc}") from exc
    return module.double().eval()


@contextlib.contextmanager
def _by_hand():
    """Make F.scaled_dot_product_attention raise: the exercise is to write attention yourself."""
    original = F.scaled_dot_product_attention

    def refuse(*args, **kwargs):
        raise CheckError("write the attention by hand (q @ k^T, scale, mask, softmax, @ v) as in lab 01: "
                         "F.scaled_dot_product_attention is the checker's oracle")

    F.scaled_dot_product_attention = refuse
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def _run(module, x: torch.Tensor):
    """``module(x)`` by hand, without gradients; ``x`` must come back unchanged (``x += ...`` edits the caller's)."""
    original = x.clone()
    with _by_hand(), torch.no_grad():
        out = module(x)
    assert_unchanged({"x": x}, {"x": original}, f"{type(module).__name__}.forward (write x = x + ..., not x += ...)")
    if isinstance(out, tuple):
        out = out[0]
    if not torch.is_tensor(out):
        raise CheckError(f"{type(module).__name__}.forward must return a tensor, got {type(out).__name__}")
    return out


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), atol=atol, rtol=1e-4))


def _diagnose(got: torch.Tensor, expected: torch.Tensor, what: str, mistakes: dict[str, torch.Tensor],
              hint: str) -> None:
    """Raise CheckError naming the first mistake ``got`` matches, or with ``hint`` when none does."""
    if _close(got, expected):
        return
    for message, wrong in mistakes.items():
        if _close(got, wrong):
            raise CheckError(f"{what}: {message}")
    assert_close(got, expected, what, atol=ATOL, hint=hint)


def _check_causal(module, x: torch.Tensor, what: str) -> None:
    """Changing only the last position must not change the outputs at earlier positions."""
    if x.shape[1] < 2:
        return
    changed = x.clone()
    if x.dtype == torch.long:
        changed[:, -1] = (changed[:, -1] + 1) % module.wte.num_embeddings
    else:
        changed[:, -1] += 1.0
    before, after = _run(module, x), _run(module, changed)
    if not torch.allclose(before[:, :-1], after[:, :-1], atol=1e-9):
        raise CheckError(f"{what}: changing only the LAST token changed the outputs at earlier positions, so the "
                         "future leaks into the past. Mask the scores of later positions (j > i) with -inf "
                         "before the softmax (a causal mask)")


def _attention_variants(x: torch.Tensor, attn, n_head: int) -> dict[str, torch.Tensor]:
    """Outputs of common wrong attentions with the weights of GPT-2 attention ``attn`` (for diagnosis)."""
    B, T, C = x.shape
    hs = C // n_head
    q, k, v = (x @ attn.c_attn.weight + attn.c_attn.bias).split(C, dim=2)
    q, k, v = (t.view(B, T, n_head, hs).transpose(1, 2) for t in (q, k, v))
    causal = torch.ones(T, T, dtype=torch.bool).tril()

    def finish(weights):
        y = (weights @ v).transpose(1, 2).reshape(B, T, C)
        return y @ attn.c_proj.weight + attn.c_proj.bias

    scores = q @ k.transpose(-2, -1)
    return {
        "no causal mask: every position attends to later ones too. Mask scores with j > i to -inf before "
        "the softmax": finish(torch.softmax(scores / math.sqrt(hs), -1)),
        "the scores are not scaled: divide q @ k^T by sqrt(head_size) (head_size = n_embd // n_head)":
            finish(torch.softmax(scores.masked_fill(~causal, -math.inf), -1)),
        "scaled by sqrt(n_embd): divide by sqrt of the size of ONE head, n_embd // n_head":
            finish(torch.softmax((scores / math.sqrt(C)).masked_fill(~causal, -math.inf), -1)),
        "the causal mask is applied after the softmax, so rows no longer sum to 1: mask the scores with -inf "
        "before the softmax": finish(torch.softmax(scores / math.sqrt(hs), -1) * causal),
        "the output projection c_proj is missing: apply self.c_proj to the merged heads":
            (torch.softmax((scores / math.sqrt(hs)).masked_fill(~causal, -math.inf), -1) @ v)
            .transpose(1, 2).reshape(B, T, C),
    }


@drawn_seed
@forbids("scaled_dot_product")
@forbids_modules(*MODEL_ANSWERS)
def check_causal_self_attention(cls, seed: int = 0, sizes=((32, 2), (48, 4)), lengths=(1, 5, 9)) -> None:
    """Exercise 1: ``cls(n_embd, n_head)`` against GPT-2's attention with the same weights."""
    gen = torch.Generator().manual_seed(seed)
    for i, (n_embd, n_head) in enumerate(sizes):
        hf = random_gpt2(n_layer=1, n_head=n_head, n_embd=n_embd, seed=seed + i).transformer.h[0].attn
        mine = _build(cls, n_embd, n_head)
        copy_gpt2_weights(mine, hf)
        for T in lengths:
            x = torch.randn(2, T, n_embd, generator=gen, dtype=torch.float64)
            what = f"CausalSelfAttention(n_embd={n_embd}, n_head={n_head}) on input (2, {T}, {n_embd})"
            got = _run(mine, x)
            with torch.no_grad():
                expected = hf(x)[0]
                mistakes = _attention_variants(x, hf, n_head)
            _diagnose(got, expected, what, mistakes,
                      hint="Steps: q, k, v = c_attn(x).split(n_embd, dim=2); view each as (B, T, n_head, "
                           "head_size) and transpose to (B, n_head, T, head_size); causal softmax(q k^T / "
                           "sqrt(head_size)) @ v; transpose back, reshape to (B, T, n_embd); c_proj.")
            _check_causal(mine, x, what)
    passed("CausalSelfAttention")


@drawn_seed
@forbids("scaled_dot_product")
@forbids_modules(*MODEL_ANSWERS)
def check_block(cls, seed: int = 0, sizes=((32, 2), (24, 3))) -> None:
    """Exercise 2a: ``cls(n_embd, n_head)`` (one transformer block) against GPT-2's block."""
    gen = torch.Generator().manual_seed(seed)
    for i, (n_embd, n_head) in enumerate(sizes):
        hf = random_gpt2(n_layer=1, n_head=n_head, n_embd=n_embd, seed=seed + i).transformer.h[0]
        mine = _build(cls, n_embd, n_head)
        copy_gpt2_weights(mine, hf)
        x = torch.randn(2, 7, n_embd, generator=gen, dtype=torch.float64)
        what = f"Block(n_embd={n_embd}, n_head={n_head})"
        with torch.no_grad():
            expected = hf(x)
            if not _close(_run(mine.attn, hf.ln_1(x)), hf.attn(hf.ln_1(x))[0]):
                raise CheckError(f"{what}: its attention differs from GPT-2's: pass the attention check "
                                 "(exercise 1) first")
            attn, mlp, ln_1, ln_2 = hf.attn, hf.mlp, hf.ln_1, hf.ln_2
            h = x + attn(ln_1(x))[0]
            post = ln_1(x + attn(x)[0])
            mistakes = {
                "layer norm after the residual sum (post-LN, the original Transformer): GPT-2 is pre-LN, "
                "x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))": ln_2(post + mlp(post)),
                "the residual connections are missing: add the sublayer's output to its input, "
                "x = x + attn(ln_1(x))": mlp(ln_2(attn(ln_1(x))[0])),
                "the MLP's residual connection is missing: x = x + mlp(ln_2(x))": mlp(ln_2(h)),
                "the MLP reads ln_1 instead of ln_2: use self.ln_2 before the MLP": h + mlp(ln_1(h)),
                "the MLP is applied to x, not to the output of the attention step: feed the updated x to "
                "the second sublayer": h + mlp(ln_2(x)),
            }
        _diagnose(_run(mine, x), expected, what, mistakes,
                  hint="A GPT-2 block is x = x + attn(ln_1(x)); then x = x + mlp(ln_2(x)).")
        _check_causal(mine, x, what)
    passed("Block")


@drawn_seed
@forbids("scaled_dot_product")
@forbids_modules(*MODEL_ANSWERS)
def check_gpt(cls, seed: int = 0, sizes=((2, 2, 32, 50, 16), (3, 4, 24, 37, 12))) -> None:
    """Exercise 2b: ``cls(vocab_size, block_size, n_layer, n_head, n_embd)`` logits against GPT2LMHeadModel."""
    gen = torch.Generator().manual_seed(seed)
    for i, (n_layer, n_head, n_embd, vocab_size, block_size) in enumerate(sizes):
        hf = random_gpt2(n_layer, n_head, n_embd, vocab_size, block_size, seed=seed + i)
        mine = _build(cls, vocab_size, block_size, n_layer, n_head, n_embd)
        copy_gpt2_weights(mine, hf, prefix="transformer.")
        if "lm_head.weight" in dict(mine.named_parameters()):  # tied: listed once, as wte.weight
            raise CheckError("keep the weight tying given in __init__: lm_head.weight is wte.weight")
        for T in (1, 6, block_size):
            idx = torch.randint(vocab_size, (2, T), generator=gen)
            what = f"GPT(vocab_size={vocab_size}, block_size={block_size}, n_layer={n_layer}, n_head={n_head}, " \
                   f"n_embd={n_embd}) logits for input ids (2, {T})"
            tr = hf.transformer
            with torch.no_grad():
                expected = hf(idx).logits
                tok, pos = tr.wte(idx), tr.wpe(torch.arange(T))

                def through(x, final=True):
                    for block in tr.h:
                        x = block(x)
                    return hf.lm_head(tr.ln_f(x) if final else x)

                mistakes = {
                    "the position embeddings are missing: add self.wpe(torch.arange(T)) to the token "
                    "embeddings": through(tok),
                    "the final layer norm is missing: apply self.ln_f before lm_head": through(tok + pos, False),
                }
            _diagnose(_run(mine, idx), expected, what, mistakes,
                      hint="x = wte(idx) + wpe(arange(T)); every block of self.h in order; ln_f; lm_head. "
                           "Pass the Block check first.")
            _check_causal(mine, idx, what)
    passed("GPT (logits equal GPT2LMHeadModel's)")


@drawn_seed
@forbids_modules(*MODEL_ANSWERS)
def check_lm_loss(fn: Callable, seed: int = 0) -> None:
    """Exercise 3: ``fn(logits, labels)`` against ``GPT2LMHeadModel(input_ids, labels=labels).loss``."""
    gen = torch.Generator().manual_seed(seed)
    hf = random_gpt2(n_layer=1, seed=seed)
    ids = torch.randint(50, (3, 9), generator=gen)
    padded = ids.clone()
    padded[1, 6:] = -100  # padding at the end of row 1 ...
    padded[2, :2] = -100  # ... and at the start of row 2 (e.g. a prompt we do not train on)
    for labels, what in ((ids, "lm_loss without padding"), (padded, "lm_loss with -100 labels")):
        with torch.no_grad():
            logits = hf(ids).logits
            expected = hf(ids, labels=labels).loss
        given = {"logits": logits.clone(), "labels": labels.clone()}
        got = fn(*given.values())
        assert_unchanged(given, {"logits": logits, "labels": labels}, what)
        if not torch.is_tensor(got) or got.dim() != 0:
            raise CheckError(f"{what}: return a scalar tensor (the mean loss), got "
                             f"{tuple(got.shape) if torch.is_tensor(got) else type(got).__name__}")
        flat = dict(ignore_index=-100)
        V = logits.size(-1)
        valid = labels[:, 1:] != -100
        per_token = F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), reduction="none", **flat)
        mistakes = {
            "no shift: the logits at position t predict the token at t+1, so compare logits[:, :-1] with "
            "labels[:, 1:]": F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), **flat),
            "shifted the wrong way: use logits[:, :-1] (positions 0..T-2) with labels[:, 1:] (the next tokens)":
                F.cross_entropy(logits[:, 1:].reshape(-1, V), labels[:, :-1].reshape(-1), **flat),
            "a sum, not a mean: average the loss over the predicted tokens": per_token.sum(),
            "the -100 positions are counted in the average: divide by the number of labels that are not -100":
                per_token.sum() / valid.numel(),
        }
        _diagnose(got, expected, what, mistakes,
                  hint="loss = cross_entropy(logits[:, :-1] flattened, labels[:, 1:] flattened, ignore_index=-100)")
    assert_stable_on_confident_logits(fn, hf(ids).logits, padded, "lm_loss")
    passed("lm_loss")


def assert_stable_on_confident_logits(fn: Callable, logits: torch.Tensor, labels: torch.Tensor, what: str) -> None:
    """``fn(logits, labels)`` on logits 1000x sharper must equal the shifted cross-entropy and send gradients back.

    There log(softmax(x)) underflows to log(0) and exp(x) without the max overflows; the inputs must come back
    unchanged.
    """
    sharp = (logits.detach() * 1000).requires_grad_()
    given = {"logits": sharp, "labels": labels.clone()}
    got = fn(*given.values())
    assert_unchanged(given, {"logits": logits.detach() * 1000, "labels": labels}, what)
    want = F.cross_entropy(sharp.detach()[:, :-1].double().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
    if not (torch.is_tensor(got) and torch.isfinite(got).all() and torch.allclose(got.double(), want, rtol=1e-4)):
        value = f"{got.detach().double().mean().item():.5g}" if torch.is_tensor(got) else fenced(repr(got))
        raise CheckError(f"{what}: on very confident logits (x1000) the loss is {value}, expected {want.item():.5g}: "
                         "log(softmax(x)) underflows to log(0) and exp(x) without the max subtracted overflows; use "
                         "log_softmax or cross_entropy")
    assert_gradient_reaches(got, {"logits": sharp}, what)


def next_logits_fn(model: GPT2LMHeadModel) -> Callable[[torch.Tensor], torch.Tensor]:
    """``ids (B, T) -> logits (B, vocab)`` of the next token: what the decoding exercises receive."""
    return NextLogits(model)


def _generate(model: GPT2LMHeadModel, ids: torch.Tensor, n: int, num_beams: int = 1) -> torch.Tensor:
    """``generate`` with exactly ``n`` new tokens, no sampling, no end-of-text token, length penalty 1."""
    config = GenerationConfig(max_new_tokens=n, min_new_tokens=n, do_sample=False, num_beams=num_beams,
                              length_penalty=1.0, early_stopping=False, num_return_sequences=1,
                              eos_token_id=None, pad_token_id=0, bos_token_id=None, use_cache=True)
    with torch.no_grad():
        return model.generate(ids, generation_config=config, attention_mask=torch.ones_like(ids))


def _check_ids(got, ids: torch.Tensor, expected: torch.Tensor, what: str, extra: dict | None = None) -> None:
    n = expected.shape[1] - ids.shape[1]
    if not torch.is_tensor(got) or got.dtype != torch.long:
        raise CheckError(f"{what}: return a LongTensor of token ids, got {getattr(got, 'dtype', type(got).__name__)}")
    if tuple(got.shape) == (ids.shape[0], n):
        raise CheckError(f"{what}: return the prompt followed by the new tokens, shape {tuple(expected.shape)}, "
                         f"not only the {n} new tokens")
    if got.shape != expected.shape:
        raise CheckError(f"{what}: shape {tuple(got.shape)}, expected {tuple(expected.shape)} (prompt + new tokens)")
    if not torch.equal(got[:, : ids.shape[1]], ids):
        raise CheckError(f"{what}: the output must start with the prompt unchanged")
    for message, wrong in (extra or {}).items():
        if torch.equal(got, wrong) and not torch.equal(got, expected):
            raise CheckError(f"{what}: {message}")
    if not torch.equal(got, expected):
        row, col = (got != expected).nonzero()[0].tolist()
        raise CheckError(f"{what}: first difference in row {row} at new token {col - ids.shape[1]}: you chose "
                         f"{got[row, col].item()}, generate chose {expected[row, col].item()}")


@drawn_seed
@forbids_modules(*DECODING_ANSWERS)
def check_greedy(fn: Callable, seed: int = 0) -> None:
    """Exercise 4: ``fn(next_logits, input_ids, max_new_tokens)`` against ``generate(do_sample=False)``."""
    gen = torch.Generator().manual_seed(seed)
    model = random_gpt2(seed=seed)
    for batch, prompt_len, n in ((1, 3, 5), (3, 4, 8), (2, 1, 1)):
        ids = torch.randint(50, (batch, prompt_len), generator=gen)
        what = f"greedy_decode on {batch} prompt(s) of {prompt_len} tokens, {n} new tokens"
        got = fn(next_logits_fn(model), ids.clone(), n)
        _check_ids(got, ids, _generate(model, ids, n), what)
    passed("greedy_decode (token for token equal to generate)")


def reference_beam_search(next_logits: Callable, ids: torch.Tensor, num_beams: int, n: int,
                          use_logprobs: bool = True, accumulate: bool = True) -> torch.Tensor:
    """Textbook beam search (optionally with a typical mistake, for the diagnosis of wrong answers)."""
    beams, scores = ids, torch.zeros(1, dtype=torch.float64)
    for _ in range(n):
        logits = next_logits(beams).double()
        step = torch.log_softmax(logits, -1) if use_logprobs else logits
        total = (scores[:, None] + step) if accumulate else step
        top, flat = total.flatten().topk(num_beams)
        beam, token = flat // logits.size(-1), flat % logits.size(-1)
        beams, scores = torch.cat([beams[beam], token[:, None]], dim=1), top
    return beams[:1]


@drawn_seed
@forbids_modules(*DECODING_ANSWERS)
def check_beam_search(fn: Callable, seed: int = 0, settings=((2, 4), (3, 6), (5, 5), (4, 1))) -> None:
    """Exercise 5: ``fn(next_logits, input_ids, num_beams, max_new_tokens)`` against ``generate(num_beams=k)``.

    The rows of ``next_logits`` are shifted by a drawn constant per row (``NextLogits``' offsets, several nats):
    log-probabilities, hence ``generate``'s answer, stay the same, but a search that sums raw logits ranks the
    beams by the offsets. For n > 1 each prompt is drawn until ``generate`` and the three typical mistakes give
    four different answers, so each mistake fails, with its own message, on every draw (tests/test_check_seeds.py).
    """
    gen = torch.Generator().manual_seed(seed)
    model = random_gpt2(seed=seed + 1)
    next_logits = NextLogits(model, offsets=8.0 * torch.randn(model.config.vocab_size, generator=gen,
                                                                dtype=torch.float64))
    for num_beams, n in settings:
        fallback = None
        for _ in range(100):
            ids = torch.randint(50, (1, 3), generator=gen)
            expected = _generate(model, ids, n, num_beams)
            mistakes = {
                "scores must be sums of LOG-probabilities (log_softmax of the logits), not of raw logits":
                    reference_beam_search(next_logits, ids, num_beams, n, use_logprobs=False),
                "each candidate's score must include its beam's score so far: score(beam + token) = "
                "score(beam) + log p(token | beam)": reference_beam_search(next_logits, ids, num_beams, n,
                                                                           accumulate=False),
                "this is the greedy answer: keep the num_beams best (beam, token) pairs at every step, over all "
                "beams": _generate(model, ids, n),
            }
            outputs = [tuple(x.flatten().tolist()) for x in (expected, *mistakes.values())]
            if n == 1 or len(set(outputs)) == len(outputs):  # every mistake fails, and is told apart
                break
            if fallback is None and outputs[0] not in outputs[1:]:  # every mistake fails
                fallback = ids, expected, mistakes
        else:
            ids, expected, mistakes = fallback or (ids, expected, mistakes)
        what = f"beam_search with num_beams={num_beams}, {n} new tokens"
        got = fn(next_logits, ids.clone(), num_beams, n)
        _check_ids(got, ids, expected, what, mistakes)
    passed("beam_search (token for token equal to generate(num_beams=k))")


def _same_distribution(got, scores: torch.Tensor, expected: torch.Tensor, what: str,
                       mistakes: dict[str, torch.Tensor] | None = None) -> None:
    """The filtered logits must give the same distribution as ``expected`` (removed tokens: probability 0)."""
    if not torch.is_tensor(got) or got.shape != scores.shape:
        raise CheckError(f"{what}: return logits of the same shape as the input {tuple(scores.shape)}, got "
                         f"{tuple(got.shape) if torch.is_tensor(got) else type(got).__name__}")
    p_got, p_exp = torch.softmax(got.double(), -1), torch.softmax(expected.double(), -1)
    for message, wrong in (mistakes or {}).items():
        if _close(p_got, torch.softmax(wrong.double(), -1), 1e-7) and not _close(p_got, p_exp, 1e-7):
            raise CheckError(f"{what}: {message}")
    kept_got, kept_exp = got > -math.inf, expected > -math.inf
    if not torch.equal(kept_got, kept_exp):
        row = (kept_got != kept_exp).any(-1).nonzero()[0].item()
        raise CheckError(f"{what}: row {row} keeps {kept_got[row].sum().item()} tokens, the reference keeps "
                         f"{kept_exp[row].sum().item()} (removed tokens must be set to -inf)")
    assert_close(p_got, p_exp, f"{what}: softmax of your logits", atol=1e-7,
                 hint="Keep the kept logits unchanged (apart from the temperature) and set the others to -inf.")


def _random_logits(gen: torch.Generator, rows: int = 6, vocab: int = 40) -> torch.Tensor:
    scale = torch.tensor([0.3, 1.0, 2.0, 4.0, 8.0, 1.5])[torch.arange(rows) % 6][:, None]
    return torch.randn(rows, vocab, generator=gen, dtype=torch.float64) * scale


def _looks_like_probabilities(x: torch.Tensor) -> bool:
    return bool(torch.is_tensor(x) and ((x >= 0) & (x <= 1)).all() and torch.allclose(x.sum(-1), torch.ones(1, dtype=x.dtype)))


@drawn_seed
@forbids_modules(*MODEL_ANSWERS)
def check_temperature(fn: Callable, seed: int = 0) -> None:
    """Exercise 6a: ``fn(logits, temperature)`` against ``TemperatureLogitsWarper``."""
    gen = torch.Generator().manual_seed(seed)
    for t in (1.0, 0.5, 2.0, 0.1, 3.7):
        logits = _random_logits(gen)
        copy = logits.clone()
        got = fn(logits, t)
        what = f"apply_temperature(logits, {t})"
        if not torch.equal(logits, copy):
            raise CheckError(f"{what} changed its input in place: return a new tensor")
        if _looks_like_probabilities(got) and t == 1.0:
            raise CheckError(f"{what}: return logits (scores before the softmax), not probabilities")
        mistakes = {
            "the temperature must divide the logits BEFORE the softmax: rescaling probabilities after the "
            "softmax and renormalising gives back the same distribution": logits,
            "divide the logits by the temperature (a temperature above 1 flattens the distribution), "
            "do not multiply": logits * t,
        }
        _same_distribution(got, logits, TemperatureLogitsWarper(t)(None, logits), what, mistakes)
    passed("apply_temperature (same distribution as TemperatureLogitsWarper)")


@drawn_seed
@forbids_modules(*MODEL_ANSWERS)
def check_top_k(fn: Callable, seed: int = 0) -> None:
    """Exercise 6b: ``fn(logits, k)`` against ``TopKLogitsWarper``, ties and k > vocabulary included."""
    gen = torch.Generator().manual_seed(seed)
    cases = [(k, _random_logits(gen)) for k in (1, 3, 10, 40, 55)]
    tied = torch.tensor([[3.0, 2.0, 2.0, 2.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    cases += [(2, tied), (4, tied)]
    for k, logits in cases:
        copy = logits.clone()
        got = fn(logits, k)
        what = f"top_k_filter(logits of shape {tuple(logits.shape)}, k={k})"
        if not torch.equal(logits, copy):
            raise CheckError(f"{what} changed its input in place: return a new tensor (logits.masked_fill(...))")
        if torch.is_tensor(got) and got.shape == logits.shape and (got == 0).sum() > (logits == 0).sum():
            raise CheckError(f"{what}: set removed logits to -inf, not 0 (a logit of 0 still has probability > 0)")
        expected = TopKLogitsWarper(k)(None, logits)
        if torch.is_tensor(got) and got.shape == logits.shape:
            n_got, n_exp = (got > -math.inf).sum(-1), (expected > -math.inf).sum(-1)
            if (n_got == min(k, logits.size(-1))).all() and (n_exp > n_got).any():
                raise CheckError(f"{what}: with ties, keep EVERY token whose logit equals the k-th largest (keep "
                                 "logits >= the k-th largest value), as nanoGPT and transformers do")
        _same_distribution(got, logits, expected, what)
    passed("top_k_filter (same distribution as TopKLogitsWarper)")


def _top_p_logits(gen: torch.Generator, top_p: float, rows: int = 6, vocab: int = 40) -> torch.Tensor:
    """Random logits whose cumulative probabilities stay clear of ``top_p`` (so rounding cannot decide)."""
    while True:
        logits = _random_logits(gen, rows, vocab)
        cum = torch.softmax(logits, -1).sort(-1, descending=True).values.cumsum(-1)
        if (cum - top_p).abs().min() > 1e-6 or top_p >= 1.0:
            return logits


def _at_the_boundary(logits: torch.Tensor, top_p: float, tol: float = 1e-5) -> torch.Tensor:
    """Tokens whose place in the nucleus float rounding decides: the probability ranked above them is within
    ``tol`` of ``top_p`` (e.g. the far tail at top_p=1.0, where a float32 cumulative sum reaches 1 early)."""
    probs, order = logits.double().softmax(-1).sort(-1, descending=True)
    near = ((probs.cumsum(-1) - probs) - top_p).abs() <= tol
    return torch.zeros_like(near).scatter(-1, order, near)


@drawn_seed
@forbids_modules(*MODEL_ANSWERS)
def check_top_p(fn: Callable, seed: int = 0) -> None:
    """Exercise 6c: ``fn(logits, top_p, min_tokens_to_keep)`` against ``TopPLogitsWarper``."""
    gen = torch.Generator().manual_seed(seed)
    cases = [(p, 1, _top_p_logits(gen, p)) for p in (0.05, 0.3, 0.5, 0.8, 0.9, 0.95, 1.0)]
    cases += [(0.2, 3, _top_p_logits(gen, 0.2)), (0.6, 5, _top_p_logits(gen, 0.6))]
    already_filtered = _top_p_logits(gen, 0.7)
    already_filtered[:, 20:] = -math.inf  # e.g. after top-k
    cases.append((0.7, 1, already_filtered))
    for top_p, keep, logits in cases:
        copy = logits.clone()
        got = fn(logits, top_p, keep) if keep != 1 else fn(logits, top_p)
        what = f"top_p_filter(logits, top_p={top_p}" + (f", min_tokens_to_keep={keep})" if keep != 1 else ")")
        if not torch.equal(logits, copy):
            raise CheckError(f"{what} changed its input in place: return a new tensor")
        expected = TopPLogitsWarper(top_p, min_tokens_to_keep=keep)(None, logits)
        if torch.is_tensor(got) and got.shape == logits.shape:  # where rounding decides, either answer is right
            expected = torch.where(_at_the_boundary(logits, top_p), torch.where(got > -math.inf, logits, -math.inf),
                                   expected)
            n_got, n_exp = (got > -math.inf).sum(-1), (expected > -math.inf).sum(-1)
            if (n_got < keep).any():
                raise CheckError(f"{what}: always keep at least min_tokens_to_keep={keep} tokens (the most likely ones)")
            if ((n_got == n_exp) | (n_got == n_exp - 1)).all() and (n_got == n_exp - 1).any():
                raise CheckError(f"{what}: keep the token that crosses top_p too: the kept set is the "
                                 "SMALLEST set of most likely tokens whose probabilities sum to at least top_p")
        _same_distribution(got, logits, expected, what)
    passed("top_p_filter (same distribution as TopPLogitsWarper)")


@drawn_seed
@forbids_modules(*MODEL_ANSWERS)
def check_sampling(fn: Callable, seed: int = 0, draws: int = 20000) -> None:
    """Exercise 7: ``fn(logits, temperature, top_k, top_p, generator)`` draws from the filtered distribution.

    A chi-square goodness-of-fit test compares the counts of ``draws`` samples with the probabilities
    that transformers' warpers (temperature, then top-k, then top-p) give.
    """
    from scipy.stats import chisquare

    gen = torch.Generator().manual_seed(seed)
    for t, k, p in ((1.0, None, None), (0.7, 5, None), (1.3, None, 0.8), (1.0, 8, 0.6), (2.0, 12, 0.9)):
        row = torch.randn(1, 16, generator=gen, dtype=torch.float64) * 2
        logits = row.expand(draws, -1).clone()
        expected = TemperatureLogitsWarper(t)(None, row) if t != 1.0 else row
        if k is not None:
            expected = TopKLogitsWarper(k)(None, expected)
        if p is not None:
            expected = TopPLogitsWarper(p)(None, expected)
        probs = torch.softmax(expected, -1)[0]
        what = f"sample_next_token(temperature={t}, top_k={k}, top_p={p})"
        got = fn(logits, temperature=t, top_k=k, top_p=p, generator=torch.Generator().manual_seed(seed + 1))
        if not torch.is_tensor(got) or got.dtype != torch.long or got.reshape(-1).shape != (draws,):
            raise CheckError(f"{what}: return a LongTensor with one token id per row, shape ({draws},) or "
                             f"({draws}, 1); got {getattr(got, 'shape', type(got).__name__)}")
        got = got.reshape(-1)
        again = fn(logits, temperature=t, top_k=k, top_p=p, generator=torch.Generator().manual_seed(seed + 1))
        if not torch.equal(again.reshape(-1), got):
            raise CheckError(f"{what}: two calls with equally seeded generators gave different samples: "
                             "pass generator=generator to torch.multinomial")
        counts = torch.bincount(got, minlength=probs.numel()).double()
        if (counts[probs == 0] > 0).any():
            bad = (counts * (probs == 0)).nonzero()[0].item()
            raise CheckError(f"{what}: sampled token {bad}, which the filters remove (apply temperature, then "
                             "top-k, then top-p, and sample from the softmax of what is left)")
        keep = probs > 0
        if keep.sum() > 1:
            p_value = chisquare(counts[keep].numpy(), (probs[keep] * draws).numpy()).pvalue
            if p_value < 1e-4:
                raise CheckError(f"{what}: the sample counts do not fit the filtered distribution (chi-square "
                                 f"p = {p_value:.2g}). Order: temperature, top-k, top-p, softmax, torch.multinomial")
    passed("sample_next_token (chi-square test against the filtered distribution)")
