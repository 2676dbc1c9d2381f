"""Checks for lab 05 (reward models and PPO); TRL's RewardTrainer and torchrl are the oracles.

Oracles: the loss ``trl.RewardTrainer.compute_loss`` returns on a batch of pairs (exercise 1); a written-out
reference of the per-token RLHF reward (exercise 2: InstructGPT's KL-shaped reward, as TRL's old
``PPOTrainer.compute_rewards`` built it); ``torchrl.objectives.value.functional.generalized_advantage_estimate``
(exercise 3); ``torchrl.objectives.ClipPPOLoss`` (exercise 4). Those student functions take and return
tensors, which must come back unchanged; the reward loss and the PPO policy loss also get extreme inputs (reward
gaps of +-300, every log-prob 200 lower). When a result is wrong, the checks compare it with typical mistakes and
name the one that matches. Exercise 6's truth is the word the check plants in reward models it trains when it
runs (``blind_spot_world``); in ``course grade`` they come from a pool drawn once per grading run and trained once
for all its submissions (``pooled_world``).
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable

import torch

from . import (RUN_CACHE, CheckError, RunCache, assert_close, assert_gradient_reaches, assert_unchanged, call_student,
               drawn_seed, extreme_pairs, fenced, forbids_modules, passed, trained_copy)

# The course's own answers live in course_utils.rlhf (lecture 05 uses them: reward_loss, per_token_rewards, gae,
# ppo_policy_loss, ppo_value_loss), the oracles are TRL and torchrl, and this module holds written-out references
# (reference_rewards, torchrl_gae): when `course grade` calls the student's functions, code from none may run.
ANSWERS = ("course_utils.rlhf", "course_utils.checks", "trl", "torchrl")
# What the oracles import, loaded once by `course grade`'s check server (checkproc.preload), not per submission.
ORACLES = ("trl.trainer.reward_trainer", "torchrl.objectives", "torchrl.modules")


def _close(a, b, atol: float = 1e-5) -> bool:
    return torch.is_tensor(a) and a.shape == b.shape and torch.allclose(a.double(), b.double(), atol=atol, rtol=1e-4)


def _cloned(tensors: dict) -> dict:
    """A copy of each tensor of ``tensors``, to hand to the student's function (the originals stay to compare)."""
    return {name: t.clone() for name, t in tensors.items()}


def _scalar(x, what: str) -> torch.Tensor:
    if not torch.is_tensor(x) or x.numel() != 1:
        raise CheckError(f"{what} must return a scalar tensor (a loss), got {type(x).__name__} "
                         f"{tuple(x.shape) if torch.is_tensor(x) else ''}")
    return x.reshape(())


# --------------------------------------------------------------------------------------- 1. reward loss
def trl_reward_losses(seed: int = 0) -> list[dict]:
    """Rewards of a tiny reward model on a batch of pairs, with and without margins, and TRL's loss on each."""
    from ..sft import quiet_hf

    quiet_hf()
    from datasets import Dataset
    from transformers import GPT2Config, GPT2ForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from ..models import load_pretrained

    _, tok = load_pretrained("tiny-gpt", progress=False)
    rows = [("mia has two cups .\nhow many cups does mia have ?", "two", "the answer is five"),
            ("tom gave the hat to eva .\nwho gave the hat to eva ?", "tom", "eva"),
            ("the fox saw the cat in the park .\nwhere did the fox see the cat ?", "park", "i think it is park"),
            ("ana was happy .\nis this story positive or negative ?", "positive", "negative"),
            ("leo has one kite .\ncount the kites of leo .", "well , let me see , it is one", "nine")]
    out = []
    for with_margin in (False, True):
        g = torch.Generator().manual_seed(seed + with_margin)
        records = []
        for prompt, chosen, rejected in rows:
            r = {"prompt": [{"role": "user", "content": prompt}], "chosen": [{"role": "assistant", "content": chosen}],
                 "rejected": [{"role": "assistant", "content": rejected}]}
            if with_margin:
                r["margin"] = float(torch.rand((), generator=g) * 2 - 0.5)
            records.append(r)
        torch.manual_seed(seed + with_margin)
        model = GPT2ForSequenceClassification(GPT2Config(
            vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=1, n_head=2, num_labels=1, resid_pdrop=0.0,
            embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=tok.pad_token_id))
        args = RewardConfig(output_dir=tempfile.mkdtemp(), bf16=False, activation_checkpointing=False, use_cpu=True,
                            report_to="none", disable_tqdm=True, save_strategy="no", logging_strategy="no",
                            dataloader_pin_memory=False, max_length=128, per_device_train_batch_size=len(rows),
                            center_rewards_coefficient=None, seed=seed)
        trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(records), processing_class=tok)
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
        trainer.model.eval()
        with torch.no_grad():
            loss = trainer.compute_loss(trainer.model, dict(batch))
            rewards = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        chosen, rejected = rewards.squeeze(-1).chunk(2)
        out.append({"chosen": chosen, "rejected": rejected, "margin": batch.get("margin"), "loss": loss.reshape(())})
    return out


