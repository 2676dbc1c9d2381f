"""course_utils.rlhf: the lecture's reward loss, per-token rewards, GAE and PPO losses agree with TRL and torchrl."""
import copy

import pytest
import torch
from scipy.stats import binomtest

from course_utils.checks import rlhf as checks
from course_utils import rlhf
from course_utils.world.preferences import rlhf_split, sample_pairs, true_reward
from course_utils.models import load_pretrained
from course_utils.sft import respond


def test_reward_loss_matches_trl_reward_trainer():
    for case in checks.trl_reward_losses(seed=1):
        got = rlhf.reward_loss(case["chosen"], case["rejected"], case["margin"])
        torch.testing.assert_close(got, case["loss"], atol=1e-5, rtol=1e-4)


def test_per_token_rewards_match_the_reference():
    for seed in range(4):
        b = checks.ragged_batch(seed)
        got = rlhf.per_token_rewards(b["logprobs"], b["ref_logprobs"], b["scores"], b["mask"], 0.3)
        torch.testing.assert_close(got, checks.reference_rewards(b["logprobs"], b["ref_logprobs"], b["scores"],
                                                                 b["mask"], 0.3))
        assert (got[b["mask"] == 0] == 0).all()


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.6), (0.99, 1.0)])
def test_gae_matches_torchrl(gamma, lam):
    for seed in range(3):
        b = checks.ragged_batch(seed, batch=8, width=12)
        adv, ret = rlhf.gae(b["rewards"], b["values"], b["mask"], gamma, lam)
        want_adv, want_ret = checks.torchrl_gae(b["rewards"], b["values"], b["mask"], gamma, lam)
        torch.testing.assert_close(adv, want_adv)
        torch.testing.assert_close(ret, want_ret)


def test_ppo_losses_match_torchrl_far_outside_the_clip_range():
    for seed in range(3):
        b = checks.ppo_batch(seed)
        ratio = (b["logprobs"] - b["old_logprobs"]).exp()[b["mask"].bool()]
        assert (ratio > 2).any() and (ratio < 0.5).any()
        want_pi, want_v = checks.torchrl_ppo_losses(b["logprobs"], b["old_logprobs"], b["advantages"], b["values"],
                                                    b["old_values"], b["returns"], b["mask"], 0.2, 0.3)
        pi = rlhf.ppo_policy_loss(b["logprobs"], b["old_logprobs"], b["advantages"], b["mask"], 0.2)
        torch.testing.assert_close(pi, want_pi)
        v = rlhf.ppo_value_loss(b["values"], b["old_values"], b["returns"], b["mask"], 0.3)
        torch.testing.assert_close(v, want_v)


def test_whiten_and_masked_mean():
    x = torch.tensor([[1.0, 3.0, 100.0], [5.0, 100.0, 100.0]])
    m = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert rlhf.masked_mean(x, m).item() == pytest.approx(3.0)
    w = rlhf.whiten(x, m)
    assert rlhf.masked_mean(w, m).abs().item() < 1e-6 and (w[m == 0] == 0).all()


@pytest.fixture(scope="module")
def sft():
    return load_pretrained("tiny-gpt-sft", progress=False)


def test_rollout_masks_and_logprobs_line_up(sft):
    model, tok = sft
    policy = rlhf.new_policy(model)
    tasks = rlhf_split(5, 5, 5)["prompts"][:6]
    torch.manual_seed(0)
    ro = rlhf.rollout(policy, tok, tasks, max_new_tokens=10)
    assert ro.mask.shape == (6, ro.input_ids.shape[1] - ro.prompt_width)
    lengths = ro.mask.sum(-1)
    assert ((ro.mask.cumsum(-1) <= lengths[:, None]) | (ro.mask == 0)).all()  # 1s then 0s
    data = rlhf.score(policy, model, rlhf.TrueReward(), ro)
    torch.testing.assert_close(data["logprobs"], data["ref_logprobs"])  # the new policy IS the reference
    assert (data["values"] == 0).all()  # the value head starts at zero
    row = 0
    n = int(lengths[row])
    ids = tok.apply_chat_template(tasks[row].messages(""), tokenize=False).split("<|assistant|>")[0]
    alone = tok(ids + "<|assistant|>", add_special_tokens=False, return_tensors="pt")["input_ids"]
    full = torch.cat([alone, ro.input_ids[row:row + 1, ro.prompt_width:ro.prompt_width + n]], 1)
    with torch.no_grad():
        lp = rlhf.response_logprobs(model(full).logits, full, alone.shape[1])
    torch.testing.assert_close(lp[0], data["logprobs"][row, :n], atol=1e-4, rtol=1e-4)


