"""RLHF with PPO, written out: a reward model with a scalar head, per-token rewards, GAE, the PPO losses and loop.

Shared by lecture 05 and its lab (and module 06, which compares DPO with this PPO). The PPO loop is four
readable steps over tensors of shape [batch, response tokens] (responses aligned at column 0, padding after
each response's <|end|>): ``rollout`` samples responses, ``score`` runs the policy, the frozen reference and
the reward model on them, ``per_token_rewards`` + ``gae`` turn that into advantages, and ``ppo_update``
takes a few clipped gradient epochs. ``ppo`` runs the whole loop and records RM score, r*, KL and length.
"""
from __future__ import annotations

import copy
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification

from .sft import end_of_turn_ids, respond
from .world.instructions import Task, words
from .stats import Estimate, mean_ci
from .world.preferences import Pair, true_reward, win_outcomes


# ----------------------------------------------------------------------------------------------- reward model
def no_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Set every dropout probability to 0 (RL compares log-probs across passes: they must be deterministic)."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def reward_model_from(model, tokenizer) -> torch.nn.Module:
    """A reward model initialised from a causal LM's checkpoint folder: the same trunk and a new scalar head."""
    path = getattr(model, "name_or_path", "") or model.config._name_or_path
    if not path:
        raise ValueError("the model has no checkpoint folder: save it with save_pretrained and load it back")
    rm = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    return no_dropout(rm)


def reward_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None) -> torch.Tensor:
    """Bradley-Terry loss: mean of -log sigmoid(r_chosen - r_rejected - margin) (TRL's RewardTrainer loss)."""
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff).mean()


def chat_ids(tokenizer, prompts: Sequence[str], responses: Sequence[str]) -> list[list[int]]:
    """Token ids of one-turn chats: each templated prompt, its response and <|end|> (tokenized as one batch)."""
    chats = [[{"role": "user", "content": p}, {"role": "assistant", "content": r}] for p, r in zip(prompts, responses)]
    return [list(ids) for ids in tokenizer.apply_chat_template(chats, tokenize=True, return_dict=True)["input_ids"]]


