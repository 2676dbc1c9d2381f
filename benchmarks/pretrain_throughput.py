"""Tokens/s and loss per token of the course's pretraining loop against a nanoGPT re-implementation.

Both train at nanoGPT's documented CPU setting (n_layer 4, n_head 4, n_embd 128, block 64, batch 12,
dropout 0, AdamW lr 1e-3 with betas (0.9, 0.99), weight decay 0.1, 100 warm-up steps, cosine to
1e-4, clipping at 1.0) on the same character-level text, on this machine. Both draw random windows of the
text: nanoGPT with replacement (its get_batch), the course without (a shuffled DataLoader, which shards
over processes).

- "course": ``course_utils.pretrain.pretrain`` (a transformers GPT2LMHeadModel with sdpa attention
  and the course's training loop), exactly what `course pretrain` and lecture 03 run.
- "nanoGPT (re-impl.)": a faithful re-implementation of nanoGPT's model.py and of its train.py loop
  in plain PyTorch (below). nanoGPT itself cannot be installed offline, so this is a reference
  re-implementation, not nanoGPT's own code.
- "nanoGPT (re-impl.), bias=True": the same with nanoGPT's ``bias=True`` option, GPT-2's layout (biases
  in every Linear and LayerNorm, as in the course's GPT-2): it separates the cost of the biases from the
  cost of the training loop and of `transformers`' model code.
- "course loop on nanoGPT's model": the course's ``train`` loop driving the reference model (bias=False):
  the two training loops compared on the same network.

nanoGPT reports a validation loss of 1.88 after 2000 iterations on character-level Shakespeare at this
setting; Shakespeare is not available offline, so both run on the course corpus as characters, and
the comparison is between the two implementations on identical data.

    .venv/bin/python benchmarks/pretrain_throughput.py                  # 500 iterations each (~3 min)
    .venv/bin/python benchmarks/pretrain_throughput.py --max-iters 2000 --repeats 2
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from course_utils import pretrain as pt
from course_utils.world.corpus import make_corpus
from course_utils.training import train

SETTING = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12)
LR, MIN_LR, WARMUP, WEIGHT_DECAY, BETAS, CLIP = 1e-3, 1e-4, 100, 0.1, (0.9, 0.99), 1.0


# ---- reference re-implementation of nanoGPT's model.py (dropout 0, as in its CPU run) ----
# nanoGPT's default is bias=False (its CPU run uses it); bias=True is its GPT-2 layout, biases in Linear and LayerNorm.
class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, bias: bool):
        super().__init__()
        self.n_head, self.n_embd = n_head, n_embd
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, n_embd: int, bias: bool):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, bias: bool):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = CausalSelfAttention(n_embd, n_head, bias)
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = MLP(n_embd, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int, bias: bool = False):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab_size, n_embd), nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList(Block(n_embd, n_head, bias) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=bias)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # scaled init of the residual projections
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, 0.0, 0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)


def nanogpt_lr(it: int, max_iters: int) -> float:
    """nanoGPT's get_lr: linear warm-up, then cosine from LR down to MIN_LR at max_iters."""
    if it < WARMUP:
        return LR * (it + 1) / (WARMUP + 1)
    ratio = (it - WARMUP) / max(1, max_iters - WARMUP)
    return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * min(ratio, 1.0))) * (LR - MIN_LR)


def train_reference(train_ids, val_ids, vocab_size: int, max_iters: int, eval_at: set[int], seed: int = 0,
                    bias: bool = False) -> dict:
    """nanoGPT's train.py loop (CPU: no fused AdamW, no compile, no AMP); returns timings and losses."""
    torch.manual_seed(seed)
    model = NanoGPT(vocab_size, **{k: SETTING[k] for k in ("block_size", "n_layer", "n_head", "n_embd")}, bias=bias)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=LR, betas=BETAS)
    generator = torch.Generator().manual_seed(seed)
    step_times, cpu_times, evals = [], [], []
    for it in range(max_iters):
        start, cpu_start = time.perf_counter(), time.process_time()
        for group in optimizer.param_groups:
            group["lr"] = nanogpt_lr(it, max_iters)
        x, y = pt.get_batch(train_ids, SETTING["block_size"], SETTING["batch_size"], generator)
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # nanoGPT reads the loss every log_interval (1 in its CPU command)
        step_times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
        if it + 1 in eval_at:
            evals.append((it + 1, evaluate(lambda a, b: model(a, b)[1], val_ids)))
    return {"step_times": step_times, "cpu_times": cpu_times, "evals": evals}


