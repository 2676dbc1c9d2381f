"""Sizes for 07_lora_qlora: the PEFT methods on one task, intrinsic dimension, LoRA ablation, QLoRA, the lab's QLoRA."""
NOTEBOOK = "07_lora_qlora"

CI = {"base_model": "tiny-gpt-sft", "train_stories": 1500, "eval_stories": 600, "batch_size": 16,
      # lecture: every method trains this many steps on the opposite world's story sentiment; each learning rate
      # is the best of a small sweep at 60 steps (held-out accuracy): full 1e-3 .63, 3e-3 .74, 1e-2 .79; top 3e-3
      # .94, 1e-2 .94; BitFit 3e-2 .30, 1e-1 .44; adapter 3e-3 .96, 1e-2 .95; prompt 1e-1 .59, 3e-1 .67; prefix
      # 3e-2 .10, 1e-1 .64; LoRA 1e-2 .96, 3e-2 .96; subspace (d=64) 0.3 .40, 1.0 .75. Prefix tuning at 1e-1 was
      # unstable on tiny-gpt-sft rebuilt from seed 1 (0.13 / 0.58 / 0.14 over three seeds, its base 0.08); at 2e-1 it
      # learned on both builds (shipped 0.45-0.46 from 0.19, rebuilt 0.41-0.76 from 0.08)
      "steps": 60, "lr": {"full": 1e-2, "top": 1e-2, "bitfit": 1e-1, "adapter": 1e-2, "prompt": 3e-1,
                          "prefix": 2e-1, "lora": 1e-2, "subspace": 1.0},
      "top_k_layers": 1, "adapter_size": 8, "virtual_tokens": 8, "lora_r": 4, "lora_alpha": 8,
      "intrinsic_dims": [16, 64], "ranks": [1, 16], "alphas": [1, 64], "qlora_steps": 60,
      "full_margin": 0.3, "train_margin": 0.1, "score_ratio": 0.9, "max_trainable": 0.05, "gpu_steps": 0,
      # lab: your NF4 + your LoRA
      "blocksize": 64, "nested_blocksize": 256, "targets": ["c_attn"], "lab_steps": 60, "lab_lr": 1e-2,
      "loss_margin": 0.05,
      "hub_model": None}
CPU = {**CI, "steps": 150, "lr": {**CI["lr"], "full": 1e-3},  # at 150 steps full fine-tuning's best lr is smaller
       "intrinsic_dims": [4, 16, 64, 256], "ranks": [1, 2, 8, 16], "alphas": [1, 16, 64],
       "qlora_steps": 150, "score_ratio": 0.95, "max_trainable": 0.02, "lab_steps": 200}
GPU = {**CPU, "lab_steps": 300, "gpu_steps": 100,
       "hub_model": "Qwen/Qwen2.5-0.5B-Instruct"}