def pad_right(rows: Sequence[list[int]], pad_id: int) -> dict:
    """Right-padded ``input_ids`` and ``attention_mask`` of ragged id lists."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
    return {"input_ids": ids, "attention_mask": mask}


def pair_batch(tokenizer, pairs: Sequence[Pair]) -> dict:
    """Chosen rows then rejected rows, right-padded (the layout of TRL's reward collator)."""
    prompts = [p.prompt for p in pairs]
    rows = chat_ids(tokenizer, prompts + prompts, [p.chosen for p in pairs] + [p.rejected for p in pairs])
    return pad_right(rows, tokenizer.pad_token_id)


def rm_loss_fn(rm, batch: dict) -> torch.Tensor:
    """Reward loss of a pair batch (a ``loss_fn`` for ``training.train``)."""
    r = rm(**batch).logits.squeeze(-1)
    return reward_loss(*r.chunk(2))


def train_reward_model(base, tokenizer, pairs: Sequence[Pair], steps: int, batch_size: int, lr: float,
                       seed: int = 0, progress: bool = True, desc: str = "reward model"):
    """A reward model from ``base``'s checkpoint, trained with the reward loss on random batches of ``pairs``."""
    from .training import train

    torch.manual_seed(seed)  # the new scalar head's initial weights
    rm = reward_model_from(base, tokenizer).to(base.device)
    rng, pairs = random.Random(seed), list(pairs)
    train(rm, lambda: pair_batch(tokenizer, rng.sample(pairs, batch_size)), steps=steps, lr=lr,
          loss_fn=rm_loss_fn, progress=progress, desc=desc)
    return rm.eval()


@torch.no_grad()
def rm_scores(rm, tokenizer, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 128) -> torch.Tensor:
    """The reward model's score of each (prompt, response)."""
    rm.eval()
    out = []
    for i in range(0, len(prompts), batch_size):
        rows = chat_ids(tokenizer, prompts[i:i + batch_size], responses[i:i + batch_size])
        batch = {k: v.to(rm.device) for k, v in pad_right(rows, tokenizer.pad_token_id).items()}
        out.append(rm(**batch).logits.squeeze(-1).float().cpu())
    return torch.cat(out)


def pair_accuracy(rm, tokenizer, pairs: Sequence[Pair]) -> dict[str, float]:
    """How often the RM prefers the labelled 'chosen' side; 'ceiling' is what r* itself scores on these noisy labels."""
    chosen = rm_scores(rm, tokenizer, [p.prompt for p in pairs], [p.chosen for p in pairs])
    rejected = rm_scores(rm, tokenizer, [p.prompt for p in pairs], [p.rejected for p in pairs])
    agree = (chosen > rejected).float()
    truth = torch.tensor([p.r_chosen > p.r_rejected for p in pairs]).float()
    return {"labels": agree.mean().item(), "ceiling": truth.mean().item(),
            "r*": (agree == truth).float().mean().item()}


# ------------------------------------------------------------------------------------------- policy and value
class PolicyWithValue(torch.nn.Module):
    """A causal LM plus a value head on its last hidden state: logits and a value per position."""

    def __init__(self, lm: torch.nn.Module):
        super().__init__()
        self.lm = no_dropout(lm)
        self.v_head = torch.nn.Linear(lm.config.hidden_size, 1)
        torch.nn.init.zeros_(self.v_head.weight)
        torch.nn.init.zeros_(self.v_head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions(attention_mask),
                      output_hidden_states=True)
        return out.logits, self.v_head(out.hidden_states[-1]).squeeze(-1)


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding (0 at each row's first real token)."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


@dataclass
class Rollout:
    """Sampled responses: prompt ids (left-padded, width P), response ids [B, T] and the response mask."""

    tasks: list[Task]
    input_ids: torch.Tensor  # [B, P + T]: prompt then response
    attention_mask: torch.Tensor
    mask: torch.Tensor  # [B, T]: 1 on response tokens up to and including <|end|>
    texts: list[str]

    @property
    def prompt_width(self) -> int:
        return self.input_ids.shape[1] - self.mask.shape[1]


@torch.no_grad()
def rollout(policy: PolicyWithValue, tokenizer, tasks: Sequence[Task], max_new_tokens: int,
            temperature: float = 1.0) -> Rollout:
    """Sample one response per task from the policy (prompts left-padded, responses after them)."""
    end_ids = end_of_turn_ids(tokenizer)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": t.instruction}], tokenize=False,
                                                 add_generation_prompt=True) for t in tasks]
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
    policy.eval()
    enc = enc.to(next(policy.parameters()).device)
    out = policy.lm.generate(**enc, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature, top_k=0,
                             eos_token_id=end_ids, pad_token_id=tokenizer.pad_token_id)
    response = out[:, enc["input_ids"].shape[1]:]
    is_end = torch.isin(response, torch.tensor(end_ids, device=response.device))
    ended_before = (is_end.cumsum(-1) - is_end.long()) > 0  # an end token came earlier in this row
    mask = (~ended_before).long()
    texts = tokenizer.batch_decode(response * mask + tokenizer.pad_token_id * (1 - mask), skip_special_tokens=True)
    return Rollout(list(tasks), out, torch.cat([enc["attention_mask"], mask], 1), mask, [x.strip() for x in texts])


