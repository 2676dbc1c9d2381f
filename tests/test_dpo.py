"""The DPO helpers: TRL's batch and loss, the toy closed form, the response KL and a short DPO run."""
import copy

import pytest
import torch

from course_utils.checks.dpo import trl_dpo_batch
from course_utils.dpo import (DPOObjective, bradley_terry, collate_pairs, dpo_loss, encode_pair, fit_toy_dpo,
                              implicit_reward_accuracy, ipo_loss, kl_objective, optimal_policy, response_kl, train_dpo,
                              with_reference)
from course_utils.models import load_pretrained
from course_utils.models.recipes import RECIPES
from course_utils.settings import settings_for
from course_utils.world.instructions import task_split
from course_utils.world.preferences import rlhf_split, sample_pairs

PAIRS = sample_pairs(task_split(40, "train", seed=5), 6, seed=3)  # the pairs trl_dpo_batch uses


@pytest.fixture(scope="module")
def tiny_gpt():
    return load_pretrained("tiny-gpt", progress=False)


def test_our_batch_and_loss_are_trls():
    data = trl_dpo_batch()
    trainer, batch = data["trainer"], data["batch"]
    tok = trainer.processing_class
    ours = collate_pairs([encode_pair(tok, p.prompt, p.chosen, p.rejected) for p in PAIRS], tok.pad_token_id)
    for key in ("input_ids", "attention_mask", "completion_mask"):
        assert torch.equal(ours[key], batch[key]), key
    rc, rr = data["ref_logps"].chunk(2)
    trainer.beta = 0.1
    with torch.no_grad():
        expected = trainer.compute_loss(trainer.model, dict(batch))
        got = DPOObjective(0.1)(trainer.model, {**ours, "ref_chosen_logps": rc, "ref_rejected_logps": rr})
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_dpo_loss_at_the_reference_is_log_2():
    logps = torch.tensor([-3.0, -5.0])
    loss, chosen, rejected = dpo_loss(logps, logps + 1, logps, logps + 1, beta=0.1)
    assert loss.item() == pytest.approx(torch.log(torch.tensor(2.0)).item())
    assert chosen.abs().max() == 0 and rejected.abs().max() == 0
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(logps, logps, logps, logps, beta=0.0)


