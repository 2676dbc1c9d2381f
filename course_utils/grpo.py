"""RL from verifiable rewards, written out: a verifier, group-relative advantages, the GRPO loss and loop, pass@k.

Shared by lecture 09 and its lab. A *verifiable* reward is a program: ``verify`` checks a response against the
task's answer with a stated extraction rule. GRPO samples a group of responses per prompt, scores each, and uses
its reward relative to the group (``group_advantages``; RLOO's leave-one-out baseline in ``rloo_advantages``)
instead of a learned value function. ``grpo_loss`` is PPO's clipped surrogate with one advantage per response,
averaged per token (DAPO, TRL's ``bnpo``) or per sequence (the original GRPO), plus an optional KL to the reference.
``grpo`` runs the loop; ``pass_at_k`` is the unbiased estimator of Chen et al. (2021).
The batch layout is TRL's: the ``group_size`` responses of one prompt are consecutive rows.
"""
from __future__ import annotations

import functools
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .rlhf import masked_mean, positions, response_logprobs, rollout
from .world.instructions import FAMILIES, Task
from .world.preferences import true_reward

LEVELS = ("token", "sequence")


# ------------------------------------------------------------------------------------------------- verifier
def candidates(response: str, choices: Sequence[str]) -> list[str]:
    """The extraction rule: the words of the response (lower-cased runs of a-z) that are possible answers."""
    return [w for w in re.findall(r"[a-z]+", response.lower()) if w in choices]


def verify(response: str, answer: str, choices: Sequence[str]) -> bool:
    """Right iff the set of extracted candidates equals the set of the answer's words (another candidate fails it)."""
    if not isinstance(response, str):
        raise TypeError(f"response must be a string, got {type(response).__name__}")
    return set(candidates(response, choices)) == set(re.findall(r"[a-z]+", answer.lower()))


def task_verifier(task: Task, response: str) -> bool:
    """``verify`` with the task's answer and its family's answer vocabulary."""
    return verify(response, task.answer, FAMILIES[task.family].choices)


def lax_verify(response: str, answer: str) -> bool:
    """A verifier with a loophole: the answer appears anywhere in the response (a list of every choice passes)."""
    return answer in response.lower()


def lax_reward(tasks: Sequence[Task], texts: Sequence[str]) -> torch.Tensor:
    """1.0 where ``lax_verify`` accepts the response: a reward to train on and watch the loophole being found."""
    return torch.tensor([float(lax_verify(x, t.answer)) for t, x in zip(tasks, texts)])


def correctness_reward(tasks: Sequence[Task], texts: Sequence[str]) -> torch.Tensor:
    """The verifiable reward: 1.0 for a verified response, 0.0 otherwise."""
    return torch.tensor([float(task_verifier(t, x)) for t, x in zip(tasks, texts)])


def r_star_reward(tasks: Sequence[Task], texts: Sequence[str]) -> torch.Tensor:
    """The world's true reward r* (correctness, then concision) as the reward: modules 05-06's ground truth."""
    return torch.tensor([true_reward(t, x) for t, x in zip(tasks, texts)])


# --------------------------------------------------------------------------------------- advantages and loss
def _groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards.dim() != 1 or group_size < 2 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be 1-D with a multiple of group_size (>= 2) entries; got shape "
                         f"{tuple(rewards.shape)} and group_size {group_size}")
    return rewards.float().view(-1, group_size)


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """(r - mean of its group) / (std of its group + eps), or without the division when ``scale`` is False."""
    g = _groups(rewards, group_size)
    adv = g - g.mean(1, keepdim=True)
    if scale:
        adv = adv / (g.std(1, keepdim=True) + eps)  # Bessel-corrected std, as TRL's nanstd
    return adv.reshape(-1)


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO: each reward minus the mean of the other rewards of its group (a baseline that excludes itself)."""
    g = _groups(rewards, group_size)
    return (g - (g.sum(1, keepdim=True) - g) / (group_size - 1)).reshape(-1)


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token KL estimate exp(ref - logp) - (ref - logp) - 1 (non-negative, unbiased; GRPO's choice)."""
    d = ref_logprobs - logprobs
    return torch.exp(d) - d - 1


