"""Lab 03 plausible wrong submissions (issue 24 §6): each loses its exercise's check; correct variants pass."""
import math
from collections import Counter
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from course_utils.checks import bpe as bpe_checks
from course_utils.checks import gpt as checks
from course_utils.checks import llama as llama_checks
from course_utils.checks import optim as optim_checks
from catch_rate import catch_rate_tests, solution_functions

SOLUTION = Path(__file__).resolve().parents[1] / "solutions" / "03_gpt_pretraining.ipynb"
SOL = solution_functions(SOLUTION, {"math": math, "Counter": Counter, "torch": torch, "nn": nn, "F": F,
                                    "tie_key": bpe_checks.tie_key, "byte_words": bpe_checks.byte_words})


def _attention(weights_of):
    """A CausalSelfAttention whose attention weights are ``weights_of(scores, causal, head_size)``."""
    class Attention(SOL["CausalSelfAttention"]):
        def forward(self, x):
            B, T, C = x.shape
            hs = C // self.n_head
            q, k, v = (t.view(B, T, self.n_head, hs).transpose(1, 2) for t in self.c_attn(x).split(C, dim=2))
            causal = torch.ones(T, T, dtype=torch.bool).tril()
            y = weights_of(q @ k.transpose(-2, -1), causal, hs) @ v
            return self.c_proj(y.transpose(1, 2).reshape(B, T, C))
    return Attention


class BlockAddingInPlace(SOL["Block"]):
    def forward(self, x):
        x += self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


def lm_loss_log_of_softmax(logits, labels):
    logp = torch.log(torch.softmax(logits[:, :-1], -1))
    return F.nll_loss(logp.transpose(1, 2), labels[:, 1:], ignore_index=-100)


def lm_loss_logsumexp_without_max(logits, labels):
    logp = logits - logits.exp().sum(-1, keepdim=True).log()
    return F.nll_loss(logp[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100)


def lm_loss_labels_edited(logits, labels):
    mask = labels[:, 1:] != -100
    labels[labels == -100] = 0
    per_token = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], reduction="none")
    return (per_token * mask).sum() / mask.sum()


def greedy_last_token_only(next_logits, input_ids, max_new_tokens):
    ids = input_ids
    for _ in range(max_new_tokens):
        ids = torch.cat([ids, next_logits(ids[:, -1:]).argmax(-1, keepdim=True)], dim=1)
    return ids


def beam_search_raw_logits(next_logits, input_ids, num_beams, max_new_tokens):
    beams, scores = input_ids, torch.zeros(1)
    for _ in range(max_new_tokens):
        candidates = scores[:, None] + next_logits(beams)
        scores, flat = candidates.flatten().topk(num_beams)
        beams = torch.cat([beams[flat // candidates.size(-1)], (flat % candidates.size(-1))[:, None]], dim=1)
    return beams[:1]


def temperature_in_place(logits, temperature):
    logits /= temperature
    return logits


def top_k_exactly_k(logits, k):
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, logits.topk(min(k, logits.size(-1))).indices, True)
    return logits.masked_fill(~keep, float("-inf"))


def top_p_without_crossing_token(logits, top_p, min_tokens_to_keep=1):
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    remove = sorted_logits.softmax(-1).cumsum(-1) > top_p
    remove[..., :min_tokens_to_keep] = False
    return logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))


