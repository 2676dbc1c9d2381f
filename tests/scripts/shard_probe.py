"""Run under `accelerate launch`: record which windows each process trains on in one epoch (tests/test_scale_out.py)."""
import json
import sys

import torch

from course_utils.pretrain import make_accelerator, window_loader

out, n_tokens, block, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
accelerator = make_accelerator("cpu")
loader = accelerator.prepare(window_loader(torch.arange(n_tokens), block, batch, seed=0))
starts = [x[:, 0].tolist() for x, _ in loader]  # token i starts window i, so x[:, 0] names the window
with open(f"{out}.{accelerator.process_index}.json", "w") as f:
    json.dump({"processes": accelerator.num_processes, "batches": starts}, f)
