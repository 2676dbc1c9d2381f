"""The outcome checks of labs 05, 06 and 09 re-measure the student's trained model on the grader's held-out tasks.

This measures, over seeds 0-2 at the ci sizes, what those checks see for the course's own pieces and for a broken
piece: lab 05 with the course's policy loss and with one that sends no gradient to the policy; lab 06 with rDPO at
the pairs' label-noise rate and with an untrained copy; lab 09 with the course's advantages and loss, with the
advantages' sign flipped, with a group std of 0 left undivided-by-eps, and untrained. In grading the task draw's seed
is shifted by a secret number, so ``--draws`` measures other draws too.
Run: ``python benchmarks/lab_outcome_margins.py --draws 7,1007 [--labs 05,06,09]``.
"""
import copy

import torch

from course_utils import rlhf, setup
from course_utils import grpo
from course_utils.checks.grpo import OUTCOME_SAMPLES, verified_shares
from course_utils.checks.rlhf import grader_eval_tasks
from course_utils.dpo import DPOObjective, encode_pair, response_kl, train_dpo, with_reference
from course_utils.models import load_pretrained
from course_utils.sft import quiet_hf, respond
from course_utils.stats import mean_ci
from course_utils.world.preferences import (label_noise_rate, rlhf_split, sample_pairs, true_reward, win_outcomes,
                                            win_rate)


def no_policy_gradient(logprobs, old_logprobs, advantages, mask, clip):
    """The right value, but the ratio is built from detached log-probs: no gradient reaches the policy."""
    return rlhf.ppo_policy_loss(logprobs.detach(), old_logprobs, advantages, mask, clip)


def rdpo(pc, pr, rc, rr, beta, noise):
    """rDPO at label-noise rate ``noise`` (the lab's exercise 2)."""
    h = beta * ((pc - rc) - (pr - rr))
    losses = (-(1 - noise) * torch.nn.functional.logsigmoid(h) + noise * torch.nn.functional.logsigmoid(-h))
    return (losses / (1 - 2 * noise)).mean(), None, None


def lab05(tasks, seeds=(0, 1, 2)) -> None:
    """Mean r* gain over SFT of greedy replies after the lab's PPO run, with a 95% CI over the grader's stories."""
    profile = setup("05_rlhf_ppo", profile="ci", verbose=False)
    sft, tok = load_pretrained(profile["sft_model"], progress=False)
    prompts = rlhf_split(10, profile["prompt_stories"], 10)["prompts"]
    instructions = [t.instruction for t in tasks]
    r_sft = [true_reward(t, y) for t, y in zip(tasks, respond(sft, tok, instructions, profile["max_new_tokens"]))]
    for seed in seeds:
        for name, parts in (("course policy loss", None), ("no gradient to the policy",
                                                           {"policy_loss": no_policy_gradient})):
            cfg = rlhf.PPOConfig(**{**profile["ppo"], "steps": profile["lab_ppo_steps"],
                                    "batch_size": profile["lab_batch"]}, seed=seed)
            policy = rlhf.new_policy(sft)
            rlhf.ppo(policy, rlhf.no_dropout(sft), rlhf.TrueReward(), tok, prompts, cfg, parts=parts, progress=False)
            replies = respond(policy.lm, tok, instructions, profile["max_new_tokens"])
            gain = [true_reward(t, y) - r for t, y, r in zip(tasks, replies, r_sft)]
            print(f"lab 05, seed {seed}, {name:26s}: mean r* gain over SFT {mean_ci(gain, [t.story for t in tasks])}",
                  flush=True)


def lab06(tasks, seeds=(0, 1, 2)) -> None:
    """Win rate over SFT and KL to SFT of the lab's rDPO run, and of an untrained copy, on the grader's tasks."""
    profile = setup("06_dpo", profile="ci", verbose=False)
    sft, tok = load_pretrained(profile["sft_model"], progress=False)
    split = rlhf_split(profile["pair_stories"], profile["prompt_stories"], profile["lab_eval_stories"])
    pairs = sample_pairs(split["pairs"], profile["pairs"], sharpness=profile["annotator_sharpness"], seed=0)
    noise = label_noise_rate(pairs)
    examples = with_reference([encode_pair(tok, p.prompt, p.chosen, p.rejected) for p in pairs], sft, tok.pad_token_id)
    prompts = [t.instruction for t in tasks]
    sft_replies = respond(sft, tok, prompts, profile["max_new_tokens"])
    print(f"lab 06: label noise {noise:.3f}, untrained copy: win rate 0.5 (every reply ties), KL 0")
    for seed in seeds:
        policy = copy.deepcopy(sft)
        torch.manual_seed(seed)
        train_dpo(policy, examples, tok.pad_token_id, beta=profile["lab_beta"], steps=profile["lab_steps"],
                  batch_size=profile["batch_size"], lr=profile["lr"], seed=seed, progress=False,
                  loss_fn=DPOObjective(profile["lab_beta"], loss_fn=lambda *a: rdpo(*a, noise)))
        replies = respond(policy, tok, prompts, profile["max_new_tokens"])
        outcomes = win_outcomes(replies, sft_replies, tasks)
        kl = response_kl(policy, sft, tok, prompts, profile["max_new_tokens"], seed=0)
        print(f"lab 06, seed {seed}, rDPO: win rate over SFT {win_rate(replies, sft_replies, tasks):.3f} "
              f"(95% CI {mean_ci(outcomes, [t.story for t in tasks])}), KL {kl:.2f} nats", flush=True)


