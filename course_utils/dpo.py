"""Direct preference optimisation: sequence log-probs, the DPO loss, a small DPO loop and the toy closed form.

Shared by lecture 06 and its lab. ``encode_pair`` and ``collate_pairs`` build the same batch as TRL's
``DPOTrainer`` (prompt + chosen rows first, then prompt + rejected rows, with a ``completion_mask`` that is
1 on the response tokens only); ``sequence_logps`` sums the response tokens' log-probs; ``dpo_loss`` is the
sigmoid loss with its implicit rewards; ``train_dpo`` runs it with ``course_utils.training.train``. The toy
functions work on a prompt x response table: ``optimal_policy`` is the closed form
pi*(y|x) = pi_ref(y|x) exp(r(x, y)/beta) / Z(x), ``fit_toy_dpo`` reaches it by minimising the DPO loss.
"""
from __future__ import annotations

import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .training import History, train


def _chat_ids(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    enc = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    return list(enc["input_ids"] if hasattr(enc, "keys") else enc)


def encode_pair(tokenizer, prompt: str, chosen: str, rejected: str) -> dict:
    """``prompt_ids`` (the user turn and <|assistant|>) and the ``chosen_ids`` / ``rejected_ids`` that follow it."""
    if not all(isinstance(s, str) for s in (prompt, chosen, rejected)):
        raise TypeError("prompt, chosen and rejected must be strings (use Pair.prompt, Pair.chosen, Pair.rejected)")
    user = [{"role": "user", "content": prompt}]
    prompt_ids = _chat_ids(tokenizer, user, add_generation_prompt=True)
    out = {"prompt_ids": prompt_ids}
    for key, reply in (("chosen_ids", chosen), ("rejected_ids", rejected)):
        full = _chat_ids(tokenizer, user + [{"role": "assistant", "content": reply}])
        if full[:len(prompt_ids)] != prompt_ids:
            raise ValueError("the chat template does not start the full chat with the prompt's tokens")
        out[key] = full[len(prompt_ids):]
    return out


def collate_pairs(examples: Sequence[dict], pad_token_id: int) -> dict:
    """A [2B, L] batch: prompt+chosen rows, then prompt+rejected rows, right-padded, with the completion mask.

    Keys other than the token lists (e.g. precomputed ``ref_chosen_logps``) are stacked into tensors of size B.
    """
    if not examples:
        raise ValueError("examples is empty")
    rows = [e["prompt_ids"] + e["chosen_ids"] for e in examples] + [e["prompt_ids"] + e["rejected_ids"] for e in examples]
    starts = [len(e["prompt_ids"]) for e in examples] * 2
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    completion = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row, start) in enumerate(zip(rows, starts)):
        ids[i, :len(row)] = torch.tensor(row)
        attention[i, :len(row)] = 1
        completion[i, start:len(row)] = 1
    batch = {"input_ids": ids, "attention_mask": attention, "completion_mask": completion}
    for key in examples[0]:
        if key not in ("prompt_ids", "chosen_ids", "rejected_ids"):
            batch[key] = torch.tensor([e[key] for e in examples], dtype=torch.float32)
    return batch