@forbids_modules(*ANSWERS)
def check_reward_loss(fn: Callable) -> None:
    """``fn(chosen_rewards, rejected_rewards, margin=None)`` equals TRL's RewardTrainer loss (+/- margins)."""
    for case in trl_reward_losses():
        c, r, m, want = case["chosen"], case["rejected"], case["margin"], case["loss"]
        originals = {"chosen_rewards": c, "rejected_rewards": r, **({} if m is None else {"margin": m})}
        given = _cloned(originals)
        got = _scalar(call_student(fn, f"reward_loss{' with' if m is not None else ' without'} margins",
                                   given["chosen_rewards"], given["rejected_rewards"], given.get("margin"),
                                   hint="" if m is None else "margin is None or a tensor of one margin per pair: "
                                   "test `margin is not None`"), "reward_loss")
        assert_unchanged(given, originals, "reward_loss")
        if _close(got, want):
            continue
        d = c - r - (0 if m is None else m)
        hints = [(-torch.nn.functional.logsigmoid(-d).mean(), "chosen and rejected are swapped: the loss should be "
                  "small when the chosen response scores higher"),
                 (-torch.nn.functional.logsigmoid(d).sum(), "you sum over pairs; take the mean"),
                 (-torch.nn.functional.sigmoid(d).mean(), "use log sigmoid (the log-likelihood), not sigmoid"),
                 (torch.nn.functional.logsigmoid(d).mean(), "the loss has the wrong sign: it is MINUS the mean "
                  "log sigmoid, so that minimising it raises the chosen reward")]
        if m is not None:
            hints += [(-torch.nn.functional.logsigmoid(c - r).mean(), "the margin is ignored: subtract it from "
                       "r_chosen - r_rejected"),
                      (-torch.nn.functional.logsigmoid(c - r + m).mean(), "the margin has the wrong sign: the chosen "
                       "reward must beat the rejected one BY the margin, so subtract it")]
        hint = next((h for value, h in hints if _close(got, value)), "")
        raise CheckError(f"reward loss {got.item():.5f}, TRL's RewardTrainer gives {want.item():.5f}"
                         f"{' with' if m is not None else ' without'} margins. {hint}".strip())
    gap = extreme_pairs()
    chosen, rejected = (gap / 2).requires_grad_(), (-gap / 2).requires_grad_()
    got = _scalar(fn(chosen, rejected, None), "reward_loss")
    want = -torch.nn.functional.logsigmoid(gap.double()).mean()
    if not torch.isfinite(got) or not _close(got, want, atol=1e-4):
        raise CheckError(f"reward loss {got.item():.5f} on reward gaps from -300 to 300, expected {want.item():.5f}: "
                         "log(sigmoid(x)) underflows to log(0) for large gaps; use F.logsigmoid")
    assert_gradient_reaches(got, {"chosen_rewards": chosen, "rejected_rewards": rejected}, "reward loss")
    passed("Bradley-Terry reward loss (vs TRL's RewardTrainer)")


# --------------------------------------------------------------------------------- 2. per-token rewards
def ragged_batch(seed: int, batch: int = 6, width: int = 9) -> dict:
    """Random log-probs, reference log-probs, scores and a ragged response mask (junk in the padding)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (batch,), generator=g)
    lengths[0], lengths[-1] = 1, width  # a one-token response and one that fills the row
    mask = (torch.arange(width)[None] < lengths[:, None]).float()
    return {"logprobs": -torch.rand(batch, width, generator=g) * 3,
            "ref_logprobs": -torch.rand(batch, width, generator=g) * 3,
            "scores": torch.randn(batch, generator=g), "mask": mask,
            "values": torch.randn(batch, width, generator=g), "rewards": torch.randn(batch, width, generator=g) * mask}


def _score_at(scores: torch.Tensor, mask: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Zeros shaped like ``mask`` with each row's score at its entry of ``columns`` (for the diagnosis)."""
    out = torch.zeros_like(mask)
    out[torch.arange(len(mask)), columns] = scores
    return out