def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              clip: float = 0.2, beta: float = 0.0, ref_logprobs: torch.Tensor | None = None,
              level: str = "token") -> torch.Tensor:
    """Clipped surrogate with one advantage per response (+ beta * ratio * k3 KL), averaged per token or sequence."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    if beta and ref_logprobs is None:
        raise ValueError("beta > 0 needs ref_logprobs (the frozen reference's log-probs of the same tokens)")
    adv = advantages.detach()[:, None]
    ratio = torch.exp(logprobs - old_logprobs.detach())
    per_token = -torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
    if beta:  # k3 KL, reweighted by the ratio because the tokens were sampled from pi_old (TRL's default)
        per_token = per_token + beta * kl_k3(logprobs, ref_logprobs.detach()) * ratio
    if level == "token":
        return masked_mean(per_token, mask)
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()


# ----------------------------------------------------------------------------------------------------- pass@k
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


# ------------------------------------------------------------------------------------------------- sampling
class Sampler(torch.nn.Module):
    """A causal LM as ``rlhf.rollout`` samples from it (it reads ``.lm``); GRPO needs no value head."""

    def __init__(self, lm: torch.nn.Module):
        super().__init__()
        self.lm = lm


def sample_groups(model, tokenizer, tasks: Sequence[Task], group_size: int, max_new_tokens: int,
                  temperature: float = 1.0):
    """``group_size`` sampled responses per task, each task's group in consecutive rows (a ``rlhf.Rollout``)."""
    repeated = [t for t in tasks for _ in range(group_size)]
    return rollout(Sampler(model), tokenizer, repeated, max_new_tokens, temperature)


def pass_curve(model, tokenizer, tasks: Sequence[Task], n: int, max_new_tokens: int, seed: int = 0,
               batch_tasks: int = 32) -> dict[int, float]:
    """Mean unbiased pass@k over ``tasks`` for k = 1..n, from n sampled responses per task (temperature 1)."""
    torch.manual_seed(seed)
    correct = []
    for i in range(0, len(tasks), batch_tasks):
        ro = sample_groups(model, tokenizer, tasks[i:i + batch_tasks], n, max_new_tokens)
        hits = correctness_reward(ro.tasks, ro.texts).view(-1, n)
        correct += [int(h.sum()) for h in hits]
    return {k: sum(pass_at_k(n, c, k) for c in correct) / len(correct) for k in range(1, n + 1)}


@torch.no_grad()
def token_logprobs(model, ro) -> torch.Tensor:
    """Log-probs of each sampled response token under ``model`` (zero on padding): [B, T]."""
    logits = model(input_ids=ro.input_ids, attention_mask=ro.attention_mask,
                   position_ids=positions(ro.attention_mask)).logits
    return response_logprobs(logits, ro.input_ids, ro.prompt_width) * ro.mask


def reply_stats(model, tokenizer, tasks: Sequence[Task], n: int, max_new_tokens: int, seed: int = 0) -> dict:
    """Over n sampled responses per task: shares the strict and only the lax verifier accept, mean r* and words."""
    torch.manual_seed(seed)
    ro = sample_groups(model, tokenizer, tasks, n, max_new_tokens)
    pairs = list(zip(ro.tasks, ro.texts))
    strict = [task_verifier(t, x) for t, x in pairs]
    return {"strict": sum(strict) / len(pairs),
            "lax only": sum(lax_verify(x, t.answer) and not ok for (t, x), ok in zip(pairs, strict)) / len(pairs),
            "r*": sum(true_reward(t, x) for t, x in pairs) / len(pairs),
            "words": sum(len(x.split()) for _, x in pairs) / len(pairs)}


def distinct_share(texts: Sequence[str], group_size: int) -> float:
    """Mean share of distinct responses within each group: 1 when all differ, 1/group_size when all are equal."""
    groups = [texts[i:i + group_size] for i in range(0, len(texts), group_size)]
    return sum(len(set(g)) / len(g) for g in groups) / len(groups)


# ---------------------------------------------------------------------------------------- expert iteration
def verified_samples(model, tokenizer, tasks: Sequence[Task], n: int, max_new_tokens: int,
                     seed: int = 0) -> list[tuple[Task, str]]:
    """Rejection sampling: n responses per task, kept where the verifier accepts them (one copy of each)."""
    torch.manual_seed(seed)
    kept = set()
    for i in range(0, len(tasks), 64):
        ro = sample_groups(model, tokenizer, tasks[i:i + 64], n, max_new_tokens)
        kept |= {(t, x) for t, x in zip(ro.tasks, ro.texts) if task_verifier(t, x)}
    return sorted(kept, key=lambda tx: (tx[0].instruction, tx[1]))


def expert_iteration(model, tokenizer, samples: Sequence[tuple[Task, str]], steps: int, batch_size: int, lr: float,
                     seed: int = 0, progress: bool = True) -> None:
    """Fine-tune ``model`` in place on its own verified responses (SFT loss on the response tokens)."""
    from .sft import collate, encode_chat
    from .training import train

    if not samples:
        raise ValueError("no verified samples to train on: sample more responses per task (n)")
    rng = random.Random(seed)
    examples = [encode_chat(tokenizer, task.messages(text)) for task, text in samples]
    train(model, lambda: collate(rng.sample(examples, min(batch_size, len(examples))), tokenizer.pad_token_id),
          steps=steps, lr=lr, progress=progress, desc="expert iteration")  # the LM loss on the labelled reply
    model.eval()


