"""Sizes for 05_rlhf_ppo: reward models from the zoo's longer SFT run, PPO, reward hacking, PPO-ptx, fine-grained rewards."""
NOTEBOOK = "05_rlhf_ppo"

# beta 0.1: at 0.05 the policy drifted into text the reward model overrates ("i think it isit isit")
_PPO = {"steps": 20, "batch_size": 48, "lr": 2e-4, "beta": 0.1, "epochs": 2, "minibatches": 2, "max_new_tokens": 12}
CI = {"sft_model": "tiny-gpt-sft", "pair_stories": 600, "prompt_stories": 300, "eval_stories": 60,
      # the reward model starts from tiny-gpt-sft-long (same base, 4x the SFT; right on most held-out questions) and
      # sees each training pair once (fresh pairs): from tiny-gpt-sft it judged correctness at chance, whatever the steps
      "rm_base": "tiny-gpt-sft-long", "n_pairs": 10000, "held_out_pairs": 300, "bt_beta": 4.0, "rm_steps": 300,
      "rm_batch": 32, "rm_lr": 2e-3, "trl_rm_steps": 10, "ppo": _PPO,
      # reward hacking: a blind-spot RM and a beta sweep of PPO runs pushed hard (lr 1e-3). The blind-spot RM and
      # the PPO runs have the same sizes in all profiles (only the sweep grows): with the cpu profile's RM learning
      # rate (1e-3) the blind spot was learned weakly and the beta = 0 run hacked only mildly (r* 0.49 vs SFT 0.46)
      "blind_pairs": 2000, "blind_rm_steps": 60, "blind_rm_lr": 3e-3, "hack_betas": [0.0, 1.0],
      "hack_ppo": {**_PPO, "lr": 1e-3},
      "ptx_coef": 0.25,  # 0.5 held the LM loss but cost win rate (0.62 < 0.7) against this reward model
      "ptx_batch": 16, "fg_steps": 8, "max_new_tokens": 16, "lab_ppo_steps": 6, "lab_batch": 32,
      # asserted outcomes (margins for the ci sizes; the lecture's closing note gives the measured values). The ci
      # reward model reached 78-84% of the noise ceiling (seeds 0-2); the cpu one, 4x the steps, 90-92%
      "rm_ceiling_frac": 0.75, "min_win_rate": 0.7, "max_kl": 6.0, "hack_margin": 0.15}
CPU = {**CI, "pair_stories": 2000, "n_pairs": 40000, "rm_steps": 1200, "rm_lr": 1e-3, "trl_rm_steps": 100,
       "ppo": {**_PPO, "steps": 40, "batch_size": 64}, "hack_betas": [0.0, 0.1, 0.5, 1.0, 2.0],
       "fg_steps": 20, "eval_stories": 150, "lab_ppo_steps": 20, "lab_batch": 48,
       "rm_ceiling_frac": 0.85, "min_win_rate": 0.75}
# the same tiny models with more data and steps (no larger SFT model in the zoo yet)
GPU = {**CPU, "ppo": {**_PPO, "steps": 80, "batch_size": 128}, "fg_steps": 40, "rm_steps": 2000, "n_pairs": 64000,
       "pair_stories": 4000}