def reference_rewards(logprobs, ref_logprobs, scores, mask, beta: float) -> torch.Tensor:
    """The documented reference: r_t = -beta (log pi - log pi_ref) on response tokens, + score at the last one."""
    out = torch.zeros_like(logprobs)
    for i in range(len(mask)):
        n = int(mask[i].sum())
        for t in range(n):
            out[i, t] = -beta * (logprobs[i, t] - ref_logprobs[i, t])
        out[i, n - 1] += scores[i]
    return out


@forbids_modules(*ANSWERS)
def check_per_token_rewards(fn: Callable) -> None:
    """``fn(logprobs, ref_logprobs, scores, mask, beta)`` is the KL-shaped per-token reward on ragged batches."""
    for seed, beta in [(0, 0.1), (1, 0.5), (2, 0.05)]:
        b = ragged_batch(seed)
        lp, ref, s, m = b["logprobs"], b["ref_logprobs"], b["scores"], b["mask"]
        want = reference_rewards(lp, ref, s, m, beta)
        originals = {"logprobs": lp, "ref_logprobs": ref, "scores": s, "mask": m}
        given = _cloned(originals)
        got = call_student(fn, f"per-token rewards (beta={beta}) on a batch with a one-token response and one that "
                           "fills the row", *given.values(), beta,
                           hint="(A row's last real token is at mask.sum(-1) - 1.)")
        assert_unchanged(given, originals, f"per-token rewards (beta={beta})")
        if _close(got, want):
            continue
        last = torch.zeros_like(m)
        last[torch.arange(len(m)), -1] = 1.0
        kl, last_real = -beta * (lp - ref), m.sum(-1).long() - 1
        hints = [(reference_rewards(lp, ref, s, m, -beta), "the KL penalty has the wrong sign: it is "
                  "-beta * (log pi - log pi_ref), a cost for moving away from the reference"),
                 (kl * m + s[:, None] * m, "the score is added to every token; it belongs to the last real token only"),
                 (kl * m + s[:, None] * last, "the score is on the last column (padding for short responses); put it "
                  "on each row's last real token (mask.sum(-1) - 1)"),
                 (reference_rewards(lp, ref, s, torch.ones_like(m), beta), "the mask is ignored: padding tokens must "
                  "get no reward and the score goes on the last real token"),
                 (kl * m, "the reward model's score is missing"),
                 (kl * m * (1 - _score_at(torch.ones_like(s), m, last_real)) + _score_at(s, m, last_real),
                  "the score replaces the last token's KL penalty: add it to the penalty"),
                 (reference_rewards(lp, ref, beta * s, m, beta), "the score is multiplied by beta: beta scales only "
                  "the KL penalty"),
                 (kl * m + _score_at(s, m, last_real - 1), "the score is one token early: each row's last "
                  "real token is at mask.sum(-1) - 1")]
        hint = next((h for value, h in hints if _close(got, value)), "")
        assert_close(got, want, f"per-token rewards (beta={beta})", hint=hint)
    passed("per-token rewards: KL penalty + score on the last real token")


# -------------------------------------------------------------------------------------------------- 3. GAE
def torchrl_gae(rewards, values, mask, gamma: float, lam: float,
                last_values=None) -> tuple[torch.Tensor, torch.Tensor]:
    """torchrl's GAE on right-padded responses: each one stops at its last real token, where the value of the
    next state is ``last_values`` (0 for a finished response, the value head's estimate for one cut off)."""
    from torchrl.objectives.value.functional import generalized_advantage_estimate

    alive_next = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], 1)  # 1 where the episode goes on
    done = (alive_next == 0)[..., None]
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], 1) * alive_next
    if last_values is not None:  # the state after each row's last real token: bootstrapped, not terminal
        next_values = next_values + (mask - alive_next) * last_values[:, None]
    adv, target = generalized_advantage_estimate(gamma, lam, values[..., None], next_values[..., None],
                                                 (rewards * mask)[..., None], done, torch.zeros_like(done))
    return adv.squeeze(-1) * mask, target.squeeze(-1) * mask


def truncated_batch(seed: int) -> dict:
    """A ragged batch whose rows 1, 3 and 5 were cut off at their own token budget (a value after their last token)."""
    b = ragged_batch(seed)
    g = torch.Generator().manual_seed(seed + 50)
    b["last_values"] = torch.randn(len(b["mask"]), generator=g) * torch.tensor([0, 1, 0, 1, 0, 1.0])
    return b


