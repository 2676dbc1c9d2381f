"""Sizes for 04_instruction_tuning: SFT of the course's tiny GPT on the world's instruction tasks."""
NOTEBOOK = "04_instruction_tuning"

# ci lr 3e-3: at 5e-3 the response-only vs whole-sequence comparison flipped with the batch order (COURSE_SEED 1,
# native numerics); over four batch orders 3e-3 kept response-only ahead on responses and seen accuracy 0.35-0.53
CI = {"base_model": "tiny-gpt", "train_stories": 1500, "eval_stories": 60, "sft_steps": 300, "batch_size": 32,
      "lr": 3e-3, "trl_steps": 30, "lima_clean": 500, "lima_noise": 0.5, "lima_steps": 500,
      # LIMA's data-size curve: the first lima_few, the first lima_clean and every training task, on short stories
      "lima_few": 30, "lima_eval_stories": 180,
      "lab_steps": 500, "seen_margin": 0.25, "unseen_margin": 0.1,
      # lecture 04's questions that need reading: stories of 3 sentences, each question with a distractor; over
      # 300-1000 steps and lr 3e-3/1e-2 the tiny model stayed near 0.1 on them, the no-reading heuristic near 0.43
      "min_sentences": 3, "max_sentences": 3, "reading_eval_stories": 200, "format_margin": 0.5,
      "reading_margin": 0.1, "curve_families": (1, 3, 5), "curve_steps": 100,
      "self_instruct_proposals": 150,
      # SFT on self-instruct's kept tasks vs every proposal (lecture 04, section 7): both runs take these steps, with
      # lr and batch_size above; 200 keeps the lecture near 110 s (2 x 200 steps cost about 11 s, native numerics)
      "self_instruct_steps": 200}
# cpu's step counts keep the lecture within its 5-minute budget: with 1500 SFT and LIMA steps it took 673 s, with
# 800 312 s, with 600 250 s (two threads, load 2-4, 2026-12-07)
CPU = {**CI, "lr": 5e-3, "train_stories": 4000, "eval_stories": 150, "sft_steps": 600,
       "trl_steps": 100, "lima_steps": 600, "lab_steps": 1500, "seen_margin": 0.4,
       "curve_families": (1, 2, 3, 4, 5), "curve_steps": 150,
       "self_instruct_proposals": 400, "self_instruct_steps": 300}
# gpu: a *base* (not instruction-tuned) hub model, so that SFT is what teaches it to follow instructions. Its chat
# template has no {% generation %} markers: encode_chat then masks with TRL's training copy of the template, as
# SFTTrainer does (tests/test_sft_hub_template.py checks that path on a local model with that template). Its two
# self-instruct runs (kept vs every proposal) train the 0.5B model too: 100 steps each keeps them short (not run yet)
GPU = {**CPU, "base_model": "Qwen/Qwen2.5-0.5B", "lr": 1e-5, "batch_size": 16, "sft_steps": 300,
       "trl_steps": 300, "lima_steps": 300, "lab_steps": 300, "self_instruct_steps": 100}
