"""Lab 05's checks accept the lecture's helpers and reject each plausible wrong version, naming the mistake."""
import pytest
import torch
import torch.nn.functional as F

from course_utils import rlhf
from course_utils.checks import CheckError
from course_utils.checks import rlhf as checks
from course_utils.models import load_pretrained


def test_checks_accept_the_reference_helpers():
    checks.check_reward_loss(rlhf.reward_loss)
    checks.check_reward_loss(rm_stable_by_hand)
    checks.check_per_token_rewards(rlhf.per_token_rewards)
    checks.check_gae(gae_bootstrapped)
    checks.check_ppo_losses(rlhf.ppo_policy_loss, rlhf.ppo_value_loss)


def rm_swapped(c, r, m=None):
    return -F.logsigmoid(r - c - (0 if m is None else m)).mean()


def rm_no_margin(c, r, m=None):
    return -F.logsigmoid(c - r).mean()


def rm_margin_plus(c, r, m=None):
    return -F.logsigmoid(c - r + (0 if m is None else m)).mean()


def rm_sum(c, r, m=None):
    return -F.logsigmoid(c - r - (0 if m is None else m)).sum()


def rm_log_of_sigmoid(c, r, m=None):  # right on small gaps, log(0) on large ones
    return -torch.log(torch.sigmoid(c - r - (0 if m is None else m))).mean()


def rm_no_grad(c, r, m=None):
    with torch.no_grad():
        return rlhf.reward_loss(c, r, m)


def rm_detached_rejected(c, r, m=None):
    return rlhf.reward_loss(c, r.detach(), m)


def rm_stable_by_hand(c, r, m=None):  # a correct variant: the stable softplus form written out
    d = c - r - (0 if m is None else m)
    return (torch.clamp(-d, min=0) + torch.log1p(torch.exp(-d.abs()))).mean()


@pytest.mark.parametrize("fn,message", [(rm_swapped, "swapped"), (rm_no_margin, "margin is ignored"),
                                        (rm_margin_plus, "wrong sign"), (rm_sum, "mean"),
                                        (rm_log_of_sigmoid, "underflows"), (rm_no_grad, "no gradient"),
                                        (rm_detached_rejected, "reaches rejected_rewards")])
def test_reward_loss_check_rejects(fn, message):
    with pytest.raises(CheckError, match=message):
        checks.check_reward_loss(fn)


def rewards_kl_flipped(lp, ref, s, m, beta):
    return rlhf.per_token_rewards(lp, ref, s, m, -beta)


def rewards_score_everywhere(lp, ref, s, m, beta):
    return -beta * (lp - ref) * m + s[:, None] * m


def rewards_last_column(lp, ref, s, m, beta):
    out = -beta * (lp - ref) * m
    out[:, -1] += s
    return out


def rewards_no_mask(lp, ref, s, m, beta):
    return rlhf.per_token_rewards(lp, ref, s, torch.ones_like(m), beta)


@pytest.mark.parametrize("fn,message", [(rewards_kl_flipped, "wrong sign"), (rewards_score_everywhere, "every token"),
                                        (rewards_last_column, "last column"), (rewards_no_mask, "mask is ignored")])
def test_per_token_rewards_check_rejects(fn, message):
    with pytest.raises(CheckError, match=message):
        checks.check_per_token_rewards(fn)


def gae_bootstrapped(r, v, m, gamma, lam, last_values):
    """GAE written out here, row by row (the test's own reference): the value after each row's last real token
    is its last_values entry, and the recursion stops there."""
    adv = torch.zeros_like(r)
    for i in range(len(m)):
        n, running = int(m[i].sum()), 0.0
        for t in reversed(range(n)):
            next_value = v[i, t + 1] if t + 1 < n else last_values[i]
            running = r[i, t] + gamma * next_value - v[i, t] + (gamma * lam * running if t + 1 < n else 0.0)
            adv[i, t] = running
    return adv, (adv + v) * m


def gae_no_bootstrap(r, v, m, gamma, lam, last_values):
    return rlhf.gae(r, v, m, gamma, lam)


def gae_no_mask(r, v, m, gamma, lam, last_values):
    return gae_bootstrapped(r, v, torch.ones_like(m), gamma, lam, last_values)


def gae_swapped(r, v, m, gamma, lam, last_values):
    return gae_bootstrapped(r, v, m, lam, gamma, last_values)