def sampling_without_generator(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    return SOL["sample_next_token"](logits, temperature, top_k, top_p)


def lr_warmup_from_step_one(step, max_lr, min_lr, warmup_steps, total_steps):
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    return SOL["lr_at"](step, max_lr, min_lr, warmup_steps, total_steps)


def lr_cosine_one_step_short(step, max_lr, min_lr, warmup_steps, total_steps):
    if step < warmup_steps:
        return max_lr * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps - 1))
    return min_lr + (max_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def clip_in_place(grads, max_norm):
    total_norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    for g in grads:
        g.mul_(torch.clamp(max_norm / (total_norm + 1e-6), max=1.0))
    return grads, total_norm


def adamw_state_in_place(params, grads, state, lr, weight_decay, betas=(0.9, 0.999), eps=1e-8):
    (beta1, beta2), t = betas, state["step"] + 1
    new_params = {}
    for name, p in params.items():
        g, m, v = grads[name], state["exp_avg"][name], state["exp_avg_sq"][name]
        m.mul_(beta1).add_((1 - beta1) * g)
        v.mul_(beta2).add_((1 - beta2) * g * g)
        p = p * (1 - lr * (weight_decay if p.dim() >= 2 else 0.0))
        new_params[name] = p - lr * (m / (1 - beta1 ** t)) / ((v / (1 - beta2 ** t)).sqrt() + eps)
    return new_params, {"step": t, "exp_avg": state["exp_avg"], "exp_avg_sq": state["exp_avg_sq"]}


def adamw_without_bias_correction(params, grads, state, lr, weight_decay, betas=(0.9, 0.999), eps=1e-8):
    (beta1, beta2), t = betas, state["step"] + 1
    new_params, exp_avg, exp_avg_sq = {}, {}, {}
    for name, p in params.items():
        g = grads[name]
        exp_avg[name] = beta1 * state["exp_avg"][name] + (1 - beta1) * g
        exp_avg_sq[name] = beta2 * state["exp_avg_sq"][name] + (1 - beta2) * g * g
        p = p * (1 - lr * (weight_decay if p.dim() >= 2 else 0.0))
        new_params[name] = p - lr * exp_avg[name] / (exp_avg_sq[name].sqrt() + eps)
    return new_params, {"step": t, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}


def clip_each_tensor(grads, max_norm):
    norms = [g.norm() for g in grads]
    return [g * torch.clamp(max_norm / (n + 1e-6), max=1.0) for g, n in zip(grads, norms)], torch.stack(norms).norm()


def bpe_stops_at_count_one(words, num_merges):
    counts = Counter(tuple(w) for w in words)
    pieces = {w: list(w) for w in counts}
    merges = []
    for i in range(num_merges):
        pairs = Counter()
        for w, count in counts.items():
            for pair in zip(pieces[w], pieces[w][1:]):
                pairs[pair] += count
        best = min(pairs, key=lambda pair: (-pairs[pair], bpe_checks.tie_key(pair)), default=None)
        if best is None or pairs[best] < 2:
            break
        merges.append(best)
        pieces = {w: SOL["merge_pair"](p, best, 256 + i) for w, p in pieces.items()}
    return merges


def bpe_ties_by_first_found(words, num_merges):
    counts = Counter(tuple(w) for w in words)
    pieces = {w: list(w) for w in counts}
    merges = []
    for i in range(num_merges):
        pairs = Counter()
        for w, count in counts.items():
            for pair in zip(pieces[w], pieces[w][1:]):
                pairs[pair] += count
        if not pairs:
            break
        merges.append(pairs.most_common(1)[0][0])
        pieces = {w: SOL["merge_pair"](p, merges[-1], 256 + i) for w, p in pieces.items()}
    return merges


WRONG = {
    "attention no scaling": (checks.check_causal_self_attention, _attention(
        lambda s, causal, hs: s.masked_fill(~causal, -math.inf).softmax(-1)), "not scaled"),
    "attention mask after softmax": (checks.check_causal_self_attention, _attention(
        lambda s, causal, hs: (s / math.sqrt(hs)).softmax(-1) * causal), "after the softmax"),
    "attention softmax over queries": (checks.check_causal_self_attention, _attention(
        lambda s, causal, hs: (s / math.sqrt(hs)).masked_fill(~causal, -math.inf).softmax(-2).nan_to_num()),
        "values differ"),
    "block adds in place": (checks.check_block, BlockAddingInPlace, "changed x in place"),
    "lm_loss log(softmax)": (checks.check_lm_loss, lm_loss_log_of_softmax, "underflows"),
    "lm_loss logsumexp without max": (checks.check_lm_loss, lm_loss_logsumexp_without_max, "without the max"),
    "lm_loss labels edited in place": (checks.check_lm_loss, lm_loss_labels_edited, "changed labels in place"),
    "lm_loss no shift": (checks.check_lm_loss, lambda lg, lb: F.cross_entropy(lg.flatten(0, 1), lb.flatten()),
                         "no shift"),
    "lm_loss detached": (checks.check_lm_loss, lambda lg, lb: SOL["lm_loss"](lg.detach(), lb), "carries no gradient"),
    "greedy last token only": (checks.check_greedy, greedy_last_token_only, "first difference"),
    "beam search raw logits": (checks.check_beam_search, beam_search_raw_logits, "LOG-probabilities"),
    "temperature in place": (checks.check_temperature, temperature_in_place, "in place"),
    "temperature multiplies": (checks.check_temperature, lambda lg, t: lg * t, "do not multiply"),
    "top_k exactly k with ties": (checks.check_top_k, top_k_exactly_k, "ties"),
    "top_k drops the k-th": (checks.check_top_k, lambda lg, k: lg.masked_fill(
        lg <= lg.topk(min(k, lg.size(-1))).values[..., -1:], -math.inf), "keeps"),
    "top_p without the crossing token": (checks.check_top_p, top_p_without_crossing_token, "crosses top_p"),
    "sampling without the generator": (checks.check_sampling, sampling_without_generator, "generator=generator"),
    "lr warm-up from step one": (optim_checks.check_lr_schedule, lr_warmup_from_step_one, "off by one"),
    "lr cosine one step short": (optim_checks.check_lr_schedule, lr_cosine_one_step_short, "cosine phase"),
    "clip in place": (optim_checks.check_clip_grad_norm, clip_in_place, "in place"),
    "adamw state in place": (optim_checks.check_adamw_step, adamw_state_in_place, "in place"),
    "top_p min_tokens_to_keep ignored": (checks.check_top_p, lambda lg, p, keep=1: SOL["top_p_filter"](lg, p),
                                         "min_tokens_to_keep"),
    "clip each tensor by its own norm": (optim_checks.check_clip_grad_norm, clip_each_tensor, "OWN norm"),
    "adamw without bias correction": (optim_checks.check_adamw_step, adamw_without_bias_correction, "bias-corrected"),
    "swiglu silu on the up branch": (llama_checks.check_swiglu, lambda x, g, u, d: (
        (x @ g.T) * F.silu(x @ u.T)) @ d.T, "GATE branch"),
    "rms_norm eps outside": (llama_checks.check_rms_norm, lambda x, w, eps=1e-6: w * x / (
        x.pow(2).mean(-1, keepdim=True).sqrt() + eps), "INSIDE"),
    "rotary interleaved": (llama_checks.check_rotary, lambda x, theta=10000.0: llama_checks._rotary(
        x, theta, interleaved=True), "neighbouring pairs"),
    "bpe stops at count one": (bpe_checks.check_bpe_trainer, bpe_stops_at_count_one, "stopped early"),
    "bpe ties by first found": (bpe_checks.check_bpe_trainer, bpe_ties_by_first_found, "tie_key"),
}


def lm_loss_loop(logits, labels):
    terms = [-logits[b, t - 1].log_softmax(-1)[labels[b, t]] for b in range(labels.size(0))
             for t in range(1, labels.size(1)) if labels[b, t] != -100]
    return torch.stack(terms).mean()


def lr_with_transformers_formula(step, max_lr, min_lr, warmup_steps, total_steps):
    if step < warmup_steps:
        return max_lr * step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + (max_lr - min_lr) * (math.cos(math.pi * progress) + 1) / 2


RIGHT = {
    "solution attention": (checks.check_causal_self_attention, SOL["CausalSelfAttention"]),
    "attention with a large negative mask": (checks.check_causal_self_attention, _attention(
        lambda s, causal, hs: (s / math.sqrt(hs)).masked_fill(~causal, -1e30).softmax(-1))),
    "solution block": (checks.check_block, SOL["Block"]),
    "solution lm_loss": (checks.check_lm_loss, SOL["lm_loss"]),
    "lm_loss loop": (checks.check_lm_loss, lm_loss_loop),
    "lm_loss log_softmax + nll": (checks.check_lm_loss, lambda lg, lb: F.nll_loss(
        lg[:, :-1].log_softmax(-1).transpose(1, 2), lb[:, 1:])),
    "solution top_k": (checks.check_top_k, SOL["top_k_filter"]),
    "top_k with torch.where": (checks.check_top_k, lambda lg, k: torch.where(
        lg >= lg.sort(-1, descending=True).values[..., min(k, lg.size(-1)) - 1:min(k, lg.size(-1))], lg, -math.inf)),
    "solution lr": (optim_checks.check_lr_schedule, SOL["lr_at"]),
    "lr transformers formula": (optim_checks.check_lr_schedule, lr_with_transformers_formula),
    "solution clip": (optim_checks.check_clip_grad_norm, SOL["clip_by_global_norm"]),
    "solution adamw": (optim_checks.check_adamw_step, SOL["adamw_step"]),
    "solution bpe": (bpe_checks.check_bpe_trainer, SOL["train_bpe"]),
}


test_a_plausible_wrong_version_loses_its_check, test_a_correct_version_passes = catch_rate_tests(WRONG, RIGHT)
