"""Checks for lab 09 (RL from verifiable rewards, GRPO); the world's scorer, TRL and brute force are the oracles.

Oracles: the world's own answer checker ``world.instructions.score`` (exercise 1, the verifier); the advantage
lines of TRL's ``GRPOTrainer`` written out with TRL's ``nanstd`` (exercise 2); the loss ``GRPOTrainer`` computes
on one batch (exercise 3, ``loss_type="bnpo"``: the token-level average of DAPO on one process); enumeration of
every k-subset of the samples (exercise 4); and a re-measurement of pass@1 on held-out tasks (exercise 5). When a
result is wrong, the checks compare it with typical mistakes and name the one that matches.
"""
from __future__ import annotations

import itertools
import math
import random
import tempfile
from collections.abc import Callable

import torch

from . import CheckError, assert_unchanged, drawn_seed, forbids_modules, passed, trained_copy

# The course's answers (course_utils.grpo), the world's scorer and TRL: the student's code may run none of them.
ANSWERS = ("course_utils.grpo", "course_utils.checks", "course_utils.world.instructions", "trl")
ORACLES = ("trl.trainer.grpo_trainer",)  # loaded once by `course grade`'s check server (checkproc.preload)
_CACHE: dict = {}
# The outcome check (exercise 5): the pass@1 gain it wants and the samples per task it draws. Measured by
# benchmarks/lab_outcome_margins.py (ci sizes, training seeds 0-2 x grader draws 7, 1007, 2007, 225 tasks each,
# 16 samples per task): the course's pieces gain +0.042 to +0.068 (95% CIs over stories no lower than +0.022);
# advantages with the sign flipped -0.169 to -0.185; an untrained copy exactly 0 (both models draw the same
# samples); advantages divided by a std of 0 leave NaN weights, refused before measuring. A CI's half-width of
# about 0.02 puts one standard error of a gain near 0.010: the bar at +0.02 sits 2.2 SE below the course's lowest
# gain and 2 SE above a policy that learned nothing (a false pass of such a policy about 2%, one-sided).
OUTCOME_MARGIN, OUTCOME_SAMPLES = 0.02, 16


def _close(a, b, atol: float = 1e-5) -> bool:
    return torch.is_tensor(a) and a.shape == b.shape and torch.allclose(a.double(), b.double(), atol=atol, rtol=1e-4)


# ------------------------------------------------------------------------------------------- 1. the verifier
def verifier_cases(n_tasks: int = 60, seed: int = 0) -> list[tuple]:
    """(task, response) pairs: the world's candidate responses plus edits that trip naive checkers."""
    from ..world.instructions import FAMILIES, task_split
    from ..world.preferences import candidate_responses

    rng = random.Random(seed)
    tasks = rng.sample(task_split(40, "eval", seed=seed), n_tasks)
    cases = []
    for t in tasks:
        for r in candidate_responses(t, rng):
            cases.append((t, r))
        a = t.answer.split(" , ")[0]
        other = next((c for c in FAMILIES[t.family].choices if c not in t.answer.split(" , ")), a)
        cases += [(t, f"{t.answer} or {other}"), (t, f"answer:{t.answer}"), (t, f"{a}2"),  # rule's neighbours
                  (t, t.answer.upper() + "."), (t, f"{a}s"), (t, f"{a}{a}"), (t, f"({t.answer})"), (t, ""),
                  (t, f"{t.answer} {t.answer}"), (t, f"answer : {t.answer} !"), (t, f"tomato and {t.answer}")]
    return cases


@forbids_modules(*ANSWERS)
def check_verify(fn: Callable) -> None:
    """``fn(response, answer, choices) -> bool`` agrees with the world's scorer on every case."""
    from ..world.instructions import FAMILIES, score

    for task, response in verifier_cases():
        got = fn(response, task.answer, FAMILIES[task.family].choices)
        if not isinstance(got, bool):
            raise CheckError(f"verify must return True or False, got {type(got).__name__}")
        want = score(task, response)
        if got == want:
            continue
        if got:
            hint = ("you accept a response that contains the answer as a substring or names other candidates too: "
                    "extract whole words and compare the SET of candidates with the answer's words")
        elif response != response.lower() and fn(response.lower(), task.answer, FAMILIES[task.family].choices):
            hint = "compare lower-cased words: the rule lower-cases the response first"
        else:
            hint = "punctuation and repeated words must not matter: split into runs of letters a-z"
        raise CheckError(f"verify({response!r}, answer={task.answer!r}) returned {got}, the rule says {want}. {hint}"
                         .strip())
    passed("answer verifier (vs the world's scorer)")