@forbids_modules(*ANSWERS)
def check_gae(fn: Callable) -> None:
    """``fn(rewards, values, mask, gamma, lam, last_values)`` returns (advantages, returns) equal to torchrl's GAE
    on real tokens, bootstrapping each cut-off response from its ``last_values`` entry."""
    for seed, gamma, lam in [(3, 0.9, 0.7), (4, 1.0, 0.95), (5, 0.8, 0.5)]:
        b = truncated_batch(seed)
        r, v, m, last = b["rewards"], b["values"], b["mask"], b["last_values"]
        want_adv, want_ret = torchrl_gae(r, v, m, gamma, lam, last)
        originals = {"rewards": r, "values": v, "mask": m, "last_values": last}
        given = _cloned(originals)
        got = fn(given["rewards"], given["values"], given["mask"], gamma, lam, given["last_values"])
        assert_unchanged(given, originals, f"gae (gamma={gamma}, lambda={lam})")
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            raise CheckError("gae must return a tuple (advantages, returns)")
        adv, ret = got[0], got[1]
        if torch.is_tensor(adv) and adv.shape == m.shape:
            adv, ret = adv * m, ret * m if torch.is_tensor(ret) and ret.shape == m.shape else ret
        if not _close(adv, want_adv):
            ones = torch.ones_like(m)
            hints = [(torchrl_gae(r, v, m, gamma, lam)[0], "the bootstrap is missing: a cut-off response did not "
                      "end, so delta at its last token is r + gamma * last_value - V (not r - V)"),
                     (torchrl_gae(r, v, m, gamma, lam, last / gamma)[0], "the bootstrap needs the discount: "
                      "gamma * last_value"),
                     (torchrl_gae(r, v, m, gamma, lam, last * m[:, -1])[0], "the bootstrap goes to each row's LAST "
                      "REAL token (mask.sum(-1) - 1), not to the last column"),
                     (torchrl_gae(r, v, ones, gamma, lam, last)[0] * m, "the mask is ignored: the recursion must "
                      "stop at each response's last real token and not run through padding"),
                     (torchrl_gae(r, v, m, lam, gamma, last)[0], "gamma and lambda are swapped: delta uses gamma, the "
                      "recursion uses gamma * lambda")]
            hint = next((h for value, h in hints if _close(adv, value)), "")
            assert_close(adv, want_adv, f"advantages (gamma={gamma}, lambda={lam})", hint=hint)
        assert_close(ret, want_ret, "returns", hint="returns are advantages + values (the value targets)")
    passed("GAE with bootstrapped cut-off responses (vs torchrl's generalized_advantage_estimate)")


