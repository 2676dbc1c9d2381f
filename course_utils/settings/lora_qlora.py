"""Sizes for 07_lora_qlora: the lab's small QLoRA on the course's tiny BERT, and the gpu profile's hub model."""
NOTEBOOK = "07_lora_qlora"

CI = {"base_model": "tiny-bert", "blocksize": 64, "nested_blocksize": 256, "targets": ["query", "value"],
      "lora_r": 4, "lora_alpha": 8, "lab_steps": 60, "lab_lr": 3e-3, "batch_size": 32, "eval_texts": 256,
      "loss_margin": 0.02,
      "hub_model": None}
CPU = {**CI, "targets": ["query", "key", "value", "dense"], "lab_steps": 200, "eval_texts": 512}
GPU = {**CPU, "lab_steps": 300,
       "hub_model": "Qwen/Qwen2.5-0.5B-Instruct"}
