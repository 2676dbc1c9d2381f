"""Sizes for 06_dpo: DPO on the world's preference pairs from the shared SFT model, a beta sweep, DPO vs PPO."""
from course_utils.settings import rlhf_ppo

NOTEBOOK = "06_dpo"

# eval_stories 210: the lecture's evaluation tasks come from 203 distinct stories (>= 200, so that win rates get
# intervals of about +-0.05 when resampling stories); the lab keeps 60 (lab_eval_stories)
CI = {"sft_model": "tiny-gpt-sft", "pair_stories": 1000, "prompt_stories": 300, "eval_stories": 210,
      "lab_eval_stories": 60, "best_of_n": 4, "ipo_beta": 0.1,
      "pairs": 1000, "annotator_sharpness": 4.0, "held_out_pairs": 300, "max_new_tokens": 16,
      # the toy: a few pair tasks, six candidate responses each, enumerated exactly
      "toy_tasks": 3, "toy_beta": 0.5, "toy_betas": [0.1, 0.5, 2.0],
      # DPO from scratch, the beta sweep, TRL, the seeds of the DPO-vs-PPO comparison
      "beta": 0.1, "betas": [0.03, 0.1, 1.0], "steps": 100, "batch_size": 16, "lr": 3e-4, "trl_steps": 20,
      # lr 3e-4, not 5e-4: at 5e-4 an occasional seed runs away from the reference (KL ~20 nats) and loses to SFT
      "seeds": [0, 1],
      # PPO as module 05 runs it: its reward model (the shipped tiny-gpt-rm), normalised on the SFT model's replies to
      # norm_prompts training prompts, and its PPO settings. rm_steps etc. train an in-notebook reward model instead,
      # only where rm_model is None (the gpu profile: tiny-gpt-rm cannot read the Qwen tokenizer's ids)
      "rm_model": rlhf_ppo.CI["rm_model"], "norm_prompts": 200, "ppo": rlhf_ppo.CI["ppo"],
      # PPO's prompts are module 05's: the prompt stories that follow its 2000 pair stories, which tiny-gpt-rm was
      # trained on (DPO's 1000 pair stories are the first of them; its prompt stories would be inside the 2000)
      "ppo_pair_stories": rlhf_ppo.CI["pair_stories"],
      "rm_steps": 60, "rm_batch_size": 32, "rm_lr": 3e-3,
      "win_margin": 0.7, "max_kl": 4.0,  # asserted: win rate over SFT under r* >= 70% at KL <= 4 nats
      # lab: your pieces train DPO from the SFT model
      "lab_beta": 0.1, "lab_steps": 100, "lab_win_rate": 0.6, "lab_max_kl": 5.0,
      # lab exercise 5: held-out pairs (from the lab's evaluation tasks) on which the log-prob shifts are measured
      "shift_pairs": 200,
      # section 7's on-policy pairs: two replies per pair prompt sampled from the SFT model at this temperature
      # (1.0, as PPO's rollouts and best-of-N sample), labelled like the off-policy pairs
      "on_policy_temperature": 1.0}
# cpu: DPO at ci's sizes. The earlier cpu sizes (3000 pairs from 2000 pair stories, 200 steps of 32 at lr 5e-4) failed
# the KL assert (6.20 nats at beta 0.1) and took 487 s before section 7. Probes at lr 3e-4, 150 steps of 32, beta 0.1:
# from 2000 pair stories KL 11.3, win rate over SFT 0.640 [0.602, 0.681]; from 1000, KL 2.65, 0.797 [0.769, 0.829],
# no better than ci's 0.824 [0.798, 0.849] at KL 1.59. So cpu adds a beta, TRL steps, best-of-8 and module 05's cpu PPO
CPU = {**CI, "lab_eval_stories": 150, "best_of_n": 8, "betas": [0.03, 0.1, 0.3, 1.0], "trl_steps": 60,
       "ppo": rlhf_ppo.CPU["ppo"]}
# gpu (not run here): 05's gpu PPO at a learning rate for a 0.5B model (05's 2e-4 is for the tiny course models)
GPU = {**CPU, "sft_model": "Qwen/Qwen2.5-0.5B-Instruct", "rm_model": None,
       "ppo": {**rlhf_ppo.GPU["ppo"], "lr": 1e-6, "max_new_tokens": 24},
       "pair_stories": 2000, "pairs": 3000, "lr": 5e-7, "batch_size": 8, "steps": 200,
       # its in-notebook reward model: a full fine-tune of the 0.5B trunk, so a fine-tuning learning rate
       "rm_steps": 300, "rm_lr": 1e-5,
       "trl_steps": 100, "lab_steps": 200, "max_new_tokens": 24}
