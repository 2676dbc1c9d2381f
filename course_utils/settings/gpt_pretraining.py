"""Sizes for 03_gpt_pretraining: the lecture's GPT, the scaling ladder, decoding and the lab's GPT."""
NOTEBOOK = "03_gpt_pretraining"

CI = {"stories": 3000, "vocab_size": 600, "model": {"n_layer": 2, "n_head": 4, "n_embd": 64}, "block_size": 64,
      "batch_size": 16, "max_iters": 300, "lr": 6e-3, "warmup": 30, "eval_interval": 50, "ppl_margin": 0.1,
      "scaling": [{"n_layer": 1, "n_head": 2, "n_embd": 16}, {"n_layer": 2, "n_head": 2, "n_embd": 32},
                  {"n_layer": 2, "n_head": 4, "n_embd": 64}], "scaling_iters": 150,
      "decode_model": None, "decode_prompt": "mia was", "max_new_tokens": 24,
      "lab_stories": 1500, "lab_model": {"n_layer": 2, "n_head": 4, "n_embd": 64}, "lab_iters": 400, "lab_lr": 1e-2}
CPU = {**CI, "stories": 10000, "model": {"n_layer": 4, "n_head": 4, "n_embd": 128}, "max_iters": 600, "lr": 3e-3,
       "warmup": 50, "eval_interval": 100,
       "scaling": [{"n_layer": 1, "n_head": 2, "n_embd": 16}, {"n_layer": 2, "n_head": 2, "n_embd": 32},
                   {"n_layer": 4, "n_head": 4, "n_embd": 128}],
       "max_new_tokens": 30, "lab_stories": 4000, "lab_iters": 800}
GPU = {**CPU, "stories": 30000, "vocab_size": 1000, "model": {"n_layer": 6, "n_head": 6, "n_embd": 384},
       "block_size": 128, "batch_size": 64, "max_iters": 1500, "lr": 1e-3, "warmup": 100, "eval_interval": 250,
       "scaling": [{"n_layer": 1, "n_head": 2, "n_embd": 16}, {"n_layer": 2, "n_head": 4, "n_embd": 64},
                   {"n_layer": 6, "n_head": 6, "n_embd": 384}], "scaling_iters": 200,
       "decode_model": "gpt2", "decode_prompt": "Once upon a time,", "max_new_tokens": 40,
       "lab_model": {"n_layer": 4, "n_head": 4, "n_embd": 128}, "lab_iters": 2000, "lab_lr": 3e-3}