# --------------------------------------------------------------------------------------- 2. group advantages
def trl_advantages(rewards: torch.Tensor, group_size: int, scale: bool) -> torch.Tensor:
    """GRPOTrainer's advantage lines (scale_rewards="group" or "none"), written out with TRL's nanstd."""
    from trl.trainer.utils import nanstd

    grouped = rewards.view(-1, group_size)
    mean = grouped.mean(1).repeat_interleave(group_size)
    std = nanstd(grouped, dim=1).reshape(-1).repeat_interleave(group_size)
    adv = rewards - mean
    return adv / (std + 1e-4) if scale else adv


def _advantage_cases() -> list[tuple[torch.Tensor, int]]:
    g = torch.Generator().manual_seed(0)
    binary = (torch.rand(24, generator=g) < 0.4).float()
    binary[:4] = 1.0  # a group that is all right: no signal
    binary[4:8] = 0.0  # and one all wrong
    return [(binary, 4), (torch.randn(12, generator=g) * 2 + 1, 6), (torch.rand(16, generator=g), 8)]


@forbids_modules(*ANSWERS)
def check_group_advantages(fn: Callable) -> None:
    """``fn(rewards, group_size, scale)`` equals TRL's group-relative advantages, with and without the std."""
    for rewards, group_size in _advantage_cases():
        for scale in (True, False):
            given = rewards.clone()
            got = fn(given, group_size, scale)
            assert_unchanged({"rewards": given}, {"rewards": rewards}, "group_advantages")
            want = trl_advantages(rewards, group_size, scale)
            if _close(got, want, atol=1e-4):
                continue
            flat = rewards - rewards.mean()
            strided = rewards.view(group_size, -1)
            strided = (strided - strided.mean(0)) / ((strided.std(0) + 1e-4) if scale else 1.0)
            hints = [(flat / (rewards.std() + 1e-4), "you normalise across the whole batch; GRPO compares each "
                      "response with the other responses to the SAME prompt (its group of consecutive rows)"),
                     (flat, "you subtract the batch mean; subtract the mean of each response's own group"),
                     (strided.reshape(-1), "your groups are strided; a group is group_size CONSECUTIVE rows "
                      "(view(-1, group_size))")]
            grouped = rewards.view(-1, group_size)
            centred = (grouped - grouped.mean(1, keepdim=True))
            hints += [((centred / (grouped.std(1, correction=0, keepdim=True) + 1e-4)).reshape(-1),
                       "use the Bessel-corrected std of the group (torch.std's default), as TRL does"),
                      (centred.reshape(-1), "scale=True must divide by the group's std (+ 1e-4)"),
                      ((centred / (grouped.std(1, keepdim=True) + 1e-4)).reshape(-1),
                       "scale=False must leave the centred rewards undivided (Dr. GRPO)")]
            hint = next((h for value, h in hints if _close(got, value, atol=1e-4)), "")
            raise CheckError(f"advantages for group_size={group_size}, scale={scale} differ from TRL's. {hint}".strip())
    passed("group-relative advantages (vs TRL's GRPOTrainer formula)")


# ------------------------------------------------------------------------------------------- 3. the GRPO loss
def _no_reward(completions, **kwargs) -> list[float]:
    """A reward function for the trainer's constructor (the check never samples, it feeds a scored batch)."""
    return [0.0] * len(completions)