@torch.no_grad()
def evaluate(loss_fn, val_ids, max_blocks: int = 400) -> float:
    """Mean validation loss over the same packed blocks for both implementations."""
    x, y = pt.make_blocks(val_ids, SETTING["block_size"])
    keep = torch.linspace(0, len(x) - 1, min(max_blocks, len(x))).long()
    x, y = x[keep], y[keep]
    total = sum(loss_fn(x[i : i + 64], y[i : i + 64]).item() * x[i : i + 64].numel() for i in range(0, len(x), 64))
    return total / x.numel()


def train_loop_on_reference(train_ids, val_ids, vocab_size: int, max_iters: int, eval_every: int, seed: int = 0) -> dict:
    """The course's train() loop on the reference model (bias=False): the loops compared like for like."""
    torch.manual_seed(seed)
    model = NanoGPT(vocab_size, **{k: SETTING[k] for k in ("block_size", "n_layer", "n_head", "n_embd")})
    generator = torch.Generator().manual_seed(seed)
    stamps = [(time.perf_counter(), time.process_time())]
    history = train(model, lambda: pt.get_batch(train_ids, SETTING["block_size"], SETTING["batch_size"], generator),
                    steps=max_iters, lr=LR, warmup=WARMUP, weight_decay=WEIGHT_DECAY, clip=CLIP, device="cpu",
                    loss_fn=lambda m, batch: m(*batch)[1], betas=BETAS, min_lr_ratio=MIN_LR / LR,
                    eval_fn=lambda: evaluate(lambda a, b: model(a, b)[1], val_ids), eval_every=eval_every,
                    progress=False, callback=lambda step, h: stamps.append((time.perf_counter(), time.process_time())))
    return _timings(stamps) | {"evals": history.evals, "tokens_per_s": history.tokens_per_s}


def _timings(stamps: list[tuple[float, float]]) -> dict:
    """Per-step wall and CPU times from (wall, cpu) stamps taken after each step."""
    return {"step_times": [b[0] - a[0] for a, b in zip(stamps, stamps[1:])],
            "cpu_times": [b[1] - a[1] for a, b in zip(stamps, stamps[1:])]}


def train_course(text: str, tokenizer, max_iters: int, eval_every: int, accelerator=None) -> dict:
    """The course's pretrain() at the same setting; per-step times come from a train() callback."""
    stamps = [(time.perf_counter(), time.process_time())]
    result = pt.pretrain(text, "char", tokenizer=tokenizer, **SETTING, max_iters=max_iters, lr=LR, warmup=WARMUP,
                         min_lr_ratio=MIN_LR / LR, weight_decay=WEIGHT_DECAY, eval_interval=eval_every,
                         eval_blocks=400, device="cpu", progress=False, verbose=False, accelerator=accelerator,
                         callback=lambda step, history: stamps.append((time.perf_counter(), time.process_time())))
    return _timings(stamps) | {"evals": result.history.evals, "tokens_per_s": result.history.tokens_per_s}


