"""Sizes for 09_rlvr_grpo: GRPO on the world's instruction tasks from the SFT model of modules 05-06."""
NOTEBOOK = "09_rlvr_grpo"

# Module 05's split (its reward model's pair stories, then the policy's prompt stories; evaluation stories apart).
# The lab's run: 40 steps of 16 prompts x 8 responses, lr 5e-4, no KL. Measured on this machine (native numerics):
# held-out pass@1 0.224 -> 0.284-0.311 over COURSE_SEED 0-3 with module 06's 1000 pair stories (other prompts),
# 0.293 and 0.277 at seeds 1 and 2 with these; at lr 1e-3 the KL ran to 7-17 nats and one seed gained only 0.02
_LAB = {"lab_steps": 40, "lab_prompts": 16, "lab_lr": 5e-4}  # the outcome bar lives with its check (checks.grpo)
_GRPO = {"steps": 30, "prompts": 16, "lr": 5e-4, "beta": 0.0}
CI = {"sft_model": "tiny-gpt-sft", "pair_stories": 2000, "prompt_stories": 300, "eval_stories": 60,
      "group_size": 8, "max_new_tokens": 12, "eval_samples": 8, **_LAB,
      # lecture: GRPO with r* as the reward, a collapse (10x the learning rate), expert iteration, and module 05's
      # PPO (its shipped reward model) and module 06's DPO (on module 05's pair stories) at module 06's ci sizes
      "grpo": _GRPO, "collapse": {**_GRPO, "steps": 10, "lr": 5e-3},
      "ei_samples": 4, "ei_steps": 60, "ei_batch": 32, "ei_lr": 1e-3,
      "rm_model": "tiny-gpt-rm", "ppo": {"steps": 20, "batch_size": 48, "lr": 2e-4, "beta": 0.05},
      "dpo": {"pairs": 1000, "annotator_sharpness": 4.0, "beta": 0.1, "steps": 100, "batch_size": 16, "lr": 3e-4},
      # asserted: GRPO's held-out pass@1 gain, every method's win rate over SFT under r*, the collapse's diversity
      # (distinct replies per group, robustness run native s0-s2 + avx2 s0: SFT 0.82-0.86, lr x10 0.36-0.51)
      "pass_margin": 0.03, "min_win_rate": 0.6, "collapse_margin": 0.2,
      # GRPO (30 steps) on the lax check: the share of held-out samples only the lax check accepts went from
      # 0.009-0.015 (SFT) to 0.047-0.389 over COURSE_SEED 0-4, native and avx2 (growth >= +0.037; 0.237 with the
      # rebuilt models); over 1128 samples a share's standard error is about 0.006, so +0.02 is 3 SE above no growth
      "loophole_margin": 0.02}
# cpu: GRPO trains three times in the lecture (r*, the lax check, the strict verifier), 40 steps each
CPU = {**CI, "eval_stories": 150, "lab_steps": 60, "grpo": {**_GRPO, "steps": 40},
       "ppo": {**CI["ppo"], "steps": 30}, "ei_samples": 8, "ei_steps": 100}
# a small instruct model from the hub on the same verifiable tasks (its prompts and replies are plain text)
GPU = {**CPU, "sft_model": "Qwen/Qwen2.5-0.5B-Instruct", "lab_lr": 1e-6, "lab_prompts": 8, "max_new_tokens": 24,
       "grpo": {**_GRPO, "lr": 1e-6, "prompts": 8, "steps": 60}, "collapse": {**_GRPO, "steps": 10, "lr": 1e-4},
       "ei_lr": 1e-5, "dpo": {**CI["dpo"], "lr": 5e-7, "batch_size": 8}, "ppo": {**CI["ppo"], "lr": 1e-6}}