@pytest.mark.parametrize("beta", [0.05, 0.5, 3.0])
def test_toy_dpo_optimum_is_the_closed_form(beta):
    generator = torch.Generator().manual_seed(1)
    ref = torch.softmax(torch.randn(3, 5, generator=generator, dtype=torch.float64), -1)
    rewards = torch.rand(3, 5, generator=generator, dtype=torch.float64)
    star = optimal_policy(ref, rewards, beta)
    torch.testing.assert_close(star.sum(-1), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(fit_toy_dpo(ref, bradley_terry(rewards), beta), star, atol=1e-5, rtol=0)
    best = kl_objective(star, ref, rewards, beta)  # the maximum is beta * log Z(x)
    torch.testing.assert_close(best, beta * torch.logsumexp(ref.log() + rewards / beta, -1))
    for _ in range(5):  # and no other policy does better
        other = torch.softmax(star.log() + 0.3 * torch.randn(3, 5, generator=generator, dtype=torch.float64), -1)
        assert (kl_objective(other, ref, rewards, beta) < best).all()


def test_optimal_policy_limits():
    ref = torch.tensor([[0.7, 0.2, 0.1]], dtype=torch.float64)
    rewards = torch.tensor([[0.0, 1.0, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(optimal_policy(ref, rewards, 1e4), ref, atol=1e-3, rtol=0)  # beta large: stay at ref
    assert optimal_policy(ref, rewards, 1e-3).argmax().item() == 1  # beta small: the best response


def test_response_kl_is_zero_at_the_reference_and_grows(tiny_gpt):
    model, tok = tiny_gpt
    prompts = [t.instruction for t in task_split(4, "eval", seed=2)][:6]
    ref = copy.deepcopy(model)
    assert response_kl(model, ref, tok, prompts, max_new_tokens=6) == pytest.approx(0.0, abs=1e-5)
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(0.05 * torch.randn_like(p))
    state = torch.random.get_rng_state()
    assert response_kl(moved, ref, tok, prompts, max_new_tokens=6) > 0.01
    assert torch.equal(state, torch.random.get_rng_state())  # sampling leaves the caller's generator alone


def test_a_short_dpo_run_learns_the_training_pairs(tiny_gpt):
    model, tok = tiny_gpt
    policy = copy.deepcopy(model)
    examples = [encode_pair(tok, p.prompt, p.chosen, p.rejected) for p in PAIRS]
    with pytest.raises(ValueError, match="with_reference"):
        train_dpo(policy, examples, tok.pad_token_id, beta=0.1, steps=1, batch_size=2, lr=1e-3)
    examples = with_reference(examples, model, tok.pad_token_id)
    assert implicit_reward_accuracy(policy, examples, tok.pad_token_id) == 0.0  # policy == reference: no margin
    objective = DPOObjective(0.1)
    history = train_dpo(policy, examples, tok.pad_token_id, beta=0.1, steps=15, batch_size=6, lr=3e-3, progress=False,
                        loss_fn=objective)
    assert history.losses[-1] < history.losses[0]
    assert len(objective.log_ratios) == 15 and max(map(abs, objective.log_ratios[0])) < 1e-4  # step 1: policy = ref
    chosen, rejected = objective.log_ratios[-1]
    assert chosen - rejected > 0  # the margin the loss widens
    assert implicit_reward_accuracy(policy, examples, tok.pad_token_id) == 1.0


def test_the_gpu_path_loads_a_checkpoint_folder(tmp_path, tiny_gpt):
    """The gpu profile names a hub instruct model; a model saved to a folder goes through the same code path."""
    model, tok = tiny_gpt
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, tok2 = load_pretrained(str(tmp_path))
    examples = with_reference([encode_pair(tok2, p.prompt, p.chosen, p.rejected) for p in PAIRS[:2]], again,
                              tok2.pad_token_id)
    train_dpo(copy.deepcopy(again), examples, tok2.pad_token_id, beta=0.1, steps=1, batch_size=2, lr=1e-4,
              progress=False)


def test_encode_pair_rejects_messages():
    with pytest.raises(TypeError, match="strings"):
        encode_pair(None, [{"role": "user", "content": "hi"}], "a", "b")
    with pytest.raises(ValueError, match="empty"):
        collate_pairs([], 0)


def test_ipo_is_trls_ipo_loss():
    data = trl_dpo_batch()
    trainer, batch = data["trainer"], data["batch"]
    rc, rr = data["ref_logps"].chunk(2)
    loss_types, trainer.loss_types = trainer.loss_types, ["ipo"]
    try:
        for beta in (0.1, 0.5, 2.0):
            trainer.beta = beta
            with torch.no_grad():
                expected = trainer.compute_loss(trainer.model, dict(batch))
                got = DPOObjective(beta, loss_fn=ipo_loss, per_token=True)(
                    trainer.model, {**batch, "ref_chosen_logps": rc, "ref_rejected_logps": rr})
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    finally:
        trainer.loss_types, trainer.beta = loss_types, 0.1


@pytest.mark.parametrize("profile", ["ci", "cpu"])
def test_lecture_ppo_prompts_are_unseen_by_module_05s_reward_model(profile):
    """Section 6's PPO prompts come from stories disjoint from tiny-gpt-rm's pairs and from the evaluation stories."""
    s = settings_for("06_dpo", profile)
    data = RECIPES[s["rm_model"]]["data"]
    rm_stories = {t.story for t in rlhf_split(data["pair_stories"], data["prompt_stories"], 1, seed=data["seed"])["pairs"]}
    tasks = rlhf_split(s["ppo_pair_stories"], s["prompt_stories"], 1)["prompts"]
    prompts = {t.story for t in tasks}
    lecture = rlhf_split(s["pair_stories"], s["prompt_stories"], s["eval_stories"])
    assert len(tasks) >= s["norm_prompts"] and not prompts & rm_stories
    assert not prompts & {t.story for t in lecture["eval"]}
    assert s["ppo"] == settings_for("05_rlhf_ppo", profile)["ppo"]  # module 05's PPO, not a weaker copy


def test_label_pair_is_sample_pairs_labelling():
    """label_pair (used for on-policy pairs in lecture 06) labels as sample_pairs does, and drops what r* ties."""
    import math
    import random

    from course_utils.world.preferences import candidate_responses, label_pair, true_reward

    task = rlhf_split(20, 1, 1)["pairs"][0]
    assert label_pair(task, task.answer, task.answer, 4.0, random.Random(0)) is None
    rng = random.Random(7)
    a, b = rng.sample(candidate_responses(task, rng), 2)
    while math.isclose(true_reward(task, a), true_reward(task, b)):
        a, b = rng.sample(candidate_responses(task, rng), 2)
    gap = abs(true_reward(task, a) - true_reward(task, b))
    for seed in range(50):
        pair = label_pair(task, a, b, 4.0, random.Random(seed))
        flipped = random.Random(seed).random() < 1 / (1 + math.exp(4.0 * gap))
        assert pair.flipped == flipped and (pair.r_chosen < pair.r_rejected) == flipped
        assert {pair.chosen, pair.rejected} == {a, b} and pair.prompt == task.instruction
    # sample_pairs draws its labels through label_pair: the same stream of pairs as before the refactor
    pairs = sample_pairs(rlhf_split(50, 1, 1)["pairs"], 200, seed=2)
    assert all(not math.isclose(p.r_chosen, p.r_rejected) for p in pairs)
