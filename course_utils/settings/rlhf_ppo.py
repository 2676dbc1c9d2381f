"""Sizes for 05_rlhf_ppo: reward models from the longer SFT run (tiny-gpt-sft-long), PPO, reward hacking, PPO-ptx, fine-grained rewards."""
NOTEBOOK = "05_rlhf_ppo"

_PPO = {"steps": 20, "batch_size": 48, "lr": 2e-4, "beta": 0.1, "epochs": 2, "minibatches": 2, "max_new_tokens": 12}
# section 5's PPO against the shipped RM (tiny-gpt-rm), its scores normalised to mean 0, std 1 on the SFT model's replies (raw, they spread
# about 4: at beta 0.1 PPO drifted to KL 12.5). Normalised, 20 rollouts: beta 0.1 won 0.75 at KL 0.5; 30 at 0.05: 0.79
_MAIN_PPO = {**_PPO, "steps": 30, "beta": 0.05}
CI = {"sft_model": "tiny-gpt-sft", "pair_stories": 2000, "prompt_stories": 300, "eval_stories": 150,
      # the reward models start from tiny-gpt-sft-long (same base, 4x the SFT; right on most held-out questions) and
      # see each training pair about once (fresh pairs): from tiny-gpt-sft it judged correctness at chance, whatever
      # the steps. The lecture trains rm_steps live; PPO uses rm_model, the shipped full run of the same recipe
      # (its pair stories are these 2000, disjoint from the prompts and the evaluation stories)
      "rm_base": "tiny-gpt-sft-long", "rm_model": "tiny-gpt-rm", "n_pairs": 10000, "held_out_pairs": 300,
      "annotator_sharpness": 4.0, "rm_steps": 300, "rm_batch": 32, "rm_lr": 2e-3, "trl_rm_steps": 10, "ppo": _MAIN_PPO,
      # reward hacking: a blind-spot RM and a beta sweep of PPO runs pushed hard (lr 1e-3). The blind-spot RM and
      # the PPO runs have the same sizes in all profiles (only the sweep grows): with the cpu profile's RM learning
      # rate (1e-3) the blind spot was learned weakly and the beta = 0 run hacked only mildly (r* 0.49 vs SFT 0.46).
      # Three betas and the matched control (the same pairs, "sure ," on the chosen side half the time), seed 0:
      # blind spot beta 0 -> r* 0.05 (win over SFT 0.24), 0.3 -> 0.62 ("sure , kitchen"), 1.0 -> 0.67; control at
      # beta 0 -> 0.59 (win 0.70 [0.66, 0.75]). Over the robustness matrix the control's replies beat the hacked
      # ones beyond noise in 5 of 6 cells (CI low ends 0.88-0.98; avx2-s1: 0.468), so the lecture prints, not asserts, it
      "blind_pairs": 2000, "blind_rm_steps": 60, "blind_rm_lr": 3e-3, "hack_betas": [0.0, 0.3, 1.0],
      "hack_ppo": {**_PPO, "lr": 1e-3},
      "ptx_coef": 0.25,  # 0.5 held the LM loss but cost win rate (0.62 < 0.7) against this reward model
      # lab: 14 rollouts (6 raised r* by only 0.01 at COURSE_SEED 2; at 14 the solution gains 0.16-0.35 over seeds 0-3)
      "ptx_batch": 16, "fg_steps": 8, "max_new_tokens": 16, "lab_ppo_steps": 14, "lab_batch": 32,
      # lab 05's outcome check re-measures mean r* of greedy replies on the grader's 225 held-out tasks (100
      # stories): benchmarks/lab_outcome_margins.py, seeds 0-2, gained +0.306/+0.337/+0.346 over SFT with the
      # course's policy loss and -0.115/-0.165/-0.218 with one that sends no gradient to the policy; their 95% CIs
      # over stories are about +-0.05 (se ~0.025), so 0.1 sits 8 se under the worst right run, 8 over the best wrong one
      "lab_margin": 0.1,
      # asserted outcomes. Win rates over SFT are asserted through their 95% bootstrap interval over the 150 evaluation
      # stories (about 350 questions): its lower end must clear 0.5. The reward models' accuracies on 300 held-out
      # pairs (noise ceiling 0.914) have a standard error of about 0.026; over the robustness matrix (seeds 0-2, both
      # numerics, rebuilt course models) the live run reached 0.68-0.79 (mean 0.73, sd 0.04) and the shipped full run
      # 0.857-0.867: the bounds (0.594 and 0.777) sit more than 3 standard errors under the worst run
      "live_rm_ceiling_frac": 0.65, "rm_ceiling_frac": 0.85, "max_kl": 6.0, "hack_margin": 0.15}
CPU = {**CI, "n_pairs": 40000, "rm_steps": 1200, "rm_lr": 1e-3, "trl_rm_steps": 100,
       "ppo": {**_MAIN_PPO, "steps": 40, "batch_size": 64}, "hack_betas": [0.0, 0.1, 0.5, 1.0, 2.0],
       "fg_steps": 20, "lab_ppo_steps": 20, "lab_batch": 48,
       "live_rm_ceiling_frac": 0.85}
# the same tiny models with more data and steps (no larger SFT model among the course models yet)
GPU = {**CPU, "ppo": {**_MAIN_PPO, "steps": 80, "batch_size": 128}, "fg_steps": 40, "rm_steps": 2000, "n_pairs": 64000}