def sequence_logps(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """log pi(y|x) of each row: the SUM of the response tokens' log-probs (prompt and padding masked out)."""
    if logits.dim() != 3 or logits.shape[:2] != input_ids.shape:
        raise ValueError(f"logits must be (N, T, V) and input_ids (N, T); got {tuple(logits.shape)} and "
                         f"{tuple(input_ids.shape)}")
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    token_logp = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # position t predicts token t+1
    return (token_logp * completion_mask[:, 1:]).sum(-1)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sigmoid DPO loss -log sigma(beta * (log-ratio chosen - log-ratio rejected)), and the implicit rewards.

    Returns ``(loss, chosen_rewards, rejected_rewards)``; a reward is beta * log(pi(y|x) / pi_ref(y|x)).
    """
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    return loss, chosen_rewards.detach(), rejected_rewards.detach()


@torch.no_grad()
def pair_logps(model, examples: Sequence[dict], pad_token_id: int, batch_size: int = 64) -> list[tuple[float, float]]:
    """(log pi(chosen|x), log pi(rejected|x)) of each encoded pair under ``model`` (e.g. the frozen reference)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(examples), batch_size):
        batch = collate_pairs([{k: e[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}
                               for e in examples[i:i + batch_size]], pad_token_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        chosen, rejected = sequence_logps(logits, batch["input_ids"], batch["completion_mask"]).chunk(2)
        out += list(zip(chosen.tolist(), rejected.tolist()))
    model.train(was_training)
    return out


@torch.no_grad()
def response_logps(model, tokenizer, prompt: str, responses: Sequence[str]) -> torch.Tensor:
    """log pi(y|x) of each response to one prompt: the sum over the response's tokens, its <|end|> included."""
    if isinstance(responses, str):
        raise TypeError("responses must be a list of strings: wrap one as [response]")
    examples = [encode_pair(tokenizer, prompt, y, y) for y in responses]
    return torch.tensor([c for c, _ in pair_logps(model, examples, tokenizer.pad_token_id)])


def with_reference(examples: Sequence[dict], ref_model, pad_token_id: int) -> list[dict]:
    """The examples with ``ref_chosen_logps`` / ``ref_rejected_logps`` added (one pass of the reference model)."""
    logps = pair_logps(ref_model, examples, pad_token_id)
    return [{**e, "ref_chosen_logps": c, "ref_rejected_logps": r} for e, (c, r) in zip(examples, logps)]


def ipo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """IPO (Azar et al., 2023): (log-ratio chosen - log-ratio rejected - 1/(2 beta))^2, mean over pairs.

    Same returns as ``dpo_loss``. TRL 1.16's ``loss_type="ipo"`` feeds it log-probs averaged per response token
    (``DPOObjective(beta, loss_fn=ipo_loss, per_token=True)``); the squared loss stops pushing once the margin
    reaches 1/(2 beta).
    """
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    chosen_rewards, rejected_rewards = policy_chosen - ref_chosen, policy_rejected - ref_rejected
    loss = ((chosen_rewards - rejected_rewards - 1 / (2 * beta)) ** 2).mean()
    return loss, beta * chosen_rewards.detach(), beta * rejected_rewards.detach()


class DPOObjective:
    """``loss_fn(model, batch)`` for ``training.train``: the DPO loss with the batch's precomputed reference log-probs.

    ``per_token=True`` divides every sequence log-prob by its response's token count first (as IPO in TRL does).
    ``log_ratios`` records, per step, the batch's mean log pi(y|x) - log pi_ref(y|x) of the chosen and the rejected.
    """

    def __init__(self, beta: float, logps_fn=sequence_logps, loss_fn=dpo_loss, per_token: bool = False):
        self.beta, self.logps_fn, self.loss_fn, self.per_token = beta, logps_fn, loss_fn, per_token
        self.log_ratios: list[tuple[float, float]] = []

    def __call__(self, model, batch: dict) -> torch.Tensor:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        chosen, rejected = self.logps_fn(logits, batch["input_ids"], batch["completion_mask"]).chunk(2)
        ref_chosen, ref_rejected = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
        if self.per_token:
            tokens_chosen, tokens_rejected = batch["completion_mask"].sum(1).clamp(min=1).chunk(2)
            chosen, ref_chosen = chosen / tokens_chosen, ref_chosen / tokens_chosen
            rejected, ref_rejected = rejected / tokens_rejected, ref_rejected / tokens_rejected
        self.log_ratios.append(((chosen.detach() - ref_chosen).mean().item(),
                                (rejected.detach() - ref_rejected).mean().item()))
        loss, _, _ = self.loss_fn(chosen, rejected, ref_chosen, ref_rejected, self.beta)
        return loss


def train_dpo(policy, examples: Sequence[dict], pad_token_id: int, beta: float, steps: int, batch_size: int,
              lr: float, seed: int = 0, progress: bool = True, desc: str = "DPO", **train_kwargs) -> History:
    """DPO on encoded pairs that carry their reference log-probs (``with_reference``); trains ``policy`` in place."""
    missing = {"ref_chosen_logps", "ref_rejected_logps"} - set(examples[0])
    if missing:
        raise ValueError(f"examples lack {sorted(missing)}: add them with with_reference(examples, ref_model, pad_id)")
    rng = random.Random(seed)
    objective = train_kwargs.pop("loss_fn", None) or DPOObjective(beta)
    return train(policy, lambda: collate_pairs(rng.sample(list(examples), batch_size), pad_token_id), steps=steps,
                 lr=lr, loss_fn=objective, progress=progress, desc=desc, **train_kwargs)


def preferred_ft(model, tokenizer, pairs: Sequence, steps: int, batch_size: int, lr: float, seed: int = 0,
                 desc: str = "Preferred-FT") -> History:
    """The DPO paper's Preferred-FT baseline: SFT of ``model`` (in place) on the chosen reply of each pair."""
    from .sft import collate, encode_chat, sft_loss

    examples = [encode_chat(tokenizer, [{"role": "user", "content": p.prompt},
                                        {"role": "assistant", "content": p.chosen}]) for p in pairs]
    rng = random.Random(seed)
    return train(model, lambda: collate(rng.sample(examples, batch_size), tokenizer.pad_token_id), steps=steps, lr=lr,
                 loss_fn=lambda m, b: sft_loss(m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,
                                               b["labels"]), desc=desc)


@torch.no_grad()
def implicit_reward_accuracy(policy, examples: Sequence[dict], pad_token_id: int, truth: Sequence[bool] | None = None
                             ) -> float:
    """Share of pairs whose implicit reward beta*log(pi/pi_ref) ranks chosen above rejected (beta > 0 drops out).

    With ``truth`` (True where the chosen side really is better, e.g. under r*), it is measured against the truth.
    """
    logps = pair_logps(policy, examples, pad_token_id)
    hits = []
    for i, (e, (c, r)) in enumerate(zip(examples, logps)):
        says_chosen = (c - e["ref_chosen_logps"]) > (r - e["ref_rejected_logps"])
        hits.append(says_chosen == (truth[i] if truth is not None else True))
    return sum(hits) / len(hits)


@torch.no_grad()
def response_kl(policy, ref, tokenizer, instructions: Sequence[str], max_new_tokens: int = 12, seed: int = 0,
                batch_size: int = 64) -> float:
    """KL(pi || pi_ref) over whole responses (nats), estimated on responses sampled from ``policy``.

    For each sampled response the exact per-token KL of the next-token distributions is summed over its tokens
    (up to and including <|end|>), then averaged over the prompts: an unbiased, low-variance estimate.
    """
    from .sft import end_of_turn_ids

    device = next(policy.parameters()).device
    end_ids = end_of_turn_ids(tokenizer)  # the course's <|end|> and eos; a hub model has only its eos
    modes = policy.training, ref.training
    policy.eval(), ref.eval()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    total, count = 0.0, 0
    try:
        for i in range(0, len(instructions), batch_size):
            prompts = [tokenizer.apply_chat_template([{"role": "user", "content": x}], tokenize=False,
                                                     add_generation_prompt=True) for x in instructions[i:i + batch_size]]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            out = policy.generate(**enc, max_new_tokens=max_new_tokens, do_sample=True, top_k=0, top_p=1.0,
                                  temperature=1.0, eos_token_id=end_ids, pad_token_id=tokenizer.pad_token_id)
            width = enc["input_ids"].shape[1]
            response = out[:, width:]
            ended = torch.zeros(len(out), dtype=torch.bool, device=device)
            resp_mask = torch.zeros_like(response, dtype=torch.float)
            for t in range(response.shape[1]):  # the response's tokens up to and including the first end token
                resp_mask[:, t] = (~ended).float()
                ended |= torch.isin(response[:, t], torch.tensor(end_ids, device=device))
            attention = torch.cat([enc["attention_mask"], resp_mask.long()], dim=1)
            positions = (attention.cumsum(-1) - 1).clamp_min(0)  # as generate() numbers left-padded rows
            inputs = {"input_ids": out, "attention_mask": attention, "position_ids": positions}
            logp = torch.log_softmax(policy(**inputs).logits.float(), -1)
            logq = torch.log_softmax(ref(**inputs).logits.float(), -1)
            kl = (logp.exp() * (logp - logq)).sum(-1)[:, width - 1:-1]  # distributions that produced the response
            total += (kl * resp_mask).sum().item()
            count += len(out)
    finally:
        tokenizer.padding_side = side
        policy.train(modes[0]), ref.train(modes[1])
        torch.random.set_rng_state(generator_state)
    return total / max(count, 1)


# ---------------------------------------------------------------- the toy: a table of prompts x responses
def kl_objective(policy: torch.Tensor, ref: torch.Tensor, rewards: torch.Tensor, beta: float) -> torch.Tensor:
    """E_{y~pi}[r(x, y)] - beta * KL(pi(.|x) || pi_ref(.|x)) for each prompt (rows are distributions over responses)."""
    if policy.shape != ref.shape or ref.shape != rewards.shape:
        raise ValueError(f"policy, ref and rewards must have one shape (prompts, responses); got "
                         f"{tuple(policy.shape)}, {tuple(ref.shape)}, {tuple(rewards.shape)}")
    log_ratio = torch.where(policy > 0, policy.clamp_min(1e-300).log() - ref.log(), torch.zeros_like(policy))
    return (policy * rewards).sum(-1) - beta * (policy * log_ratio).sum(-1)


def optimal_policy(ref: torch.Tensor, rewards: torch.Tensor, beta: float) -> torch.Tensor:
    """The maximiser of ``kl_objective``: pi*(y|x) = pi_ref(y|x) exp(r(x, y) / beta) / Z(x), row by row."""
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    return torch.softmax(ref.log() + rewards / beta, dim=-1)


def fit_toy_dpo(ref: torch.Tensor, preference: torch.Tensor, beta: float, steps: int = 300) -> torch.Tensor:
    """Minimise the population DPO loss over all ordered pairs of a prompt's responses; returns the fitted policy.

    ``preference[x, i, j]`` is the probability that response i is preferred to response j for prompt x (the
    labels); pairs are drawn with probability pi_ref(i|x) pi_ref(j|x). The policy is a free table of logits.
    """
    ref = ref.double()
    logits = ref.log().clone().requires_grad_(True)  # start at the reference, as DPO does
    weight = ref[:, :, None] * ref[:, None, :]
    optimizer = torch.optim.LBFGS([logits], lr=1, max_iter=steps, tolerance_grad=1e-12, tolerance_change=1e-14,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        log_ratio = torch.log_softmax(logits, -1) - ref.log()
        margin = beta * (log_ratio[:, :, None] - log_ratio[:, None, :])  # implicit reward of i minus that of j
        loss = (weight * -(preference.double() * F.logsigmoid(margin))).sum() / ref.shape[0]
        loss.backward()
        return loss

    optimizer.step(closure)
    return torch.softmax(logits.detach(), -1)


def bradley_terry(rewards: torch.Tensor) -> torch.Tensor:
    """P(i preferred to j | x) = sigmoid(r(x, i) - r(x, j)) for every pair, shape (prompts, responses, responses)."""
    return torch.sigmoid(rewards[:, :, None] - rewards[:, None, :])


__all__ = ["DPOObjective", "bradley_terry", "collate_pairs", "dpo_loss", "encode_pair", "fit_toy_dpo",
           "implicit_reward_accuracy", "ipo_loss", "kl_objective", "optimal_policy", "pair_logps", "preferred_ft",
           "response_kl", "response_logps", "sequence_logps", "train_dpo", "with_reference"]
