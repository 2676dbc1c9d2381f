"""Sizes for 08_prompting_cot: the evaluation sets, k values, chain counts, APE, evolution and prompt-tuning sizes."""
NOTEBOOK = "08_prompting_cot"

CI = {"model": "tiny-gpt-reasoner", "n_eval": 96, "n_pool": 200, "ks": [0, 2, 4, 8], "n_demos": 4,
      "n_permutations": 4, "n_copy_lists": 64, "n_problems": 64, "step_counts": [1, 2, 3, 4], "sc_ns": [1, 3, 5, 7],
      "temperature": 0.8, "max_new_tokens": 64, "ape_candidates": 12, "ape_dev": 48, "ape_test": 96,
      "evo_population": 8, "evo_generations": 6, "prompt_tokens": 16, "prompt_steps": 300, "prompt_lr": 0.3,
      "lab_n": 32, "lab_chains": 5}
CPU = {**CI, "n_eval": 200, "n_problems": 128, "sc_ns": [1, 3, 5, 9, 15], "n_permutations": 12, "n_copy_lists": 128,
       "ape_candidates": 24, "ape_test": 200, "evo_generations": 10, "prompt_steps": 400, "lab_n": 128, "lab_chains": 9}
GPU = {**CPU, "model": "Qwen/Qwen2.5-0.5B-Instruct"}