def trl_grpo_batch() -> dict:
    """TRL's GRPOTrainer and one batch of sampled groups from the course's SFT model (its weights nudged)."""
    if "batch" in _CACHE:
        return _CACHE["batch"]
    from ..sft import quiet_hf

    quiet_hf()
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from ..grpo import sample_groups, token_logprobs
    from ..models import load_pretrained
    from ..world.preferences import rlhf_split

    model, tokenizer = load_pretrained("tiny-gpt-sft", progress=False)
    tasks = rlhf_split(20, 4, 1)["prompts"][:3]
    state = torch.random.get_rng_state()  # sampling and TRL touch the global generator: leave it as it was
    try:
        torch.manual_seed(0)
        ro = sample_groups(model, tokenizer, tasks, 4, 10)
        old = token_logprobs(model, ro)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.03 * torch.randn(p.shape, generator=g))
        trainers = {}
        for loss_type in ("bnpo", "grpo"):
            args = GRPOConfig(output_dir=tempfile.mkdtemp(prefix="grpo-check-"), use_cpu=True, report_to="none",
                              disable_tqdm=True, save_strategy="no", logging_strategy="no", bf16=False,
                              dataloader_pin_memory=False, per_device_train_batch_size=len(ro.texts),
                              num_generations=4, max_completion_length=10, loss_type=loss_type, epsilon=0.2)
            dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": t.instruction}]} for t in tasks])
            trainers[loss_type] = GRPOTrainer(model=model, reward_funcs=_no_reward, args=args,
                                              train_dataset=dataset, processing_class=tokenizer)
    finally:
        torch.random.set_rng_state(state)
    P = ro.prompt_width
    adv = torch.tensor([1.2, -0.4, -0.4, -0.4, 0.0, 0.0, 0.0, 0.0, 0.9, 0.9, -0.9, -0.9])
    inputs = {"prompt_ids": ro.input_ids[:, :P], "prompt_mask": ro.attention_mask[:, :P],
              "completion_ids": ro.input_ids[:, P:], "completion_mask": ro.mask, "advantages": adv,
              "old_per_token_logps": old, "ref_per_token_logps": old - 0.2 * torch.rand(old.shape, generator=g)}
    _CACHE["batch"] = {"trainers": trainers, "inputs": inputs}
    return _CACHE["batch"]


def trl_loss(loss_type: str, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(TRL's loss on the batch, the per-token log-probs TRL computed for it) for ``loss_type`` and KL weight."""
    data = trl_grpo_batch()
    trainer, inputs = data["trainers"][loss_type], data["inputs"]
    trainer.beta = beta
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.training_step; one batch, no accumulation
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(inputs))
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
        mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
        logps = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, ids.shape[1] -
                                                           inputs["prompt_ids"].shape[1])[0]
    return loss.reshape(()), logps


def _loss_variants(lp, old, adv, mask, clip, beta, ref) -> list[tuple[torch.Tensor, str]]:
    ratio, a = torch.exp(lp - old), adv[:, None]
    clipped = ratio.clamp(1 - clip, 1 + clip)
    d = ref - lp
    k3 = (torch.exp(d) - d - 1) * ratio

    def token(x):
        return (x * mask).sum() / mask.sum()

    def seq(x):
        return ((x * mask).sum(-1) / mask.sum(-1)).mean()

    per = -torch.min(ratio * a, clipped * a)
    return [(seq(per + beta * k3), "you average per sequence (mean over each response, then over responses); "
             "this lab asks for the token-level average: sum over all response tokens / number of them"),
            (token(-torch.max(ratio * a, clipped * a) + beta * k3), "take the min of the two surrogates "
             "(max of their negatives): the pessimistic bound"),
            (token(-ratio * a + beta * k3), "the ratio is not clipped to [1 - clip, 1 + clip]"),
            (token(per - beta * k3), "the KL term must be ADDED (it is a penalty)"),
            (token(per + beta * (lp - ref)), "use the k3 estimator exp(ref - logp) - (ref - logp) - 1 per token"),
            (token(per + beta * k3 / ratio), "multiply each token's KL by the ratio pi / pi_old: the tokens were "
             "sampled from pi_old"),
            (token(per), "beta > 0 must add beta * KL to the reference"),
            ((per * mask).sum() / mask.numel() + beta * token(k3), "divide by the number of RESPONSE tokens "
             "(mask.sum()), not by every position")]