def test_reward_model_scores_pairs_and_learns(sft):
    model, tok = sft
    rm = rlhf.reward_model_from(model, tok)
    pairs = sample_pairs(rlhf_split(40, 5, 5)["pairs"], 16, seed=0)
    batch = rlhf.pair_batch(tok, pairs)
    assert batch["input_ids"].shape[0] == 32
    scores = rlhf.rm_scores(rm, tok, [p.prompt for p in pairs], [p.chosen for p in pairs])
    with torch.no_grad():
        torch.testing.assert_close(scores, rm(**batch).logits.squeeze(-1)[:16], atol=1e-5, rtol=1e-4)
    acc = rlhf.pair_accuracy(rm, tok, pairs)
    assert set(acc) == {"labels", "ceiling", "r*"} and 0 <= acc["labels"] <= 1


def test_train_reward_model_learns_the_training_pairs(sft):
    model, tok = sft
    pairs = sample_pairs(rlhf_split(40, 5, 5)["pairs"], 64, seed=0)
    before = rlhf.pair_accuracy(rlhf.reward_model_from(model, tok), tok, pairs)["labels"]
    rm = rlhf.train_reward_model(model, tok, pairs, steps=30, batch_size=16, lr=3e-3, progress=False)
    after = rlhf.pair_accuracy(rm, tok, pairs)["labels"]
    # learned = better than chance beyond doubt (one-sided binomial test on the 64 pairs) and better than before
    assert not rm.training and after > before
    assert binomtest(round(after * len(pairs)), len(pairs), 0.5, alternative="greater").pvalue < 1e-3, after
    again = rlhf.train_reward_model(model, tok, pairs, steps=30, batch_size=16, lr=3e-3, progress=False)
    torch.testing.assert_close(rlhf.rm_scores(again, tok, ["a"], ["b"]), rlhf.rm_scores(rm, tok, ["a"], ["b"]))


def test_the_reward_model_recipe_trains_and_loads_as_a_sequence_classifier(sft, tmp_path):
    """The shipped RM's recipe at toy size: trained by train_reward_model, saved, loaded back with its scalar head."""
    from course_utils.models import build, recipes

    small = {**recipes.RECIPES["tiny-gpt-rm"], "base": "tiny-gpt-sft",
             "data": {**recipes.RECIPES["tiny-gpt-rm"]["data"], "pair_stories": 40, "prompt_stories": 5, "n_pairs": 64},
             "train": {**recipes.RECIPES["tiny-gpt-rm"]["train"], "steps": 3, "batch_size": 8}}
    rm, tok = build.train_tiny_gpt_rm(small, progress=False)
    rm.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, _ = load_pretrained(str(tmp_path), progress=False)
    assert type(loaded).__name__ == "GPT2ForSequenceClassification" and loaded.config.num_labels == 1
    prompt, reply = ["who ran ?"], ["tom"]
    torch.testing.assert_close(rlhf.rm_scores(loaded, tok, prompt, reply), rlhf.rm_scores(rm, tok, prompt, reply))


