"""Sizes for 06_dpo: DPO on the world's preference pairs from the shared SFT model, a beta sweep, DPO vs PPO."""
NOTEBOOK = "06_dpo"

CI = {"sft_model": "tiny-gpt-sft", "pair_stories": 1500, "pairs": 3000, "eval_stories": 60, "pair_beta": 4.0,
      "beta": 0.1, "betas": [0.03, 0.1, 0.3], "steps": 150, "batch_size": 32, "lr": 1e-3, "seeds": [0, 1],
      "trl_steps": 20, "max_new_tokens": 12, "toy_tasks": 3, "toy_betas": [0.1, 0.5, 2.0],
      "win_margin": 0.7, "max_kl": 10.0,
      # lab: your pieces train DPO from the SFT model
      "lab_steps": 100, "lab_win_rate": 0.6, "lab_max_kl": 10.0}
CPU = {**CI, "pair_stories": 4000, "pairs": 8000, "eval_stories": 150, "steps": 400, "betas": [0.01, 0.03, 0.1, 0.3, 1.0],
       "seeds": [0, 1, 2], "trl_steps": 100, "lab_steps": 300}
GPU = {**CPU, "sft_model": "Qwen/Qwen2.5-0.5B-Instruct", "lr": 5e-7, "batch_size": 8, "steps": 200,
       "trl_steps": 100, "lab_steps": 200, "max_new_tokens": 24}