# ------------------------------------------------------------------------------------------------- the loop
@dataclass
class GRPOConfig:
    """GRPO's knobs (defaults for the tiny model)."""

    group_size: int = 8  # responses per prompt (TRL's num_generations)
    prompts: int = 8  # prompts per step
    steps: int = 20
    iterations: int = 2  # gradient steps on each batch of samples (TRL's num_iterations); > 1 makes the clip act
    lr: float = 1e-4
    clip: float = 0.2
    beta: float = 0.0  # weight of the KL to the reference (0: no reference model needed)
    scale: bool = True  # divide advantages by the group's std (Dr. GRPO drops it)
    level: str = "token"  # "token" (DAPO) or "sequence" (original GRPO) averaging
    max_new_tokens: int = 12
    temperature: float = 1.0
    seed: int = 0


@dataclass
class GRPOHistory:
    """Per step: mean reward, share of verified responses, KL to the reference (nats per response) and length."""

    reward: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    length: list[float] = field(default_factory=list)
    samples: int = 0


PARTS = {"advantages": group_advantages, "loss": grpo_loss}


def grpo(policy, reference, reward_fn: Callable[[Sequence[Task], Sequence[str]], torch.Tensor], tokenizer,
         prompts: Sequence[Task], cfg: GRPOConfig, parts: dict | None = None, progress: bool = True,
         desc: str = "GRPO", callback: Callable[[int, GRPOHistory], None] | None = None) -> GRPOHistory:
    """Sample groups, score them, group-relative advantages, ``iterations`` clipped steps; returns the history.

    ``parts`` may replace the pieces: {"advantages": fn(rewards, group_size, scale),
    "loss": fn(logprobs, old_logprobs, advantages, mask, clip, beta, ref_logprobs)} (then ``cfg.level`` is unused).
    """
    from .progress import tqdm

    unknown = set(parts or {}) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown GRPO parts {sorted(unknown)}; use {sorted(PARTS)}")
    advantages_fn = (parts or {}).get("advantages", group_advantages)
    loss_fn = (parts or {}).get("loss", functools.partial(grpo_loss, level=cfg.level))
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)
    history = GRPOHistory()
    for step in tqdm(range(1, cfg.steps + 1), desc=desc, disable=not progress, mininterval=0.5):
        policy.eval()
        ro = sample_groups(policy, tokenizer, rng.sample(list(prompts), cfg.prompts), cfg.group_size,
                           cfg.max_new_tokens, cfg.temperature)
        rewards = reward_fn(ro.tasks, ro.texts).float()
        advantages = advantages_fn(rewards, cfg.group_size, cfg.scale)
        old = token_logprobs(policy, ro)
        ref = token_logprobs(reference, ro)
        policy.train()
        for _ in range(cfg.iterations):
            logits = policy(input_ids=ro.input_ids, attention_mask=ro.attention_mask,
                            position_ids=positions(ro.attention_mask)).logits
            logprobs = response_logprobs(logits, ro.input_ids, ro.prompt_width)
            loss = loss_fn(logprobs, old, advantages, ro.mask, cfg.clip, cfg.beta, ref)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            optimizer.step()
        policy.eval()
        history.reward.append(rewards.mean().item())
        history.accuracy.append(correctness_reward(ro.tasks, ro.texts).mean().item())
        history.kl.append(((old - ref) * ro.mask).sum(-1).mean().item())
        history.length.append(ro.mask.sum(-1).float().mean().item())
        history.samples += len(ro.texts)
        if callback is not None:
            callback(step, history)
    return history


def plot_grpo(history: GRPOHistory, axes=None, title: str = "GRPO", label: str | None = None):
    """Four panels per step: mean reward, verified share, KL to the reference, response tokens."""
    from .training import plot_panels

    panels = [("reward", history.reward), ("verified share", history.accuracy),
              ("KL to reference (nats)", history.kl), ("response tokens", history.length)]
    return plot_panels(panels, "step", axes, title, label)


__all__ = ["GRPOConfig", "GRPOHistory", "Sampler", "candidates", "correctness_reward", "distinct_share",
           "expert_iteration", "group_advantages", "grpo", "grpo_loss", "kl_k3", "pass_at_k", "pass_curve",
           "plot_grpo", "r_star_reward", "rloo_advantages", "sample_groups", "task_verifier", "token_logprobs",
           "verified_samples", "verify"]