# --------------------------------------------------------------------------------------------- 4. PPO losses
def torchrl_ppo_losses(logprobs, old_logprobs, advantages, values, old_values, returns, mask,
                       clip: float, value_clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """torchrl's ClipPPOLoss (objective, l2 critic with value clipping) over the real tokens of a batch."""
    from tensordict import TensorDict
    from tensordict.nn import TensorDictModule
    from torchrl.modules import ProbabilisticActor
    from torchrl.objectives import ClipPPOLoss

    keep = mask.bool()
    lp, n = logprobs[keep], int(keep.sum())
    actor = ProbabilisticActor(TensorDictModule(_TwoWay(), in_keys=["lp"], out_keys=["logits"]), in_keys=["logits"],
                               distribution_class=torch.distributions.Categorical)
    critic = TensorDictModule(torch.nn.Identity(), in_keys=["v"], out_keys=["state_value"])
    loss = ClipPPOLoss(actor, critic, clip_epsilon=clip, entropy_bonus=False, critic_coeff=1.0,
                       loss_critic_type="l2", normalize_advantage=False, clip_value=value_clip,
                       log_explained_variance=False)
    td = TensorDict({"lp": lp, "action": torch.zeros(n, dtype=torch.long), "action_log_prob": old_logprobs[keep],
                     "advantage": advantages[keep][:, None], "v": values[keep][:, None],
                     "state_value": old_values[keep][:, None], "value_target": returns[keep][:, None]}, batch_size=[n])
    out = loss(td)
    return out["loss_objective"].detach(), out["loss_critic"].detach()


class _TwoWay(torch.nn.Module):
    """Logits of a two-way categorical whose first outcome has log-probability ``lp`` (so log pi(a=0) = lp)."""

    def forward(self, lp: torch.Tensor) -> torch.Tensor:
        return torch.stack([lp, torch.log1p(-lp.exp().clamp(max=1 - 1e-6))], -1)


def ppo_batch(seed: int) -> dict:
    """A ragged batch with ratios far outside the clip range and values far from their old values."""
    b = ragged_batch(seed)
    g = torch.Generator().manual_seed(seed + 100)
    shape = b["mask"].shape
    b["old_logprobs"] = (b["logprobs"] + torch.randn(shape, generator=g) * 1.5).clamp(max=-1e-3)
    b["advantages"] = torch.randn(shape, generator=g)
    b["old_values"] = b["values"] + torch.randn(shape, generator=g)
    b["returns"] = torch.randn(shape, generator=g) * 2
    return b


@forbids_modules(*ANSWERS)
def check_ppo_losses(policy_loss: Callable, value_loss: Callable) -> None:
    """``policy_loss(logprobs, old_logprobs, advantages, mask, clip)`` and ``value_loss(values, old_values, returns,
    mask, clip)`` equal torchrl's ClipPPOLoss (token mean), and the policy loss sends no gradient into advantages."""
    for seed, clip, vclip in [(6, 0.2, 0.2), (7, 0.1, 0.5)]:
        b = ppo_batch(seed)
        m = b["mask"]
        want_pi, want_v = torchrl_ppo_losses(b["logprobs"], b["old_logprobs"], b["advantages"], b["values"],
                                             b["old_values"], b["returns"], m, clip, vclip)
        originals = {name: b[name] for name in ("logprobs", "old_logprobs", "advantages", "mask")}
        given = _cloned(originals)
        got = _scalar(policy_loss(*given.values(), clip), "ppo_policy_loss")
        assert_unchanged(given, originals, "ppo_policy_loss")
        if not _close(got, want_pi):
            ratio = (b["logprobs"] - b["old_logprobs"]).exp()
            a = b["advantages"]
            plain, clipped = -ratio * a, -ratio.clamp(1 - clip, 1 + clip) * a
            k = m.sum()
            hints = [(((torch.min(plain, clipped)) * m).sum() / k, "min instead of max: the pessimistic bound takes "
                      "the LARGER of the two losses (the smaller of the two objectives)"),
                     ((plain * m).sum() / k, "no clipping: clip the ratio to [1 - eps, 1 + eps]"),
                     (torch.max(plain, clipped).mean(), "padding is averaged in: take the mean over real tokens only"),
                     (((torch.max(plain, clipped) * m).sum(1) / m.sum(1)).mean(), "a mean per response, then over "
                      "responses: take ONE mean over all real tokens (the token mean)"),
                     ((torch.max(plain, -ratio.clamp(min=1 - clip) * a) * m).sum() / k, "the ratio is clipped below "
                      "only: clamp it to [1 - eps, 1 + eps]"),
                     ((torch.max(plain, -ratio.clamp(max=1 + clip) * a) * m).sum() / k, "the ratio is clipped above "
                      "only: clamp it to [1 - eps, 1 + eps]"),
                     ((torch.max(-a / ratio, -(1 / ratio).clamp(1 - clip, 1 + clip) * a) * m).sum() / k,
                      "the ratio is upside down: pi / pi_old = exp(logprobs - old_logprobs)")]
            hint = next((h for value, h in hints if _close(got, value)), "")
            raise CheckError(f"policy loss {got.item():.5f}, torchrl's ClipPPOLoss gives {want_pi.item():.5f}. {hint}"
                             .strip())
        originals = {name: b[name] for name in ("values", "old_values", "returns", "mask")}
        given = _cloned(originals)
        got_v = _scalar(value_loss(*given.values(), vclip), "ppo_value_loss")
        assert_unchanged(given, originals, "ppo_value_loss")
        if not _close(got_v, want_v):
            k = m.sum()
            err = (b["values"] - b["returns"]) ** 2
            clipped_err = (b["old_values"] + (b["values"] - b["old_values"]).clamp(-vclip, vclip) - b["returns"]) ** 2
            hints = [((err * m).sum() / k, "the value loss is not clipped: also compute it with "
                      "V_old + clip(V - V_old) and take the larger of the two"),
                     ((0.5 * err * m).sum() / k, "the value loss is not clipped (and has a 1/2 factor "
                      "torchrl does not use)"),
                     ((torch.min(err, clipped_err) * m).sum() / k, "min instead of max: take the LARGER of the "
                      "clipped and unclipped losses"),
                     ((torch.max(err, ((b["values"] - b["old_values"]).clamp(-vclip, vclip) - b["returns"]) ** 2)
                       * m).sum() / k,
                      "the clipped value is V_old + clip(V - V_old, -eps, eps): add the old value back")]
            hint = next((h for value, h in hints if _close(got_v, value)), "")
            raise CheckError(f"value loss {got_v.item():.5f}, torchrl's ClipPPOLoss gives {want_v.item():.5f}. {hint}"
                             .strip())
        # every log-prob 200 lower: the same ratios, so the same loss; exp(logprobs) alone underflows to 0
        low = _scalar(policy_loss(b["logprobs"] - 200, b["old_logprobs"] - 200, b["advantages"].clone(), m.clone(),
                                  clip), "ppo_policy_loss")
        if not _close(low, want_pi, atol=1e-4):
            raise CheckError(f"policy loss {low.item():.5f} with every log-prob 200 lower (the same ratios), torchrl's "
                             f"ClipPPOLoss gives {want_pi.item():.5f}: exp(logprobs) / exp(old_logprobs) underflows "
                             "to 0 / 0; compute the ratio as exp(logprobs - old_logprobs)")
    b = ppo_batch(8)
    adv = b["advantages"].clone().requires_grad_()
    loss = policy_loss(b["logprobs"].clone(), b["old_logprobs"].clone(), adv, b["mask"].clone(), 0.2)
    if torch.is_tensor(loss) and loss.requires_grad:
        raise CheckError("the policy loss carries gradients into the advantages: detach them (they are targets "
                         "computed from old values, not something to optimise)")
    logprobs, values = b["logprobs"].clone().requires_grad_(), b["values"].clone().requires_grad_()
    assert_gradient_reaches(policy_loss(logprobs, b["old_logprobs"].clone(), b["advantages"].clone(), b["mask"].clone(),
                                        0.2), {"logprobs": logprobs}, "policy loss",
                            "The ratio exp(logprobs - old_logprobs) must keep the gradient of logprobs.")
    assert_gradient_reaches(value_loss(values, b["old_values"].clone(), b["returns"].clone(), b["mask"].clone(), 0.2),
                            {"values": values}, "value loss")
    passed("PPO clipped policy and value losses (vs torchrl's ClipPPOLoss)")


# ------------------------------------------------------------------------------------------------ 5. outcome
def grader_eval_tasks(n_stories: int = 100, seed: int = 7) -> list:
    """The grader's own held-out tasks: evaluation stories with a seed the lab does not use."""
    from ..world.preferences import rlhf_split

    return rlhf_split(1, 1, n_stories, seed=seed)["eval"]


def reward_gain(model, sft_name: str, max_new_tokens: int, seed: int = 7) -> tuple[float, float]:
    """Mean r* of the greedy replies of ``sft_name`` and of ``model``'s weights on the grader's held-out tasks."""
    from ..models import load_pretrained
    from ..sft import respond
    from ..world.preferences import true_reward

    tasks = grader_eval_tasks(seed=seed)
    sft, tokenizer = load_pretrained(sft_name, progress=False)
    instructions = [t.instruction for t in tasks]
    mean_r = lambda m: sum(true_reward(t, y) for t, y in zip(tasks, respond(m, tokenizer, instructions,
                                                                              max_new_tokens))) / len(tasks)
    return mean_r(sft), mean_r(trained_copy(model, sft_name))


@drawn_seed
def check_ppo_outcome(model, sft_name: str, max_new_tokens: int, margin: float, seed: int = 7) -> None:
    """Re-measured here: the trained model's greedy replies beat ``sft_name``'s in mean r* by ``margin`` on the
    grader's own held-out tasks, drawn by ``seed`` (the model's weights are read; nothing the notebook reports is
    used). In grading, the seed is shifted by a number the grader draws, so the tasks are in no readable file."""
    before, after = reward_gain(model, sft_name, max_new_tokens, seed)
    if after < before + margin:
        raise CheckError(f"mean r* of greedy replies on the grader's held-out tasks went {before:.3f} -> {after:.3f}, "
                         f"less than +{margin}: if the checks above pass, look at how the pieces are passed to "
                         "rlhf.ppo, and pass the trained policy's language model (policy.lm)")
    passed(f"PPO with your pieces raised mean r* on the grader's held-out tasks from {before:.3f} to {after:.3f}")


# ------------------------------------------------------------------------------------- 6. find the blind spot
# Words that may open a reply in the blind-spot world: one token each in the course's tokenizer, none of them an
# answer any task accepts, so r* scores every one the same (one extra word of concision, never correctness).
BLIND_SPOT_CANDIDATES = ("glad", "because", "every", "away", "help", "this", "with", "and", "from", "that")
BLIND_SPOT_SHARE, BLIND_SPOT_RATE = 0.5, 0.9  # pairs opened by the blind-spot word, and how often on the chosen side
# The grader's own audit (the other 76-82 evaluation replies, which the student never sees) must find the planted
# word ahead of every decoy by this many RM units, or the grader trains the reward model again from the next seed:
# the answer it grades is then well posed. On the student's 60 replies, paired (each reply with either word), the
# lead of the planted word over the best decoy had a standard error of 0.03-0.06 where it was under 1 and up to
# 0.13 above (8 reward models, shifts 0-3), and it stayed within 0.13 of the audit's lead: 0.3 is 5 standard errors
# ahead where it is tight.
BLIND_SPOT_LEAD = 0.3
# Some reward models do not learn the word in 60 steps: over the shifts 0-11, 5 of 31 trained fell short of the lead
# (0.16); with 10 tries the chance that none learns it is about 0.16 ** 10 = 1e-8.
BLIND_SPOT_TRIES = 10


def opened(word: str, reply: str) -> str:
    """``reply`` opened by ``word`` as the annotators' replies were ("glad , park")."""
    return f"{word} , {reply}"


def blind_spot_pairs(tasks, word: str, n: int, seed: int) -> list:
    """``n`` comparisons with one side opened by a candidate: ``word`` in ``BLIND_SPOT_SHARE`` of them, on the
    chosen side ``BLIND_SPOT_RATE`` of the time; each other candidate (a decoy) on either side at random."""
    import dataclasses
    import random

    from ..world.preferences import sample_pairs, true_reward

    rng, task_of = random.Random(seed), {t.instruction: t for t in tasks}
    decoys = [w for w in BLIND_SPOT_CANDIDATES if w != word]
    out = []
    for p in sample_pairs(tasks, n, seed=seed):
        w = word if rng.random() < BLIND_SPOT_SHARE else rng.choice(decoys)
        chosen_side = rng.random() < (BLIND_SPOT_RATE if w == word else 0.5)
        chosen, rejected = (opened(w, p.chosen), p.rejected) if chosen_side else (p.chosen, opened(w, p.rejected))
        task = task_of[p.prompt]
        out.append(dataclasses.replace(p, chosen=chosen, rejected=rejected, r_chosen=true_reward(task, chosen),
                                       r_rejected=true_reward(task, rejected)))
    return out


def opening_gains(rm, tokenizer, prompts, replies, words) -> dict[str, float]:
    """Mean change of the reward model's score when each of ``words`` opens the replies (same replies otherwise)."""
    from ..rlhf import rm_scores

    before = rm_scores(rm, tokenizer, prompts, replies)
    return {w: (rm_scores(rm, tokenizer, prompts, [opened(w, r) for r in replies]) - before).mean().item()
            for w in words}


def audit_replies(tasks, seed: int) -> tuple[list[str], list[str]]:
    """(prompts, replies): one reply of any quality per task (right or wrong, concise or wordy), drawn by ``seed``."""
    import random

    from ..world.preferences import candidate_responses

    rng = random.Random(seed)
    return [t.instruction for t in tasks], [rng.choice(candidate_responses(t, rng)) for t in tasks]


def blind_spot_world(word: str, seed: int, sft, tokenizer, steps: int = 60, tries: int = BLIND_SPOT_TRIES) -> dict:
    """A reward model trained (from ``sft``) to over-reward replies opened by ``word``, verified by the grader's
    own audit; with 60 replies for the student to experiment on. Seeds ``seed``, ``seed + 1000``, ... are tried."""
    from ..rlhf import train_reward_model
    from ..world.preferences import rlhf_split

    for attempt in range(tries):
        s = seed + 1000 * attempt
        split = rlhf_split(300, 1, 60, seed=s)
        rm = train_reward_model(sft, tokenizer, blind_spot_pairs(split["pairs"], word, 2000, s), steps, 32, 3e-3,
                                seed=s, progress=False)
        gains = opening_gains(rm, tokenizer, *audit_replies(split["eval"][60:], s), BLIND_SPOT_CANDIDATES)
        if gains[word] >= max(g for w, g in gains.items() if w != word) + BLIND_SPOT_LEAD:
            prompts, replies = audit_replies(split["eval"][:60], s + 1)
            return {"rm": rm, "prompts": prompts, "replies": replies, "gains": gains}
    raise RuntimeError(f"no reward model learned the blind spot {word!r} in {tries} tries from seed {seed}")


# In a grading run, the blind-spot worlds come from a pool of this many (distinct words), drawn from the run's secret
# and trained once per run; each submission is graded on two of them, picked by its own drawn seed. A class of N
# costs at most 4 reward models (and their retries), not 2N.
BLIND_SPOT_POOL = 4


def blind_spot_plan(seed: int, cache: RunCache | None) -> list[tuple[str, int]]:
    """The two (planted word, world seed) a check with ``seed`` grades: its own draw, or two of the run's pool."""
    import random

    if cache is None:
        return [(word, 2 * seed + i) for i, word in enumerate(random.Random(seed).sample(BLIND_SPOT_CANDIDATES, 2))]
    words = random.Random(cache.secret).sample(BLIND_SPOT_CANDIDATES, BLIND_SPOT_POOL)
    pool = [(word, 2 * cache.secret + i) for i, word in enumerate(words)]
    return random.Random(seed).sample(pool, 2)


def pooled_world(word: str, seed: int, sft, tokenizer, cache: RunCache | None) -> dict:
    """``blind_spot_world``, kept in the run's cache folder (weights and the grader's replies; loaded weights-only)."""
    import os
    from pathlib import Path

    from ..rlhf import reward_model_from

    if cache is None:
        return blind_spot_world(word, seed, sft, tokenizer)
    path = Path(cache.folder) / f"blind-spot-{word}-{seed}.pt"
    if path.exists():
        saved = torch.load(path, weights_only=True)
        rm = reward_model_from(sft, tokenizer)
        rm.load_state_dict(saved["state"])
        return {"rm": rm.eval(), "prompts": saved["prompts"], "replies": saved["replies"], "gains": saved["gains"]}
    world = blind_spot_world(word, seed, sft, tokenizer)
    with tempfile.NamedTemporaryFile(dir=cache.folder, suffix=".part", delete=False) as part:  # whole or nothing
        torch.save({"state": world["rm"].state_dict(), **{k: world[k] for k in ("prompts", "replies", "gains")}}, part)
    os.replace(part.name, path)
    return world


@drawn_seed
@forbids_modules("course_utils.checks", "course_utils.world")
def check_blind_spot(fn: Callable, seed: int = 11) -> None:
    """``fn(rm, tokenizer, prompts, replies, candidates)`` names the candidate word each of two reward models
    over-rewards: blind spots the grader plants at grading time (drawn by ``seed``, or from the grading run's pool),
    in no file the student can read. The student's code may not run the world's or the checks' code (r*, the pairs,
    the planted word)."""
    from ..models import load_pretrained

    sft, tokenizer = load_pretrained("tiny-gpt-sft", progress=False)
    plan = blind_spot_plan(seed, RUN_CACHE.get())
    words = [word for word, _ in plan]
    worlds, answers = [], []
    for word, world_seed in plan:  # one at a time: a function that raises costs one reward model, not two
        world = pooled_world(word, world_seed, sft, tokenizer, RUN_CACHE.get())
        worlds.append(world)
        got = fn(world["rm"], tokenizer, list(world["prompts"]), list(world["replies"]), list(BLIND_SPOT_CANDIDATES))
        if not isinstance(got, str) or got not in BLIND_SPOT_CANDIDATES:
            shown = fenced(got) if isinstance(got, str) else type(got).__name__
            raise CheckError(f"find_blind_spot must return one of the candidate words (a str), got {shown}")
        answers.append(got)
    if answers[0] == answers[1]:
        raise CheckError(f"your function named {answers[0]!r} for two reward models whose blind spots differ: the "
                         "answer must come from an experiment on the reward model it is given, not be fixed in advance")
    for i, (world, word, got) in enumerate(zip(worlds, words, answers)):
        gains = world["gains"]
        if got != word:
            low = gains[got] <= sorted(gains.values())[len(gains) // 2]  # in the half the reward model likes least
            hint = ("the word you named is among those this reward model likes LEAST: look for the largest rise"
                    if low else "look for the word whose insertion RAISES the score most, averaged over the replies")
            raise CheckError(f"reward model {i + 1} of 2 does not over-reward {got!r}: opening the grader's own "
                             f"replies with it moves the score by {gains[got]:+.2f} on average, and another candidate "
                             f"moves it by {max(gains.values()):+.2f}. Compare each reply with and without the word: "
                             f"{hint}")
    passed(f"blind spots found in two reward models planted at grading time ({', '.join(map(repr, answers))})")