def best_of_n(policy: PolicyWithValue, tokenizer, tasks: Sequence[Task], n: int, score_fn: Callable,
              max_new_tokens: int) -> list[str]:
    """Per task, the best of ``n`` replies sampled from the policy; ``score_fn(tasks, replies)`` scores one per task."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    samples = [rollout(policy, tokenizer, tasks, max_new_tokens).texts for _ in range(n)]
    scores = torch.stack([torch.as_tensor(score_fn(tasks, replies), dtype=torch.float) for replies in samples])
    return [samples[k][i] for i, k in enumerate(scores.argmax(0).tolist())]


def response_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, prompt_width: int) -> torch.Tensor:
    """log pi(token) of each response token, from the logits of the whole sequence: [B, T]."""
    logits = logits[:, prompt_width - 1:-1]
    return torch.gather(logits.log_softmax(-1), 2, input_ids[:, prompt_width:, None]).squeeze(-1)


@torch.no_grad()
def score(policy: PolicyWithValue, reference, reward_fn: Callable, ro: Rollout) -> dict:
    """Log-probs and values of the policy, log-probs of the reference, and the reward of each response."""
    policy.eval()
    logits, values = policy(ro.input_ids, ro.attention_mask)
    P = ro.prompt_width
    ref_logits = reference(input_ids=ro.input_ids, attention_mask=ro.attention_mask,
                           position_ids=positions(ro.attention_mask)).logits
    return {"logprobs": response_logprobs(logits, ro.input_ids, P) * ro.mask,
            "ref_logprobs": response_logprobs(ref_logits, ro.input_ids, P) * ro.mask,
            "values": values[:, P - 1:-1] * ro.mask, "scores": reward_fn(ro).to(ro.mask.device)}


# ---------------------------------------------------------------------------------- rewards, GAE and losses
def per_token_rewards(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, scores: torch.Tensor,
                      mask: torch.Tensor, beta: float) -> torch.Tensor:
    """-beta * (log pi - log pi_ref) at every response token, plus the score on each row's last real token."""
    rewards = -beta * (logprobs - ref_logprobs) * mask
    last = mask.sum(-1).long() - 1  # responses start at column 0, so the last real token is at length - 1
    rows = torch.arange(len(mask), device=mask.device)
    return rewards.index_put((rows, last), rewards[rows, last] + scores)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and returns (advantage + value), zero after each response ends."""
    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        alive = mask[:, t + 1] if t + 1 < T else torch.zeros_like(mask[:, 0])  # does the episode go on after t?
        next_value = values[:, t + 1] * alive if t + 1 < T else torch.zeros_like(values[:, 0])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * alive * next_adv) * mask[:, t]
        advantages[:, t] = next_adv
    return advantages, (advantages + values) * mask


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1 (token-level, over the whole batch)."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std over the masked positions; zero elsewhere."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def ppo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, clip: float = 0.2) -> torch.Tensor:
    """PPO's clipped surrogate: mean over tokens of max(-r A, -clip(r, 1-eps, 1+eps) A), r = pi / pi_old."""
    advantages = advantages.detach()
    ratio = torch.exp(logprobs - old_logprobs.detach())
    losses = torch.max(-ratio * advantages, -ratio.clamp(1 - clip, 1 + clip) * advantages)
    return masked_mean(losses, mask)


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                   clip: float = 0.2) -> torch.Tensor:
    """Clipped value loss: mean over tokens of max((V - R)^2, (V_old + clip(V - V_old) - R)^2)."""
    returns, old_values = returns.detach(), old_values.detach()
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)


# ------------------------------------------------------------------------------------------------- the loop
PARTS = {"rewards": per_token_rewards, "gae": gae, "policy_loss": ppo_policy_loss, "value_loss": ppo_value_loss}


def _parts(parts: dict | None, *names: str) -> list[Callable]:
    unknown = set(parts or {}) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown PPO parts {sorted(unknown)}; use {sorted(PARTS)}")
    return [(parts or {}).get(n, PARTS[n]) for n in names]


@dataclass
class PPOConfig:
    """PPO's knobs (defaults for the tiny model)."""

    beta: float = 0.05  # KL penalty to the reference
    batch_size: int = 64  # prompts per rollout
    steps: int = 30  # rollouts
    epochs: int = 2  # gradient epochs over each rollout
    minibatches: int = 2
    lr: float = 1e-4
    clip: float = 0.2
    value_clip: float = 0.2
    vf_coef: float = 0.5
    gamma: float = 1.0
    lam: float = 0.95
    max_new_tokens: int = 12
    ptx_coef: float = 0.0  # PPO-ptx: weight of the pretraining LM loss
    seed: int = 0


@dataclass
class PPOHistory:
    """Per rollout: mean RM (or reward function) score, r*, KL to the reference (summed over tokens) and length."""

    score: list[float] = field(default_factory=list)
    true_reward: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    length: list[float] = field(default_factory=list)


