"""Module 09's helpers against independent references: numpy advantages, TRL's GRPOTrainer loss on one batch,
pass@k by enumeration, the world's scorer; and the GRPO loop on the course's SFT model."""
import copy
import math

import numpy as np
import pytest
import torch

from course_utils import grpo
from course_utils.checks import grpo as oracle
from course_utils.world.instructions import FAMILIES, score, task_split


def test_group_advantages_match_numpy():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.3, -2.0, 5.0, 0.1])
    grouped = rewards.numpy().reshape(-1, 4)
    centred = grouped - grouped.mean(1, keepdims=True)
    scaled = centred / (grouped.std(1, ddof=1, keepdims=True) + 1e-4)
    np.testing.assert_allclose(grpo.group_advantages(rewards, 4).numpy(), scaled.reshape(-1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grpo.group_advantages(rewards, 4, scale=False).numpy(), centred.reshape(-1), atol=1e-6)
    assert torch.all(grpo.group_advantages(rewards, 4)[4:8] == 0)  # an all-right group carries no signal


def test_rloo_is_a_rescaled_group_mean_baseline():
    rewards = torch.randn(12, generator=torch.Generator().manual_seed(0))
    by_hand = torch.stack([rewards[i] - torch.cat([rewards[(i // 4) * 4:i], rewards[i + 1:(i // 4 + 1) * 4]]).mean()
                           for i in range(12)])
    torch.testing.assert_close(grpo.rloo_advantages(rewards, 4), by_hand)
    torch.testing.assert_close(grpo.rloo_advantages(rewards, 4), grpo.group_advantages(rewards, 4, scale=False) * 4 / 3)


@pytest.mark.parametrize("bad", [torch.zeros(2, 4), torch.zeros(10)])
def test_advantages_reject_bad_shapes(bad):
    with pytest.raises(ValueError, match="group_size"):
        grpo.group_advantages(bad, 4)


@pytest.mark.parametrize("n", [1, 3, 6, 9])
def test_pass_at_k_equals_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert math.isclose(grpo.pass_at_k(n, c, k), oracle.brute_pass_at_k(n, c, k), abs_tol=1e-12)


def test_pass_at_k_is_stable_for_large_n_and_rejects_bad_counts():
    assert math.isclose(grpo.pass_at_k(5000, 7, 2500), 1 - math.comb(4993, 2500) / math.comb(5000, 2500))
    with pytest.raises(ValueError, match="k <= n"):
        grpo.pass_at_k(4, 5, 1)


def test_verify_agrees_with_the_world_scorer():
    for task, response in oracle.verifier_cases(n_tasks=40, seed=3):
        assert grpo.verify(response, task.answer, FAMILIES[task.family].choices) == score(task, response), response
    with pytest.raises(TypeError, match="string"):
        grpo.verify(None, "park", ("park",))


def test_the_lax_check_pays_a_list_of_every_choice_the_strict_verifier_refuses():
    task = next(t for t in task_split(20, "eval", seed=0) if t.family == "where")
    listing = " , ".join(FAMILIES[task.family].choices)
    assert grpo.lax_reward([task] * 3, [task.answer, listing, "i do not know"]).tolist() == [1.0, 1.0, 0.0]
    assert grpo.correctness_reward([task] * 3, [task.answer, listing, "i do not know"]).tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("level, loss_type", [("token", "bnpo"), ("sequence", "grpo")])
@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_grpo_loss_equals_trl_grpo_trainer(level, loss_type, beta):
    inputs = oracle.trl_grpo_batch()["inputs"]
    want, logps = oracle.trl_loss(loss_type, beta)
    got = grpo.grpo_loss(logps, inputs["old_per_token_logps"], inputs["advantages"], inputs["completion_mask"],
                         clip=0.2, beta=beta, ref_logprobs=inputs["ref_per_token_logps"], level=level)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_grpo_loss_needs_a_reference_for_kl_and_a_known_level():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo.grpo_loss(x, x, torch.zeros(2), torch.ones(2, 3), beta=0.1)
    with pytest.raises(ValueError, match="level"):
        grpo.grpo_loss(x, x, torch.zeros(2), torch.ones(2, 3), level="batch")


def test_kl_k3_is_nonnegative_and_unbiased():
    g = torch.Generator().manual_seed(0)
    p, q = torch.softmax(torch.randn(5, generator=g), 0), torch.softmax(torch.randn(5, generator=g), 0)
    idx = torch.multinomial(p, 200_000, replacement=True, generator=g)
    estimate = grpo.kl_k3(p.log()[idx], q.log()[idx])
    assert estimate.min() >= 0
    assert abs(estimate.mean().item() - (p * (p / q).log()).sum().item()) < 0.01


@pytest.fixture(scope="module")
def sft():
    from course_utils.models import load_pretrained
    from course_utils.sft import quiet_hf

    quiet_hf()
    return load_pretrained("tiny-gpt-sft", progress=False)


def test_sample_groups_puts_each_group_in_consecutive_rows(sft):
    model, tok = sft
    tasks = task_split(3, "eval", seed=0)[:3]
    ro = grpo.sample_groups(model, tok, tasks, 4, 6)
    assert [t.instruction for t in ro.tasks] == [t.instruction for t in tasks for _ in range(4)]
    assert len(ro.texts) == 12 and ro.mask.shape[0] == 12


def test_grpo_loop_trains_and_records(sft):
    model, tok = sft
    policy = copy.deepcopy(model)
    tasks = task_split(30, "train", seed=1)
    cfg = grpo.GRPOConfig(group_size=4, prompts=4, steps=2, lr=1e-3, beta=0.05, max_new_tokens=6)
    history = grpo.grpo(policy, model, grpo.r_star_reward, tok, tasks, cfg, progress=False)  # r* varies in a group
    assert len(history.reward) == len(history.kl) == 2 and history.samples == 32
    assert any((p - q).abs().max() > 0 for p, q in zip(policy.parameters(), model.parameters()))
    with pytest.raises(ValueError, match="unknown GRPO parts"):
        grpo.grpo(policy, model, grpo.correctness_reward, tok, tasks, cfg, parts={"value": None}, progress=False)


def test_the_gpu_path_loads_a_checkpoint_folder(tmp_path, sft):
    """The gpu profile names a hub instruct model; a model saved to a folder goes through the same code path."""
    from course_utils.models import load_pretrained
    from course_utils.settings import settings_for

    assert "/" in settings_for("09_rlvr_grpo", "gpu")["sft_model"]  # a hub id, loaded by from_pretrained
    model, tok = sft
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, tok2 = load_pretrained(str(tmp_path), progress=False)
    tasks = task_split(10, "train", seed=2)
    cfg = grpo.GRPOConfig(group_size=2, prompts=2, steps=1, max_new_tokens=4)
    grpo.grpo(copy.deepcopy(again), again, grpo.correctness_reward, tok2, tasks, cfg, progress=False)
    assert set(grpo.pass_curve(again, tok2, tasks[:3], 2, 4)) == {1, 2}


def test_expert_iteration_trains_on_verified_samples(sft):
    model, tok = sft
    tasks = task_split(8, "train", seed=4)
    kept = grpo.verified_samples(model, tok, tasks, 4, 8)
    assert kept and all(grpo.task_verifier(t, x) for t, x in kept)
    student = copy.deepcopy(model)
    grpo.expert_iteration(student, tok, kept, steps=2, batch_size=4, lr=1e-3, progress=False)
    assert any((p - q).abs().max() > 0 for p, q in zip(student.parameters(), model.parameters()))
    with pytest.raises(ValueError, match="no verified samples"):
        grpo.expert_iteration(student, tok, [], steps=1, batch_size=4, lr=1e-3)


def test_distinct_share():
    assert grpo.distinct_share(["a", "a", "b", "c"], 2) == 0.75


def test_reply_stats_counts_what_each_verifier_accepts(sft, monkeypatch):
    model, tok = sft
    tasks = [t for t in task_split(20, "eval", seed=0) if t.family == "where"][:2]
    listing = " , ".join(FAMILIES["where"].choices)
    fake = type("Rollout", (), {"tasks": [tasks[0], tasks[0], tasks[1], tasks[1]],
                                "texts": [tasks[0].answer, listing, "no idea here", tasks[1].answer + " ."]})
    monkeypatch.setattr(grpo, "sample_groups", lambda *a, **k: fake)
    stats = grpo.reply_stats(model, tok, tasks, 2, 6)
    assert stats["strict"] == 0.5 and stats["lax only"] == 0.25
    assert stats["words"] == (1 + len(listing.split()) + 3 + 2) / 4