def no_eps_advantages(rewards, group_size, scale=True):
    """Divided by the group's std without the 1e-4: a group whose rewards are all equal gives 0 / 0."""
    g = rewards.view(-1, group_size)
    return ((g - g.mean(1, keepdim=True)) / g.std(1, keepdim=True)).reshape(-1)


LAB09_VARIANTS = {"course pieces": {}, "advantages' sign flipped": {
    "advantages": lambda r, g, s=True: -grpo.group_advantages(r, g, s)}, "no eps, std 0 groups": {
    "advantages": no_eps_advantages}, "untrained copy": None}


def lab09(draws, seeds=(0, 1, 2)) -> None:
    """pass@1 gain over SFT (the check's own measurement) after the lab's GRPO run, per training seed and draw."""
    profile = setup("09_rlvr_grpo", profile="ci", verbose=False)
    sft, tok = load_pretrained(profile["sft_model"], progress=False)
    split = rlhf_split(profile["pair_stories"], profile["prompt_stories"], profile["eval_stories"])
    mnt = profile["max_new_tokens"]
    tasks = {d: grader_eval_tasks(seed=d) for d in draws}
    base = {d: verified_shares(sft, tok, tasks[d], OUTCOME_SAMPLES, mnt, d) for d in draws}
    for seed in seeds:
        for name, parts in LAB09_VARIANTS.items():
            if parts is None and seed != seeds[0]:
                continue
            policy = copy.deepcopy(sft)
            if parts is not None:
                cfg = grpo.GRPOConfig(group_size=profile["group_size"], prompts=profile["lab_prompts"],
                                      steps=profile["lab_steps"], lr=profile["lab_lr"], max_new_tokens=mnt, seed=seed)
                torch.manual_seed(seed)
                try:
                    grpo.grpo(policy, sft, grpo.correctness_reward, tok, split["prompts"], cfg,
                              parts={**grpo.PARTS, **parts}, progress=False)
                except RuntimeError as error:
                    print(f"lab 09, seed {seed}, {name:26s}: training stopped ({str(error)[:60]})", flush=True)
            if not all(torch.isfinite(p).all() for p in policy.parameters()):
                print(f"lab 09, seed {seed}, {name:26s}: weights hold NaN or inf (the check refuses them)", flush=True)
                continue
            for d in draws:
                after = verified_shares(policy, tok, tasks[d], OUTCOME_SAMPLES, mnt, d)
                gain = [a - b for a, b in zip(after, base[d])]
                p0 = sum(base[d]) / len(gain)
                print(f"lab 09, seed {seed}, draw {d}, {name:26s}: pass@1 {p0:.3f} -> {p0 + sum(gain) / len(gain):.3f},"
                      f" gain {mean_ci(gain, [t.story for t in tasks[d]])}", flush=True)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--draws", default="7", help="comma-separated seeds of the grader's task draw (7: the notebook's)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    parser.add_argument("--labs", default="05,06,09", help="comma-separated labs to measure")
    args = parser.parse_args()
    quiet_hf()
    seeds = tuple(map(int, args.seeds.split(",")))
    if "09" in args.labs:
        lab09(tuple(map(int, args.draws.split(","))), seeds)
    for draw in map(int, args.draws.split(",")) if {"05", "06"} & set(args.labs.split(",")) else ():
        grader_tasks = grader_eval_tasks(seed=draw)
        print(f"grader's held-out tasks (draw {draw}): {len(grader_tasks)} from "
              f"{len({t.story for t in grader_tasks})} stories")
        if "05" in args.labs:
            lab05(grader_tasks, seeds)
        if "06" in args.labs:
            lab06(grader_tasks, seeds)