def ppo_update(policy: PolicyWithValue, optimizer, ro: Rollout, data: dict, cfg: PPOConfig,
               ptx_batch: Callable[[], dict] | None = None, parts: dict | None = None) -> None:
    """Several epochs of clipped PPO steps over minibatches of one rollout."""
    ppo_policy_loss, ppo_value_loss = _parts(parts, "policy_loss", "value_loss")
    policy.train()
    n = len(ro.tasks)
    for _ in range(cfg.epochs):
        for idx in torch.randperm(n).chunk(cfg.minibatches):
            logits, values = policy(ro.input_ids[idx], ro.attention_mask[idx])
            P, mask = ro.prompt_width, ro.mask[idx]
            logprobs = response_logprobs(logits, ro.input_ids[idx], P)
            loss = ppo_policy_loss(logprobs, data["logprobs"][idx], data["advantages"][idx], mask, cfg.clip) + \
                cfg.vf_coef * ppo_value_loss(values[:, P - 1:-1], data["values"][idx], data["returns"][idx], mask,
                                             cfg.value_clip)
            if cfg.ptx_coef and ptx_batch is not None:
                batch = {k: v.to(ro.mask.device) for k, v in ptx_batch().items()}
                loss = loss + cfg.ptx_coef * policy.lm(**batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            optimizer.step()
    policy.eval()


def ppo(policy: PolicyWithValue, reference, reward_fn: Callable[[Rollout], torch.Tensor], tokenizer,
        prompts: Sequence[Task], cfg: PPOConfig, ptx_batch: Callable[[], dict] | None = None,
        callback: Callable[[int, PPOHistory], None] | None = None, progress: bool = True,
        desc: str = "PPO", parts: dict | None = None) -> PPOHistory:
    """The RLHF loop: rollout, score, per-token rewards and GAE, PPO update; returns the per-rollout history.

    ``parts`` may replace the pieces by your own: {"rewards", "gae", "policy_loss", "value_loss"} -> function.
    """
    from .progress import tqdm

    per_token_rewards, gae = _parts(parts, "rewards", "gae")
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)
    history = PPOHistory()
    for step in tqdm(range(1, cfg.steps + 1), desc=desc, disable=not progress, mininterval=0.5):
        ro = rollout(policy, tokenizer, rng.sample(list(prompts), cfg.batch_size), cfg.max_new_tokens)
        data = score(policy, reference, reward_fn, ro)
        dense = data["scores"].dim() == 2  # a fine-grained reward: one value per response token
        rewards = per_token_rewards(data["logprobs"], data["ref_logprobs"],
                                    data["scores"][:, 0] * 0 if dense else data["scores"], ro.mask, cfg.beta)
        if dense:
            rewards = rewards + data["scores"] * ro.mask
            data["scores"] = (data["scores"] * ro.mask).sum(-1)
        advantages, data["returns"] = gae(rewards, data["values"], ro.mask, cfg.gamma, cfg.lam)
        data["advantages"] = whiten(advantages, ro.mask)
        ppo_update(policy, optimizer, ro, data, cfg, ptx_batch, parts)
        kl = ((data["logprobs"] - data["ref_logprobs"]) * ro.mask).sum(-1)
        history.score.append(data["scores"].mean().item())
        history.true_reward.append(sum(true_reward(t, x) for t, x in zip(ro.tasks, ro.texts)) / len(ro.tasks))
        history.kl.append(kl.mean().item())
        history.length.append(ro.mask.sum(-1).float().mean().item())
        if callback is not None:
            callback(step, history)
    return history


class RMReward:
    """Reward function of a rollout: the reward model's score of each (prompt, response), as (score - mean) / std."""

    def __init__(self, rm, tokenizer, mean: float = 0.0, std: float = 1.0):
        if not std > 0:
            raise ValueError(f"std must be positive, got {std}")
        self.rm, self.tokenizer, self.mean, self.std = rm, tokenizer, mean, std

    @classmethod
    def normalized(cls, rm, tokenizer, prompts: Sequence[str], replies: Sequence[str]) -> "RMReward":
        """Scores shifted and scaled so that ``replies`` (e.g. the SFT model's) get mean 0 and std 1."""
        scores = rm_scores(rm, tokenizer, prompts, replies)
        return cls(rm, tokenizer, scores.mean().item(), scores.std().item())

    def __call__(self, ro: Rollout) -> torch.Tensor:
        return (rm_scores(self.rm, self.tokenizer, [t.instruction for t in ro.tasks], ro.texts) - self.mean) / self.std