@forbids_modules(*ANSWERS)
def check_grpo_loss(fn: Callable) -> None:
    """``fn(logprobs, old_logprobs, advantages, mask, clip, beta, ref_logprobs)`` equals TRL's token-level loss."""
    inputs = trl_grpo_batch()["inputs"]
    old, adv, mask, ref = (inputs[k] for k in ("old_per_token_logps", "advantages", "completion_mask",
                                               "ref_per_token_logps"))
    for beta in (0.0, 0.04):
        want, logps = trl_loss("bnpo", beta)
        given = {"logprobs": logps.clone(), "old_logprobs": old.clone(), "advantages": adv.clone(),
                 "mask": mask.clone(), "ref_logprobs": ref.clone()}
        got = fn(*list(given.values())[:4], 0.2, beta, given["ref_logprobs"])
        assert_unchanged(given, dict(zip(given, (logps, old, adv, mask, ref))), "grpo_loss")
        if not torch.is_tensor(got) or got.numel() != 1:
            raise CheckError(f"grpo_loss must return a scalar tensor, got {type(got).__name__}")
        got = got.reshape(())
        if _close(got, want):
            continue
        seq_want, _ = trl_loss("grpo", beta)
        variants = [(seq_want, _loss_variants(logps, old, adv, mask, 0.2, beta, ref)[0][1])]
        variants += _loss_variants(logps, old, adv, mask, 0.2, beta, ref)[1:]
        hint = next((h for value, h in variants if _close(got, value)), "")
        raise CheckError(f"GRPO loss {got.item():.6f} with beta={beta}, TRL's GRPOTrainer (token-level) gives "
                         f"{want.item():.6f}. {hint}".strip())
    # Every log-prob 200 nats lower leaves each ratio and each KL term as it was, so the same loss; but exp(-200)
    # is 0 in float32: a ratio or KL written as exp(a) / exp(b) becomes 0/0.
    got = fn(logps - 200, old - 200, adv.clone(), mask.clone(), 0.2, 0.04, ref - 200)  # want: beta 0.04 above
    if not (torch.is_tensor(got) and got.numel() == 1 and _close(got.reshape(()), want, atol=1e-4)):
        raise CheckError(f"with every log-prob 200 lower (rare tokens; ratios and KL unchanged) the loss is "
                         f"{got.reshape(-1).tolist() if torch.is_tensor(got) else got}, expected {want.item():.6f}: "
                         "exp(logprob) underflows to 0; write the ratio as exp(logprobs - old_logprobs) and the KL "
                         "from exp(ref - logprobs)")
    # gradients: only through the new log-probs; advantages and the old log-probs are constants of the step.
    # Tested by requires_grad alone (one input at a time), which survives `course grade`'s remote calls.
    for i, name in ((0, "logprobs"), (1, "old_logprobs"), (2, "advantages")):
        args = [logps.clone(), old.clone(), adv.clone(), mask.clone(), 0.2, 0.04, ref.clone()]
        args[i] = args[i].requires_grad_(True)
        flows = getattr(fn(*args), "requires_grad", False)
        if i == 0 and not flows:
            raise CheckError("no gradient reaches the new log-probs: build the loss from them with torch operations "
                             "(no .item(), no .detach() on logprobs)")
        if i > 0 and flows:
            raise CheckError(f"the gradient flows into {name}: .detach() them, they are constants of the step "
                             "(the advantages come from the rewards, the old log-probs from the sampling policy)")
    passed("GRPO loss, token-level, clipped, with KL (vs TRL's GRPOTrainer)")


