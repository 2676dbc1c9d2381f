"""Checks for lab 06 (DPO); TRL's ``DPOTrainer`` and a numerical optimiser are the oracles.

Oracles: the per-sequence log-probs TRL's DPO pipeline computes for a batch it built itself
(``DPOTrainer.compute_ref_log_probs``), the loss and reward metrics of ``DPOTrainer._compute_loss`` on that
batch, and, for the toy closed form, the KL-regularised objective maximised by L-BFGS. The model forwards
happen here, in the checker; the student's functions receive and return tensors only. When a result is
wrong, the checks compare it with typical mistakes and name the one that matches.
"""
from __future__ import annotations

import copy
import tempfile
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

from . import (CheckError, assert_gradient_reaches, assert_unchanged, call_student, drawn_seed, extreme_pairs,
               forbids_modules, passed, trained_copy)
from ..sft import quiet_hf, respond

_CACHE: dict = {}


def _close(a, b, atol: float = 1e-4, rtol: float = 1e-4) -> bool:
    return torch.is_tensor(a) and a.shape == b.shape and torch.allclose(a.double(), b.double(), atol=atol, rtol=rtol)


def trl_dpo_batch() -> dict:
    """TRL's DPOTrainer on a few of the world's pairs: its batch, the policy's logits and its per-sequence log-probs.

    The policy is the course's tiny GPT with its weights nudged (so it differs from its frozen reference copy).
    Returns plain tensors and the trainer (kept for the loss check).
    """
    if "batch" in _CACHE:
        return _CACHE["batch"]
    quiet_hf()
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from ..world.instructions import task_split
    from ..world.preferences import sample_pairs
    from ..models import load_pretrained

    model, tokenizer = load_pretrained("tiny-gpt", progress=False)
    pairs = sample_pairs(task_split(40, "train", seed=5), 6, seed=3)
    state = torch.random.get_rng_state()  # TRL re-seeds the global generator; leave the caller's as it was
    try:
        ref = copy.deepcopy(model)
        generator = torch.Generator().manual_seed(6)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=generator))
        args = DPOConfig(output_dir=tempfile.mkdtemp(prefix="dpo-check-"), bf16=False, activation_checkpointing=False,
                         use_cpu=True, report_to="none", disable_tqdm=True, save_strategy="no",
                         logging_strategy="no", dataloader_pin_memory=False, max_length=tokenizer.model_max_length,
                         per_device_train_batch_size=len(pairs), beta=0.1)
        trainer = DPOTrainer(model=model, ref_model=ref, args=args, processing_class=tokenizer,
                             train_dataset=Dataset.from_list([p.record() for p in pairs]))
    finally:
        torch.random.set_rng_state(state)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(pairs))])
    trainer.model.eval()
    with torch.no_grad():
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        ref_logits = trainer.ref_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        policy = torch.cat(trainer.compute_ref_log_probs(trainer.model, batch))
        reference = torch.cat(trainer.compute_ref_log_probs(trainer.ref_model, batch))
    _CACHE["batch"] = {"trainer": trainer, "batch": {k: v for k, v in batch.items()}, "logits": logits,
                       "ref_logits": ref_logits, "policy_logps": policy, "ref_logps": reference}
    return _CACHE["batch"]


def _extreme_logps(fn: Callable, logits, ids, completion) -> None:
    """The logits scaled x200: a token far below the best one has softmax 0 in float32 and exp(logit) overflows."""
    from trl.trainer.utils import selective_log_softmax

    extreme = logits * 200
    want = (selective_log_softmax(extreme[:, :-1].double(), ids[:, 1:]) * completion[:, 1:]).sum(-1)
    got = fn(extreme.clone().requires_grad_(), ids.clone(), completion.clone())
    if not (torch.is_tensor(got) and torch.isfinite(got).all() and _close(got.detach(), want)):
        value = got.detach().tolist() if torch.is_tensor(got) else got
        raise CheckError(f"on logits 200x larger (gaps of thousands between tokens) the log-probs are {value}, TRL "
                         f"gives {[round(v, 1) for v in want.tolist()]}: log(softmax(x)) underflows to log(0) and "
                         "exp(x) overflows; use torch.log_softmax (it subtracts the max)")