def load_reward_model(name: str, tokenizer, device) -> torch.nn.Module:
    """The shipped reward model ``name`` (it must read ``tokenizer``'s vocabulary), dropout off, on ``device``."""
    from .models import load_pretrained

    rm, rm_tokenizer = load_pretrained(name)
    if rm_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"{name} reads another vocabulary than the policy: name rm_model=None to train a reward "
                         "model from the policy's own checkpoint on the pairs")
    return no_dropout(rm).to(device)


def ppo_reward(sft_model, tokenizer, norm_prompts: Sequence[str], max_new_tokens: int,
               rm_model: str | torch.nn.Module | None = None, pairs: Sequence = (), steps: int = 0,
               batch_size: int = 32, lr: float = 1e-3, seed: int = 0) -> RMReward:
    """Module 05's PPO reward: ``rm_model`` (a shipped name, a loaded reward model, or None: one trained on ``pairs``),
    scaled to mean 0, std 1 on the SFT model's replies to ``norm_prompts``."""
    if isinstance(rm_model, str):
        rm = load_reward_model(rm_model, tokenizer, sft_model.device)
    elif isinstance(rm_model, torch.nn.Module):
        rm = rm_model
    elif rm_model is None and pairs and steps > 0:
        rm = train_reward_model(sft_model, tokenizer, pairs, steps, batch_size, lr, seed=seed)
    else:
        raise ValueError("name a shipped reward model (rm_model) or pass pairs and steps > 0 to train one")
    replies = respond(sft_model, tokenizer, list(norm_prompts), max_new_tokens)
    return RMReward.normalized(rm, tokenizer, list(norm_prompts), replies)


class TrueReward:
    """Reward function of a rollout: the world's r* (a perfect reward model, for controlled comparisons)."""

    def __call__(self, ro: Rollout) -> torch.Tensor:
        return torch.tensor([true_reward(t, x) for t, x in zip(ro.tasks, ro.texts)])


class DenseTrueReward:
    """Fine-grained reward of a rollout, one value per token: each word beyond the answer costs when it is written,
    and correctness (plus the full concision bonus) comes on the last token. Summed, it is r* (up to r*'s floor)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, ro: Rollout) -> torch.Tensor:
        from .world.instructions import score as is_right
        from .world.preferences import CORRECT, EXTRA_WORD_COST, STYLE

        out = torch.zeros(ro.mask.shape)
        response = ro.input_ids[:, ro.prompt_width:]
        for i, task in enumerate(ro.tasks):
            n, allowed, before = int(ro.mask[i].sum()), len(words(task.answer)), 0
            for t in range(n):
                extra = max(0, len(words(self.tokenizer.decode(response[i, :t + 1], skip_special_tokens=True)))
                            - allowed)
                out[i, t] = -EXTRA_WORD_COST * (extra - before)
                before = extra
            out[i, n - 1] += CORRECT * is_right(task, ro.texts[i]) + STYLE
        return out


@torch.no_grad()
def lm_loss(model, tokenizer, texts: Sequence[str], batch_size: int = 64) -> float:
    """Mean next-token loss per token of a causal LM on plain texts (held-out pretraining text: the alignment tax)."""
    lm = model.lm if isinstance(model, PolicyWithValue) else model
    lm.eval()
    total = count = 0.0
    for i in range(0, len(texts), batch_size):
        batch = {k: v.to(lm.device) for k, v in text_batch(tokenizer, texts[i:i + batch_size]).items()}
        n = (batch["labels"][:, 1:] != -100).sum().item()
        total += lm(**batch).loss.item() * n
        count += n
    return total / count


def text_batch(tokenizer, texts: Sequence[str]) -> dict:
    """Plain texts (each followed by <|endoftext|>) as an LM batch: right-padded, padding labelled -100."""
    rows = [tokenizer(t + tokenizer.eos_token, add_special_tokens=False)["input_ids"] for t in texts]
    batch = pad_right(rows, tokenizer.pad_token_id)
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return batch


class PretrainBatches:
    """PPO-ptx's pretraining batches: ``batch_size`` random texts per call."""

    def __init__(self, tokenizer, texts: Sequence[str], batch_size: int = 16, seed: int = 0):
        self.tokenizer, self.texts, self.batch_size, self.rng = tokenizer, list(texts), batch_size, random.Random(seed)

    def __call__(self) -> dict:
        return text_batch(self.tokenizer, self.rng.sample(self.texts, self.batch_size))