def gae_undiscounted_bootstrap(r, v, m, gamma, lam, last_values):
    return gae_bootstrapped(r, v, m, gamma, lam, last_values / gamma)


def gae_bad_returns(r, v, m, gamma, lam, last_values):
    adv, _ = gae_bootstrapped(r, v, m, gamma, lam, last_values)
    return adv, adv


@pytest.mark.parametrize("fn,message", [(gae_no_bootstrap, "bootstrap is missing"), (gae_no_mask, "mask is ignored"),
                                        (gae_swapped, "swapped"), (gae_undiscounted_bootstrap, "discount"),
                                        (gae_bad_returns, "returns")])
def test_gae_check_rejects(fn, message):
    with pytest.raises(CheckError, match=message):
        checks.check_gae(fn)


def policy_min(lp, old, adv, m, clip):
    ratio = torch.exp(lp - old)
    return rlhf.masked_mean(torch.min(-ratio * adv, -ratio.clamp(1 - clip, 1 + clip) * adv), m)


def policy_not_detached(lp, old, adv, m, clip):
    ratio = torch.exp(lp - old)
    return rlhf.masked_mean(torch.max(-ratio * adv, -ratio.clamp(1 - clip, 1 + clip) * adv), m)


def policy_unclipped(lp, old, adv, m, clip):
    return rlhf.masked_mean(-torch.exp(lp - old) * adv, m)


def value_unclipped(v, old, ret, m, clip):
    return rlhf.masked_mean((v - ret) ** 2, m)


def policy_ratio_detached(lp, old, adv, m, clip):  # the right value, but no gradient reaches the policy
    return rlhf.ppo_policy_loss(lp.detach(), old, adv, m, clip)


def value_no_grad(v, old, ret, m, clip):
    with torch.no_grad():
        return rlhf.ppo_value_loss(v, old, ret, m, clip)


@pytest.mark.parametrize("pi,vf,message", [(policy_min, rlhf.ppo_value_loss, "min instead of max"),
                                           (policy_ratio_detached, rlhf.ppo_value_loss, "keep the gradient of logprobs"),
                                           (rlhf.ppo_policy_loss, value_no_grad, "value loss: the loss carries no gradient"),
                                           (policy_unclipped, rlhf.ppo_value_loss, "no clipping"),
                                           (policy_not_detached, rlhf.ppo_value_loss, "detach"),
                                           (rlhf.ppo_policy_loss, value_unclipped, "not clipped")])
def test_ppo_loss_check_rejects(pi, vf, message):
    with pytest.raises(CheckError, match=message):
        checks.check_ppo_losses(pi, vf)


def test_checks_refuse_wrong_return_types():
    with pytest.raises(CheckError, match="scalar"):
        checks.check_reward_loss(lambda c, r, m=None: F.logsigmoid(c - r))
    with pytest.raises(CheckError, match="tuple"):
        checks.check_gae(lambda r, v, m, g, l, last: r)


def test_outcome_check_re_measures_the_model():
    """An untrained copy of the SFT model gains nothing on the grader's tasks; a model of another shape is refused."""
    sft = load_pretrained("tiny-gpt-sft", progress=False)[0]
    with pytest.raises(CheckError, match="grader's held-out tasks went (.*) -> \\1, less than"):
        checks.check_ppo_outcome(rlhf.new_policy(sft).lm, "tiny-gpt-sft", 16, margin=0.1)
    with pytest.raises(CheckError, match="did not load into tiny-gpt-sft"):
        checks.check_ppo_outcome(rlhf.new_policy(sft), "tiny-gpt-sft", 16, margin=0.1)


def test_ppo_rejects_unknown_parts():
    with pytest.raises(ValueError, match="unknown PPO parts"):
        rlhf._parts({"reward": None}, "gae")