def _logps_variants(logits, ids, completion, attention) -> dict[str, torch.Tensor]:
    logp = torch.log_softmax(logits.double(), -1)
    token = logp[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    unshifted = logp.gather(-1, ids[:, :, None]).squeeze(-1)
    mask = completion[:, 1:].double()
    return {
        "the prompt's tokens are summed too: keep only the response tokens (completion_mask), not attention_mask":
            (token * attention[:, 1:]).sum(-1),
        "every token is summed, prompt and padding included: multiply by the shifted completion_mask":
            token.sum(-1),
        "a mean over the response tokens: DPO SUMS the token log-probs (log pi(y|x) of the whole response)":
            (token * mask).sum(-1) / mask.sum(-1),
        "no shift: the logits at position t give the probability of the token at t+1":
            (unshifted * completion).sum(-1),
        "the mask is off by one: shift it like the targets (completion_mask[:, 1:])":
            (token * completion[:, :-1]).sum(-1),
        "the sum runs over every token of the vocabulary: gather the log-prob of the actual next token":
            (logp[:, :-1].sum(-1) * mask).sum(-1),
    }


# The course's own answers live in course_utils.dpo (lecture 06 uses them) and TRL is the oracle: when
# `course grade` calls the student's functions, code from either may not run.
ANSWERS = ("course_utils.dpo", "trl")
ORACLES = ("trl.trainer.dpo_trainer",)  # loaded once by `course grade`'s check server (checkproc.preload)


@forbids_modules(*ANSWERS)
def check_sequence_logps(fn: Callable) -> None:
    """``fn(logits, input_ids, completion_mask)`` must give the per-sequence log-probs TRL computes for the batch."""
    data = trl_dpo_batch()
    batch, logits = data["batch"], data["logits"]
    for name, lg, expected in (("policy", logits, data["policy_logps"]), ("reference", data["ref_logits"],
                                                                           data["ref_logps"])):
        given = {"logits": lg.clone().requires_grad_(), "input_ids": batch["input_ids"].clone(),
                 "completion_mask": batch["completion_mask"].clone()}
        got = fn(*given.values())
        assert_unchanged(given, {"logits": lg, "input_ids": batch["input_ids"],
                                 "completion_mask": batch["completion_mask"]}, "sequence_logps")
        if not torch.is_tensor(got):
            raise CheckError(f"return a tensor of shape ({len(expected)},), one log-prob per row; got {type(got).__name__}")
        if not got.requires_grad:
            raise CheckError(f"the {name} log-probs carry no gradient from the logits (computed under torch.no_grad(), "
                             "or detached?): the DPO loss could not train the policy through them")
        got = got.detach()
        if got.shape != expected.shape:
            raise CheckError(f"shape {tuple(got.shape)} but expected ({len(expected)},): one value per row "
                             "(chosen rows first, then rejected rows)")
        if _close(got, expected):
            continue
        for hint, value in _logps_variants(lg, batch["input_ids"], batch["completion_mask"],
                                           batch["attention_mask"]).items():
            if _close(got, value):
                raise CheckError(f"log-probs differ from TRL's for the {name} model: {hint}")
        err = (got.double() - expected.double()).abs().max().item()
        raise CheckError(f"log-probs differ from TRL's for the {name} model (max abs error {err:.3g}); TRL gives "
                         f"{[round(v, 3) for v in expected.tolist()]}")
    _extreme_logps(fn, logits, batch["input_ids"], batch["completion_mask"])
    passed("sequence log-probs of the response tokens (same as TRL's DPOTrainer)")


def trl_loss(trainer, batch: dict, beta: float, noise: float) -> tuple[torch.Tensor, dict]:
    """DPOTrainer's loss on ``batch`` at ``beta``: its "robust" loss (rDPO) with label_smoothing = ``noise``.

    The trainer is shared (``trl_dpo_batch`` caches it), so its settings are put back afterwards."""
    saved = trainer.beta, trainer.label_smoothing, trainer.loss_types
    trainer.beta, trainer.label_smoothing, trainer.loss_types = beta, noise, ["robust"]
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*gradient_checkpointing.*deprecated", category=FutureWarning)
            loss = trainer.compute_loss(trainer.model, dict(batch))
    finally:
        trainer.beta, trainer.label_smoothing, trainer.loss_types = saved
    return loss, {k: v[-1] for k, v in trainer._metrics["eval"].items()}


def rdpo_reference(delta: torch.Tensor, beta: float, noise: float) -> torch.Tensor:
    """rDPO's mean loss (Chowdhury et al., 2024) on log-ratio differences ``delta``, written out as in the paper."""
    clean, flipped = -F.logsigmoid(beta * delta), -F.logsigmoid(-beta * delta)
    return (((1 - noise) * clean - noise * flipped) / (1 - 2 * noise)).mean()


def _rdpo_variants(delta, beta: float, noise: float) -> dict[str, torch.Tensor]:
    clean, flipped = -F.logsigmoid(beta * delta), -F.logsigmoid(-beta * delta)
    return {
        "that is conservative DPO (cDPO, label smoothing): rDPO SUBTRACTS the flipped-label term, "
        "((1 - eps) * loss(chosen wins) - eps * loss(rejected wins)) / (1 - 2 eps)":
            ((1 - noise) * clean + noise * flipped).mean(),
        "the division by 1 - 2 eps is missing (it makes the loss an unbiased estimate of the clean-label loss)":
            ((1 - noise) * clean - noise * flipped).mean(),
        "eps and 1 - eps are swapped: the observed label gets weight 1 - eps, the flipped one eps":
            ((noise * clean - (1 - noise) * flipped) / (1 - 2 * noise)).mean(),
        "the noise rate is ignored: that is plain DPO": clean.mean(),
        "beta is outside the log-sigmoid: it scales the log-ratio difference INSIDE, -log sigmoid(beta * ...)":
            (((1 - noise) * -F.logsigmoid(delta) + noise * F.logsigmoid(-delta)) * beta / (1 - 2 * noise)).mean(),
        "chosen and rejected are swapped: the loss should fall as the chosen response gains":
            (((1 - noise) * flipped - noise * clean) / (1 - 2 * noise)).mean(),
        "a sum over pairs: TRL takes the mean": (((1 - noise) * clean - noise * flipped) / (1 - 2 * noise)).sum(),
    }


@forbids_modules(*ANSWERS)
def check_dpo_loss(fn: Callable) -> None:
    """``fn(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, noise)`` -> (loss, chosen_rewards,
    rejected_rewards): rDPO at label-noise rate ``noise``, compared with DPOTrainer's "robust" loss and its reward
    metrics on the same batch (noise 0 is plain DPO)."""
    data = trl_dpo_batch()
    trainer, batch = data["trainer"], data["batch"]
    pc, pr = data["policy_logps"].chunk(2)
    rc, rr = data["ref_logps"].chunk(2)
    for beta, noise in ((0.1, 0.0), (0.1, 0.2), (0.5, 0.35)):
        expected, metrics = trl_loss(trainer, batch, beta, noise)
        given = {"policy_chosen": pc.clone(), "policy_rejected": pr.clone(), "ref_chosen": rc.clone(),
                 "ref_rejected": rr.clone()}
        got = fn(*given.values(), beta, noise)
        assert_unchanged(given, dict(zip(given, (pc, pr, rc, rr))), "dpo_loss")
        if not (isinstance(got, (tuple, list)) and len(got) == 3 and all(torch.is_tensor(x) for x in got)):
            raise CheckError("return a tuple (loss, chosen_rewards, rejected_rewards) of tensors")
        loss, chosen, rejected = (x.detach() for x in got)
        if loss.dim() != 0:
            raise CheckError(f"the loss must be a scalar (the mean over pairs), got shape {tuple(loss.shape)}")
        for what, value, shape in (("chosen_rewards", chosen, pc.shape), ("rejected_rewards", rejected, pr.shape)):
            if value.shape != shape:
                raise CheckError(f"{what} must hold one reward per pair, shape {tuple(shape)}; got {tuple(value.shape)}")
        if not _close(loss, expected, atol=1e-5):
            delta = (pc - rc) - (pr - rr)
            hint = next((h for h, value in _rdpo_variants(delta, beta, noise).items()
                         if _close(loss, value, atol=1e-5)), "")
            raise CheckError(f"loss {loss.item():.5f} but TRL's rDPO gives {expected.item():.5f} on the same batch "
                             f"(beta={beta}, noise={noise}){': ' + hint if hint else ''}")
        want_chosen, want_rejected = beta * (pc - rc), beta * (pr - rr)
        for what, value, want, metric in (("chosen_rewards", chosen, want_chosen, "rewards/chosen"),
                                          ("rejected_rewards", rejected, want_rejected, "rewards/rejected")):
            if not _close(value, want) or abs(value.double().mean().item() - metrics[metric]) > 1e-4:
                hint = ""
                if _close(value, want / beta):
                    hint = ": multiply the log-ratio by beta"
                elif _close(value, (pc if what == "chosen_rewards" else pr) * beta):
                    hint = ": the implicit reward is beta * (log pi - log pi_ref), relative to the reference"
                raise CheckError(f"{what} differ from TRL's implicit rewards (batch mean {metrics[metric]:.5f}, "
                                 f"yours {value.double().mean().item():.5f}){hint}")
    gap = extreme_pairs() * 10  # log-ratio differences up to 3000: beta * gap far outside log(sigmoid)'s range
    chosen, rejected = (gap / 2).requires_grad_(), (-gap / 2).requires_grad_()
    ref = torch.zeros_like(gap)
    loss = fn(chosen, rejected, ref.clone(), ref.clone(), 0.1, 0.2)[0]
    want = rdpo_reference(gap.double(), 0.1, 0.2)
    if not (torch.is_tensor(loss) and torch.isfinite(loss).all() and _close(loss.detach(), want, atol=1e-4)):
        raise CheckError(f"loss {loss.detach().double().mean().item():.5f} on log-ratio gaps up to 3000 (beta=0.1, "
                         f"noise=0.2), expected {want.item():.5f}: log(sigmoid(x)) underflows to log(0); "
                         "use F.logsigmoid")
    assert_gradient_reaches(loss, {"policy_chosen_logps": chosen, "policy_rejected_logps": rejected}, "DPO loss")
    passed("rDPO loss and implicit rewards (same as TRL's DPOTrainer robust loss, 3 values of beta and noise)")


def _maximise_objective(ref: torch.Tensor, rewards: torch.Tensor, beta: float) -> torch.Tensor:
    """The policy maximising E_pi[r] - beta KL(pi || ref), found by L-BFGS on free logits (no closed form used)."""
    logits = torch.zeros_like(ref, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([logits], lr=1, max_iter=500, tolerance_grad=1e-13, tolerance_change=1e-15,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        logp = torch.log_softmax(logits, -1)
        value = (logp.exp() * (rewards - beta * (logp - ref.log()))).sum()
        (-value).backward()
        return -value

    optimizer.step(closure)
    return torch.softmax(logits.detach(), -1)


@forbids_modules(*ANSWERS)
def check_optimal_policy(fn: Callable) -> None:
    """``fn(ref_probs, rewards, beta)`` must be the maximiser of E_pi[r] - beta KL(pi || pi_ref), row by row."""
    generator = torch.Generator().manual_seed(0)
    ref = torch.softmax(2 * torch.randn(4, 6, generator=generator, dtype=torch.float64), -1)
    rewards = torch.rand(4, 6, generator=generator, dtype=torch.float64) * 1.5
    for beta in (0.2, 1.0, 3.0):
        given = {"ref_probs": ref.clone(), "rewards": rewards.clone()}
        got = fn(*given.values(), beta)
        assert_unchanged(given, {"ref_probs": ref, "rewards": rewards}, "optimal_policy")
        if not torch.is_tensor(got) or got.shape != ref.shape:
            raise CheckError(f"return a tensor of shape {tuple(ref.shape)} (prompts x responses), "
                             f"got {getattr(got, 'shape', type(got).__name__)}")
        got = got.detach().double()
        best = _maximise_objective(ref, rewards, beta)
        if _close(got, best, atol=1e-6, rtol=1e-5):
            continue
        mistakes = {
            "exp(beta * r): the reward is divided by beta, pi_ref * exp(r / beta)": torch.softmax(ref.log() + beta * rewards, -1),
            "pi_ref is missing: the optimum stays proportional to the reference, pi_ref * exp(r / beta)":
                torch.softmax(rewards / beta, -1),
            "not normalised: divide by Z(x) = sum_y pi_ref(y|x) exp(r(x, y) / beta), one Z per prompt":
                ref * torch.exp(rewards / beta),
            "normalised over the wrong axis: each prompt (row) is a distribution over its responses":
                (ref * torch.exp(rewards / beta)) / (ref * torch.exp(rewards / beta)).sum(0, keepdim=True),
        }
        for hint, value in mistakes.items():
            if _close(got, value, atol=1e-6, rtol=1e-5):
                raise CheckError(f"not the optimal policy for beta={beta}: {hint}")
        if not torch.allclose(got.sum(-1), torch.ones(len(got), dtype=torch.float64), atol=1e-6):
            raise CheckError("each row must be a probability distribution over the prompt's responses (sum to 1)")
        err = (got - best).abs().max().item()
        raise CheckError(f"not the maximiser of E[r] - beta KL for beta={beta} (max abs error {err:.3g})")
    # Adding a constant to a prompt's rewards leaves its optimum unchanged (Z absorbs it); at +1000 with beta 1,
    # exp(r / beta) overflows even in float64 unless the row's max is subtracted first (softmax does).
    shifted = fn(ref.clone(), rewards + 1000, 1.0)
    best = _maximise_objective(ref, rewards, 1.0)
    if not (torch.is_tensor(shifted) and shifted.shape == ref.shape
            and _close(shifted.detach().double(), best, atol=1e-3)):  # 1e-3: float32 rounds 1000 + r to 6e-5
        shown = shifted.detach()[0].tolist() if torch.is_tensor(shifted) else type(shifted).__name__
        raise CheckError(f"rewards + 1000 (beta=1) must give the same policy as the rewards themselves (a constant "
                         f"per prompt cancels in Z), got {shown}: exp(r / beta) overflows to inf; subtract each row's "
                         "max first (torch.softmax does)")
    passed("closed-form optimal policy pi* = pi_ref exp(r/beta) / Z (matches the numerically maximised objective)")


@drawn_seed
def check_dpo_outcome(model, sft_name: str, max_new_tokens: int, min_win_rate: float, max_kl: float,
                      seed: int = 7) -> None:
    """Re-measured here from the trained model's weights on the grader's own held-out tasks (drawn by ``seed``,
    shifted in grading): its greedy replies beat ``sft_name``'s under r* (win rate, ties half) while its KL to that
    model stays under ``max_kl`` nats."""
    from ..dpo import response_kl
    from ..models import load_pretrained
    from ..world.preferences import win_rate
    from .rlhf import grader_eval_tasks

    policy = trained_copy(model, sft_name)
    sft, tokenizer = load_pretrained(sft_name, progress=False)
    tasks = grader_eval_tasks(seed=seed)
    prompts = [t.instruction for t in tasks]
    win = win_rate(respond(policy, tokenizer, prompts, max_new_tokens),
                   respond(sft, tokenizer, prompts, max_new_tokens), tasks)
    state = torch.random.get_rng_state()
    try:
        kl = response_kl(policy, sft, tokenizer, prompts, max_new_tokens, seed=0)
    finally:
        torch.random.set_rng_state(state)
    problems = []
    if win < min_win_rate:
        problems.append(f"the win rate over SFT under r* on the grader's held-out tasks is {win:.2f}, below "
                        f"{min_win_rate}: check the log-probs (sum over response tokens) and the loss (chosen vs "
                        "rejected, beta), and pass the trained copy (policy)")
    if kl > max_kl:
        problems.append(f"the KL to the reference is {kl:.2f} nats, above {max_kl}: the policy drifted far from SFT "
                        "(is the reference's log-prob subtracted? is beta inside the log-sigmoid?)")
    if problems:
        raise CheckError("; ".join(problems))
    passed(f"DPO beats SFT under r* on the grader's held-out tasks (win rate {win:.2f}) at KL {kl:.2f} nats")


# ------------------------------------------------------------- 5. does DPO make the chosen replies more likely?
SHIFT_PAIRS = 120  # the grader's held-out pairs: the mean shift's standard error is 0.42-0.55 nats (lab policies)
# The stated direction is graded where the grader's mean shift of log pi(chosen) is this many standard errors from 0;
# nearer 0 either answer counts. The solution's policies (ci, seeds 0-2, native and avx, draws 7, 1007, 2007): log
# pi(chosen) -3.14 to -4.12 nats, 7.3 to 8.7 standard errors below 0; log pi(rejected) -5.36 to -7.89
DECISIVE = 3.0


def shift_batch(tokenizer, seed: int) -> dict:
    """The grader's hidden pairs on its own held-out tasks (drawn by ``seed``), as one exercise-1 batch."""
    from ..dpo import collate_pairs, encode_pair
    from ..world.preferences import sample_pairs
    from .rlhf import grader_eval_tasks

    pairs = sample_pairs(grader_eval_tasks(seed=seed), SHIFT_PAIRS, seed=seed)
    return collate_pairs([encode_pair(tokenizer, p.prompt, p.chosen, p.rejected) for p in pairs],
                         tokenizer.pad_token_id)


@torch.no_grad()
def _logits(model, batch: dict) -> torch.Tensor:
    """``model``'s logits for the batch's rows."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _row_logps(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """Each row's response log-prob from ``logits`` (TRL's selective_log_softmax, in float64)."""
    from trl.trainer.utils import selective_log_softmax

    ids = batch["input_ids"]
    return (selective_log_softmax(logits[:, :-1].double(), ids[:, 1:]) * batch["completion_mask"][:, 1:]).sum(-1)


def _shift_mistakes(policy: torch.Tensor, ref: torch.Tensor, batch: dict) -> dict[str, tuple[float, float]]:
    """(chosen, rejected) mean shifts that typical mistakes give, under their hints (``policy``, ``ref``: logits)."""
    mean = lambda x: tuple(v.mean().item() for v in x.chunk(2))
    rows = lambda logits: _logps_variants(logits.double(), batch["input_ids"], batch["completion_mask"],
                                          batch["attention_mask"])
    right = _row_logps(policy, batch) - _row_logps(ref, batch)
    (c, r), n = mean(right), len(right) // 2
    out = {"a shift is log pi(y|x) - log pi_ref(y|x): the policy's log-prob minus the reference's": (-c, -r),
           "chosen and rejected are swapped: the batch holds the chosen rows first, then the rejected rows": (r, c),
           "both log-probs come from one model: score the batch with the policy AND with the reference": (0.0, 0.0),
           "the reference's log-probs are not subtracted: a shift is relative to the reference":
               mean(_row_logps(policy, batch)),
           "a sum over pairs: report the mean shift per pair": (c * n, r * n)}
    policy_rows, ref_rows = rows(policy), rows(ref)
    return {**out, **{hint: mean(policy_rows[hint] - ref_rows[hint]) for hint in policy_rows}}


@drawn_seed
@forbids_modules(*ANSWERS, "course_utils.checks")
def check_logp_shift(fn: Callable, model, sft_name: str, chosen_rose, seed: int = 7) -> None:
    """``fn(policy, reference, batch)`` -> (mean change of log pi(chosen), of log pi(rejected)) against the
    reference on an exercise-1 batch; ``chosen_rose`` must agree with the grader's own measurement of the trained
    ``model`` on hidden pairs (drawn by ``seed``), where that measurement is decisive."""
    from ..models import load_pretrained

    if torch.is_tensor(chosen_rose) and chosen_rose.dtype == torch.bool and chosen_rose.numel() == 1:
        chosen_rose = bool(chosen_rose)  # e.g. chosen_shift > 0 with a tensor shift
    if not isinstance(chosen_rose, bool):
        raise CheckError(f"CHOSEN_ROSE must be True or False (a bool), got {type(chosen_rose).__name__}")
    policy = trained_copy(model, sft_name)
    reference, tokenizer = load_pretrained(sft_name, progress=False)
    batch = shift_batch(tokenizer, seed)
    policy_logits, ref_logits = _logits(policy, batch), _logits(reference, batch)
    shifts = _row_logps(policy_logits, batch) - _row_logps(ref_logits, batch)
    want = tuple(v.mean().item() for v in shifts.chunk(2))
    got = call_student(fn, "logp_shift(policy, reference, batch)", policy, reference, {k: v.clone() for k, v in
                                                                                        batch.items()})
    try:
        got = tuple(float(x) for x in got)
    except (TypeError, ValueError):
        got = None
    if got is None or len(got) != 2:
        raise CheckError("logp_shift must return two numbers: (mean shift of the chosen replies, of the rejected)")
    near = lambda a, b: all(abs(x - y) <= 1e-3 + 1e-4 * abs(y) for x, y in zip(a, b))
    if not near(got, want):
        hint = next((h for h, v in _shift_mistakes(policy_logits, ref_logits, batch).items() if near(got, v)), "")
        raise CheckError(f"on the grader's {SHIFT_PAIRS} held-out pairs your logp_shift gives ({got[0]:+.3f}, "
                         f"{got[1]:+.3f}) nats, the grader measures ({want[0]:+.3f}, {want[1]:+.3f})"
                         f"{': ' + hint if hint else ''}")
    chosen = shifts.chunk(2)[0]
    error = chosen.std().item() / len(chosen) ** 0.5
    decisive = abs(want[0]) > DECISIVE * error
    if decisive and chosen_rose != (want[0] > 0):
        raise CheckError(f"CHOSEN_ROSE = {chosen_rose}, but on the grader's held-out pairs your policy's log "
                         f"pi(chosen) {'rose' if want[0] > 0 else 'fell'} by {abs(want[0]):.2f} nats on average "
                         f"({abs(want[0]) / error:.0f} standard errors from 0): state what your measurement shows, "
                         "not what DPO's loss seems to promise")
    passed(f"log-prob shifts re-measured on the grader's held-out pairs: chosen {want[0]:+.2f}, rejected "
           f"{want[1]:+.2f} nats; CHOSEN_ROSE = {chosen_rose} "
           f"{'agrees' if decisive else 'accepted (the chosen side moved less than 3 standard errors)'}")


__all__ = ["check_dpo_loss", "check_dpo_outcome", "check_logp_shift", "check_optimal_policy", "check_sequence_logps",
           "rdpo_reference", "shift_batch", "trl_dpo_batch", "trl_loss"]