def new_policy(sft_model) -> PolicyWithValue:
    """A trainable copy of the SFT model with a fresh value head (the SFT model itself stays as the reference)."""
    return PolicyWithValue(copy.deepcopy(sft_model))


def kl_to_reference(policy: PolicyWithValue, reference, tokenizer, tasks: Sequence[Task], max_new_tokens: int,
                    seed: int = 0) -> float:
    """Mean over sampled responses of sum_t (log pi - log pi_ref): the sequence-level KL estimate."""
    torch.manual_seed(seed)
    ro = rollout(policy, tokenizer, tasks, max_new_tokens)
    data = score(policy, reference, lambda r: torch.zeros(len(r.tasks)), ro)
    return ((data["logprobs"] - data["ref_logprobs"]) * ro.mask).sum(-1).mean().item()


def wordiness(tasks: Sequence[Task], replies: Sequence[str]) -> float:
    """Share of replies longer than their answer."""
    return sum(len(words(r)) > len(words(t.answer)) for t, r in zip(tasks, replies)) / max(1, len(tasks))


class LivePPOPlot:
    """A ``ppo`` callback that redraws the curves (score, r*, KL, length) in place in a notebook."""

    def __init__(self, title: str = "PPO (live)", every: int = 1):
        import matplotlib.pyplot as plt
        from IPython.display import display

        self.title, self.every = title, every
        self.fig, self.axes = plt.subplots(1, 4, figsize=(13, 2.8))
        plt.close(self.fig)
        self.handle = display(self.fig, display_id=True)

    def __call__(self, step: int, history: PPOHistory) -> None:
        if step % self.every:
            return
        plot_history(history, axes=self.axes, title=self.title)
        self.handle.update(self.fig)


def plot_history(history: PPOHistory, axes=None, title: str = "PPO", label: str | None = None):
    """Four panels per rollout: reward-model score, true reward r*, KL to the reference, response length."""
    from .training import plot_panels

    panels = [("RM score", history.score), ("true reward r*", history.true_reward),
              ("KL to reference (nats)", history.kl), ("response tokens", history.length)]
    return plot_panels(panels, "rollout", axes, title, label)


__all__ = ["DenseTrueReward", "LivePPOPlot", "PPOConfig", "PPOHistory", "PolicyWithValue", "PretrainBatches",
           "RMReward", "Rollout", "TrueReward", "best_of_n", "chat_ids", "gae", "kl_to_reference", "lm_loss",
           "load_reward_model", "masked_mean", "new_policy", "no_dropout", "pair_accuracy", "pair_batch", "pad_right",
           "per_token_rewards", "plot_history", "positions", "ppo", "ppo_policy_loss", "ppo_reward", "ppo_update",
           "ppo_value_loss", "response_logprobs", "reward_loss", "reward_model_from", "rm_loss_fn", "rm_scores",
           "rollout", "score", "text_batch", "train_reward_model", "whiten", "wordiness"]


def win_rate_ci(policy_replies: Sequence[str], reference_replies: Sequence[str], tasks: Sequence[Task],
                level: float = 0.95) -> Estimate:
    """Win rate under r* (ties half) with a bootstrap CI that resamples stories: a story's questions move together."""
    return mean_ci(win_outcomes(policy_replies, reference_replies, tasks), [t.story for t in tasks], level)