# ------------------------------------------------------------------------------------------------- 4. pass@k
def brute_pass_at_k(n: int, c: int, k: int) -> float:
    """pass@k by enumeration: the share of k-subsets of n samples (c of them right) that hold a right one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@forbids_modules(*ANSWERS)
def check_pass_at_k(fn: Callable) -> None:
    """``fn(n, c, k)`` equals the enumeration for small n and stays exact and finite for large n."""
    cases = [(n, c, k) for n in (1, 4, 8, 10) for c in range(n + 1) for k in range(1, n + 1)]
    for n, c, k in cases:
        got, want = fn(n, c, k), brute_pass_at_k(n, c, k)
        if not isinstance(got, (float, int)) or isinstance(got, bool):
            raise CheckError(f"pass_at_k must return a float, got {type(got).__name__}")
        if math.isclose(got, want, abs_tol=1e-9):
            continue
        p = c / n
        hints = [(1 - (1 - p) ** k, "1 - (1 - c/n)^k assumes the k samples are drawn WITH replacement; it is biased "
                  "and underestimates; pass@k draws k of the n samples without replacement: "
                  "1 - C(n-c, k) / C(n, k)"),
                 (p, "pass@k must grow with k: it is the chance that at least one of k samples is right"),
                 (math.comb(c, k) / math.comb(n, k), "that is the chance that ALL k samples are right; pass@k "
                  "needs at least one")]
        hint = next((h for value, h in hints if math.isclose(got, value, abs_tol=1e-9)), "")
        raise CheckError(f"pass_at_k(n={n}, c={c}, k={k}) = {got}, enumeration gives {want}. {hint}".strip())
    for n, c, k in ((2000, 3, 1000), (2000, 1500, 1), (500, 0, 250)):
        try:
            got = fn(n, c, k)
        except OverflowError:
            got = "an OverflowError"
        want = 1 - math.comb(n - c, k) / math.comb(n, k)
        if not (isinstance(got, (float, int)) and math.isfinite(got) and math.isclose(got, want, abs_tol=1e-9)):
            raise CheckError(f"pass_at_k(n={n}, c={c}, k={k}) = {got}, expected {want:.12f}: with large n, binomials "
                             "overflow floats; divide the exact integers, math.comb(n - c, k) / math.comb(n, k), or "
                             "use the product form 1 - prod(1 - k / i for i in range(n - c + 1, n + 1))")
    passed("unbiased pass@k (vs enumeration of every k-subset)")


# ----------------------------------------------------------------------------------------------- 5. outcome
def verified_shares(model, tokenizer, tasks, n: int, max_new_tokens: int, seed: int) -> list[float]:
    """Per task, the share of ``n`` sampled responses (temperature 1) the world's verifier accepts: pass@1's terms.

    Sampled from ``seed`` in fixed batches, so two models that agree draw the same responses (common random
    numbers): the difference of two models' shares then carries little sampling noise.
    """
    from ..grpo import correctness_reward, sample_groups

    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        shares = []
        for i in range(0, len(tasks), 32):
            ro = sample_groups(model, tokenizer, tasks[i:i + 32], n, max_new_tokens)
            shares += correctness_reward(ro.tasks, ro.texts).view(-1, n).mean(1).tolist()
    finally:
        torch.random.set_rng_state(state)
    return shares


@drawn_seed
def check_grpo_outcome(policy, sft_name: str, max_new_tokens: int, margin: float = OUTCOME_MARGIN,
                       n: int = OUTCOME_SAMPLES, seed: int = 7) -> None:
    """Re-measured here: pass@1 of the trained weights beats ``sft_name``'s by ``margin`` on the grader's own tasks.

    The student's weights are loaded into the grader's copy of ``sft_name`` (``trained_copy``); the held-out tasks
    are drawn by ``seed`` (shifted by the grader's secret draw); the reference is the shipped model; ``n`` samples
    per task from the same random numbers for both. Nothing the notebook made or reported is used.
    """
    from ..models import load_pretrained
    from ..sft import quiet_hf
    from .rlhf import grader_eval_tasks

    quiet_hf()  # no library warnings in the grader (generate warns about padding on some batches of these tasks)
    trained = trained_copy(policy, sft_name)
    if not all(torch.isfinite(p).all() for p in trained.parameters()):
        raise CheckError("the trained weights hold NaN or inf: training diverged (an advantage divided by a group "
                         "std of 0? add the 1e-4 to the std), so there is no policy to measure")
    sft, tokenizer = load_pretrained(sft_name, progress=False)
    tasks = grader_eval_tasks(seed=seed)
    before = verified_shares(sft, tokenizer, tasks, n, max_new_tokens, seed)
    after = verified_shares(trained, tokenizer, tasks, n, max_new_tokens, seed)
    p0, p1 = sum(before) / len(tasks), sum(after) / len(tasks)
    if p1 < p0 + margin:
        raise CheckError(f"pass@1 on the grader's held-out tasks went {p0:.3f} -> {p1:.3f}, less than +{margin}: if "
                         "the checks above pass, look at how your pieces are passed to the GRPO loop (advantages: "
                         "higher reward, higher advantage) and pass the trained copy (policy)")
    passed(f"GRPO with your pieces raised pass@1 on the grader's held-out tasks {p0:.3f} -> {p1:.3f}")


__all__ = ["brute_pass_at_k", "check_group_advantages", "check_grpo_loss", "check_grpo_outcome", "check_pass_at_k",
           "check_verify", "trl_advantages", "trl_grpo_batch", "trl_loss", "verified_shares", "verifier_cases"]
