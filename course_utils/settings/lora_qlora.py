"""Sizes for 07_lora_qlora: the PEFT methods on one task, intrinsic dimension, LoRA ablation, QLoRA, the lab's QLoRA."""
NOTEBOOK = "07_lora_qlora"

CI = {"base_model": "tiny-bert", "batch_size": 32, "eval_texts": 160,
      # lecture: every method trains this many steps on the feeling sentences
      "steps": 60, "lr_full": 1e-3, "lr_peft": 1e-2, "lr_prompt": 3e-2, "lr_subspace": 0.5,
      "top_k_layers": 1, "adapter_size": 8, "prompt_tokens": 8, "intrinsic_dims": [64, 512],
      "ranks": [1, 4, 16], "qlora_steps": 60, "score_ratio": 0.9, "max_trainable": 0.05,
      "gpu_steps": 0,
      # lab: your NF4 + your LoRA
      "blocksize": 64, "nested_blocksize": 256, "targets": ["query", "value"], "lora_r": 4, "lora_alpha": 8,
      "lab_steps": 60, "lab_lr": 1e-2, "loss_margin": 0.02,
      "hub_model": None}
CPU = {**CI, "steps": 150, "intrinsic_dims": [16, 64, 256, 1024], "qlora_steps": 150,
       "score_ratio": 0.95, "max_trainable": 0.02, "lora_r": 2, "lora_alpha": 4, "targets": ["query", "key", "value", "dense"], "lab_steps": 200}
GPU = {**CPU, "lab_steps": 300, "gpu_steps": 100,
       "hub_model": "Qwen/Qwen2.5-0.5B-Instruct"}