def train_course_launched(args: argparse.Namespace, processes: int = 2) -> dict:
    """The course's pretrain() in ``processes`` data-parallel processes of one thread each (`accelerate launch`, gloo)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json"
        launch = pt.accelerate_launch(processes)
        subprocess.run(launch + [__file__, "--worker", str(out), "--max-iters", str(args.max_iters),
                                 "--stories", str(args.stories)],
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True, capture_output=True)
        return json.loads(out.read_text())


def worker(args: argparse.Namespace) -> None:
    """One process of ``train_course_launched``: the main process writes its timings and losses to ``args.worker``."""
    text, tokenizer, _, _ = load_data(args.stories)
    accelerator = pt.make_accelerator("cpu")
    run = train_course(text, tokenizer, args.max_iters, max(1, args.max_iters // 4), accelerator)
    if accelerator.is_main_process:
        Path(args.worker).write_text(json.dumps(run))


def load_data(stories: int):
    """The course corpus as characters: text, tokenizer, train ids, validation ids."""
    text = "\n".join(make_corpus(stories))
    tokenizer, ids = pt.encode_text(text, "char")
    return (text, tokenizer, *pt.split_ids(ids))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-iters", type=int, default=500, help="iterations per run (nanoGPT's anchor: 2000)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each implementation, alternating order")
    parser.add_argument("--stories", type=int, default=9000, help="course stories (~1.05M characters for 9000)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    parser.add_argument("--processes", type=int, default=2, help="processes of the data-parallel row (0: no such row)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one process of the data-parallel row
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.threads:
        torch.set_num_threads(args.threads)

    text, tokenizer, train_ids, val_ids = load_data(args.stories)
    tokens_per_iter = SETTING["batch_size"] * SETTING["block_size"]
    eval_every = max(1, args.max_iters // 4)
    eval_at = set(range(eval_every, args.max_iters + 1, eval_every)) | {args.max_iters}
    print(f"data: course corpus as characters, {len(text):,} chars, vocab {len(tokenizer)}, "
          f"{len(train_ids):,} train / {len(val_ids):,} val tokens")
    print(f"setting: {SETTING}, dropout 0, lr {LR}, {args.max_iters} iterations "
          f"({args.max_iters * tokens_per_iter:,} tokens); torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")

    runs = {"course (transformers GPT-2)": [], "nanoGPT (re-impl.)": [], "nanoGPT (re-impl.), bias=True": [],
            "course loop on nanoGPT's model": []}
    if args.processes > 1:
        runs[f"course, {args.processes} processes x 1 thread (accelerate)"] = []
    for r in range(args.repeats):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))
        for name in order:
            if name.startswith(f"course, {args.processes} processes"):
                run = train_course_launched(args, args.processes)
            elif name.startswith("course loop"):
                run = train_loop_on_reference(train_ids, val_ids, len(tokenizer), args.max_iters, eval_every)
            elif name.startswith("course"):
                run = train_course(text, tokenizer, args.max_iters, eval_every)
            else:
                run = train_reference(train_ids, val_ids, len(tokenizer), args.max_iters, eval_at,
                                      bias=name.endswith("bias=True"))
            runs[name].append(run)
            print(f"  run {r + 1} {name}: {tokens_per_iter / statistics.median(run['step_times']):,.0f} tokens/s (median step)")

    # Other processes on a shared machine slow some runs down; the best run is the fairest wall-clock estimate,
    # and CPU time per step (process time; exact with one thread) hardly depends on them.
    print(f"\n| implementation | tokens/s (mean of runs) | tokens/s (best run, median step) | ms/iter (best run, median) "
          f"| CPU ms/iter (median) | val loss at {args.max_iters} |")
    print("|---|---:|---:|---:|---:|---:|")
    def run_tps(r: dict) -> float:
        # whole-run tokens/s without evaluations: the course's History measures it, the reference sums its steps
        return r.get("tokens_per_s") or args.max_iters * tokens_per_iter / sum(r["step_times"])

    for name, rs in runs.items():
        mean_tps = statistics.fmean(run_tps(r) for r in rs)
        median_ms = min(statistics.median(r["step_times"]) for r in rs) * 1000
        cpu_ms = statistics.median(t for r in rs for t in r["cpu_times"]) * 1000
        final = statistics.fmean(r["evals"][-1][1] for r in rs)
        print(f"| {name} | {mean_tps:,.0f} | {tokens_per_iter / median_ms * 1000:,.0f} | {median_ms:.1f} | {cpu_ms:.1f} "
              f"| {final:.3f} |")

    # repeat r of every row ran next to repeat r of the anchor, so their ratio cancels slow phases of the machine
    anchor = runs["nanoGPT (re-impl.)"]
    print("\ntokens/s relative to nanoGPT (re-impl.), per repeat (whole runs): median [min, max]\n")
    print("| implementation | median ratio | spread |")
    print("|---|---:|---:|")
    for name, rs in runs.items():
        ratios = [run_tps(r) / run_tps(a) for r, a in zip(rs, anchor)]
        print(f"| {name} | {statistics.median(ratios):.2f} | {min(ratios):.2f} to {max(ratios):.2f} |")

    print("\nvalidation loss per tokens trained (mean over runs):\n")
    print("| tokens trained | " + " | ".join(runs) + " |")
    print("|---:|" + "---:|" * len(runs))
    for i, (step, _) in enumerate(runs["nanoGPT (re-impl.)"][0]["evals"]):
        cells = [f"{statistics.fmean(r['evals'][i][1] for r in rs):.3f}" for rs in runs.values()]
        print(f"| {step * tokens_per_iter:,} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