def test_normalized_rm_reward_gives_the_reference_replies_mean_0_and_std_1(sft):
    from types import SimpleNamespace

    model, tok = sft
    torch.manual_seed(0)
    rm = rlhf.reward_model_from(model, tok)
    tasks = rlhf_split(10, 5, 5)["pairs"][:12]
    prompts, replies = [t.instruction for t in tasks], [t.answer for t in tasks]
    reward = rlhf.RMReward.normalized(rm, tok, prompts, replies)
    got = reward(SimpleNamespace(tasks=tasks, texts=replies))
    torch.testing.assert_close(got, (rlhf.rm_scores(rm, tok, prompts, replies) - reward.mean) / reward.std)
    assert abs(got.mean().item()) < 1e-5 and abs(got.std().item() - 1) < 1e-5
    with pytest.raises(ValueError, match="std must be positive"):
        rlhf.RMReward(rm, tok, std=0.0)


def test_best_of_n_keeps_the_best_of_the_same_samples(sft):
    model, tok = sft
    policy = rlhf.new_policy(model)
    tasks = rlhf_split(5, 5, 8)["eval"][:8]
    true_score = lambda ts, replies: [true_reward(t, y) for t, y in zip(ts, replies)]
    torch.manual_seed(0)
    first = rlhf.rollout(policy, tok, tasks, max_new_tokens=10).texts  # the first of the n samples below
    torch.manual_seed(0)
    best = rlhf.best_of_n(policy, tok, tasks, 3, true_score, max_new_tokens=10)
    assert len(best) == len(tasks)
    assert all(true_reward(t, b) >= true_reward(t, f) for t, b, f in zip(tasks, best, first))
    with pytest.raises(ValueError, match="at least 1"):
        rlhf.best_of_n(policy, tok, tasks, 0, true_score, max_new_tokens=10)


@pytest.fixture(scope="module")
def norm_prompts():
    return [t.instruction for t in rlhf_split(2000, 300, 1)["prompts"][:24]]


def test_ppo_reward_is_module_05s_reward_model_normalised_on_sft_replies(sft, norm_prompts):
    model, tok = sft
    reward = rlhf.ppo_reward(model, tok, norm_prompts, 8, "tiny-gpt-rm")
    assert reward.rm.config.num_labels == 1 and reward.rm.config.name_or_path.endswith("tiny-gpt-rm")
    scaled = (rlhf.rm_scores(reward.rm, tok, norm_prompts, respond(model, tok, norm_prompts, 8)) - reward.mean) / reward.std
    assert abs(scaled.mean().item()) < 1e-5 and abs(scaled.std().item() - 1) < 1e-5
    loaded = rlhf.load_reward_model("tiny-gpt-rm", tok, model.device)  # lecture 05: loaded once, then normalised
    assert not any(m.p for m in loaded.modules() if isinstance(m, torch.nn.Dropout))
    again = rlhf.ppo_reward(model, tok, norm_prompts, 8, loaded)
    assert again.rm is loaded and (again.mean, again.std) == (reward.mean, reward.std)


def test_ppo_reward_trains_one_for_a_policy_from_a_checkpoint_folder(tmp_path, sft, norm_prompts):
    """Lecture 06's gpu path (its policy's tokens are not the course's), on a locally saved course model."""
    model, tok = sft
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    policy, tok2 = load_pretrained(str(tmp_path))
    pairs = sample_pairs(rlhf_split(10, 1, 1)["pairs"], 6, seed=3)
    reward = rlhf.ppo_reward(policy, tok2, norm_prompts, 8, rm_model=None, pairs=pairs, steps=2, batch_size=2,
                             lr=1e-4)
    assert reward.rm.config.num_labels == 1 and reward.std > 0
    assert reward.rm.config.name_or_path == str(tmp_path)  # trained from the policy's own checkpoint


def test_ppo_reward_says_what_to_do_with_bad_input(sft, norm_prompts):
    model, tok = sft
    other = copy.deepcopy(tok)
    other.add_tokens(["a-token-the-reward-model-never-saw"])
    with pytest.raises(ValueError, match="another vocabulary"):
        rlhf.ppo_reward(model, other, norm_prompts, 8, "tiny-gpt-rm")
    with pytest.raises(ValueError, match="another vocabulary"):
        rlhf.load_reward_model("tiny-gpt-rm", other, model.device)
    with pytest.raises(ValueError, match="pass pairs"):
        rlhf.ppo_reward(model, tok, norm_prompts, 8, rm_model=None)