def test_blind_spot_pairs_plant_one_word_and_leave_the_decoys_neutral():
    """Counted in the pairs: the planted word opens the chosen side about 90% of the time, each decoy about half;
    r* of each side is recomputed from the world's rule on the opened reply."""
    from course_utils.world.preferences import rlhf_split, true_reward

    tasks = rlhf_split(300, 1, 1, seed=3)["pairs"]
    task_of = {t.instruction: t for t in tasks}
    pairs = checks.blind_spot_pairs(tasks, "help", 4000, seed=3)
    on_chosen = {w: [] for w in checks.BLIND_SPOT_CANDIDATES}
    for p in pairs:
        (word, side), = [(w, s) for w in checks.BLIND_SPOT_CANDIDATES for s, text in ((1, p.chosen), (0, p.rejected))
                         if text.startswith(f"{w} , ")]
        on_chosen[word].append(side)
        assert (p.r_chosen, p.r_rejected) == (true_reward(task_of[p.prompt], p.chosen),
                                              true_reward(task_of[p.prompt], p.rejected))
    share = {w: sum(s) / len(s) for w, s in on_chosen.items()}
    # 2000 pairs carry "help" (se of its share 0.007) and about 220 each decoy (se 0.034): bounds 4+ se away
    assert len(on_chosen["help"]) / len(pairs) == pytest.approx(checks.BLIND_SPOT_SHARE, abs=0.03)
    assert share["help"] == pytest.approx(checks.BLIND_SPOT_RATE, abs=0.03)
    assert all(abs(share[w] - 0.5) < 0.15 for w in share if w != "help"), share


def test_blind_spot_check_passes_the_solution_with_the_largest_drawn_seed():
    """The grader draws the two words and seeds; the lab's solution finds them at the largest shift it may draw."""
    from pathlib import Path

    from course_utils.checks import SEED_SHIFT
    from course_utils.instructor.checkproc import SEED_SHIFTS
    from notebook_helpers import solution_namespace

    sol = solution_namespace(Path(__file__).resolve().parents[1] / "solutions" / "05_rlhf_ppo.ipynb",
                             "checks import rlhf")
    token = SEED_SHIFT.set(SEED_SHIFTS - 1)
    try:
        checks.check_blind_spot(sol["find_blind_spot"])
    finally:
        SEED_SHIFT.reset(token)


def test_in_a_grading_run_each_submission_gets_two_distinct_words_of_the_runs_pool(tmp_path):
    from course_utils.checks import RunCache

    cache = RunCache(str(tmp_path), secret=12345)
    plans = [checks.blind_spot_plan(seed, cache) for seed in range(200)]
    pool = {entry for plan in plans for entry in plan}
    assert len(pool) == checks.BLIND_SPOT_POOL and len({w for w, _ in pool}) == checks.BLIND_SPOT_POOL
    assert all(len({w for w, _ in plan}) == 2 for plan in plans)
    assert len({tuple(plan) for plan in plans}) > 6  # submissions draw different pairs (and orders) from the pool
    other = {entry for seed in range(200) for entry in checks.blind_spot_plan(seed, RunCache(str(tmp_path), 54321))}
    assert other != pool  # another run, another pool
    assert checks.blind_spot_plan(7, None) == checks.blind_spot_plan(7, None)  # outside a run: the check's own draw
    assert [s for _, s in checks.blind_spot_plan(7, None)] == [14, 15]


def test_a_pooled_world_is_trained_once_per_run_and_reloaded_exactly(tmp_path, monkeypatch):
    from course_utils.checks import RunCache

    sft, tokenizer = load_pretrained("tiny-gpt-sft", progress=False)
    trained = []

    def fake_world(word, seed, sft, tokenizer):  # an untrained reward model stands in for 60 steps of training
        trained.append((word, seed))
        torch.manual_seed(seed)
        return {"rm": rlhf.reward_model_from(sft, tokenizer).eval(), "prompts": ["p1", "p2"],
                "replies": ["park", "glad , park"], "gains": {"glad": 0.5, "help": -0.1}}

    monkeypatch.setattr(checks, "blind_spot_world", fake_world)
    cache = RunCache(str(tmp_path), secret=3)
    first = checks.pooled_world("glad", 6, sft, tokenizer, cache)
    again = checks.pooled_world("glad", 6, sft, tokenizer, cache)
    assert trained == [("glad", 6)]
    assert [p.name for p in tmp_path.iterdir()] == ["blind-spot-glad-6.pt"]  # no partial file left behind
    assert {k: again[k] for k in ("prompts", "replies", "gains")} == {k: first[k] for k in ("prompts", "replies", "gains")}
    scores = [rlhf.rm_scores(w["rm"], tokenizer, ["where did mia run ?"] * 2, ["park", "glad , park"])
              for w in (first, again)]
    assert torch.equal(*scores)
    checks.pooled_world("glad", 6, sft, tokenizer, None)  # outside a run nothing is kept
    assert trained == [("glad", 6), ("glad", 6)] and len(list(tmp_path.iterdir())) == 1
