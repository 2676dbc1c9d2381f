"""Pretrain a small GPT on any text, nanoGPT style: tokenize, pack into blocks, train, save.

One code path serves `course pretrain --text FILE` and lecture 03: ``pretrain`` tokenizes the text
(characters or a locally trained BPE), keeps the last 10% as validation data, trains a
`transformers` ``GPT2LMHeadModel`` with the course's training loop (AdamW, warm-up + cosine,
gradient clipping) on random windows of the token stream, prints tokens/s and validation loss, and
saves a checkpoint that ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained``
load. The defaults are nanoGPT's CPU setting for character-level Shakespeare.

Under ``accelerate launch`` the same command trains data-parallel: every global batch of windows is
split between the processes (so the loss curve matches one process at the same batch size), gradients
are averaged, and only the main process prints and saves.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
import transformers
from .progress import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from .world.corpus import read_text_file
from .profiles import seed_everything
from .world.tokenization import train_bpe, train_char
from .training import History, train

TOKENIZERS = ("char", "bpe")
DEVICES = ("auto", "cpu", "cuda", "mps")
MIN_CHARS = 200


class Pretrained(NamedTuple):
    """What ``pretrain`` returns (it unpacks like a tuple)."""

    model: GPT2LMHeadModel
    tokenizer: PreTrainedTokenizerFast
    history: History
    val_loss: float


def encode_text(text: str, tokenizer_kind: str = "char", vocab_size: int = 512,
                tokenizer: PreTrainedTokenizerFast | None = None) -> tuple[PreTrainedTokenizerFast, torch.Tensor]:
    """Train a character or BPE tokenizer on ``text`` (unless one is given); return it and the text's ids."""
    if not isinstance(text, str) or len(text) < MIN_CHARS:
        raise ValueError(f"text must be a string of at least {MIN_CHARS} characters to train on")
    if tokenizer is None:
        if tokenizer_kind == "char":
            tokenizer = train_char(text)
        elif tokenizer_kind == "bpe":
            tokenizer = train_bpe([line for line in text.splitlines() if line.strip()], vocab_size=vocab_size)
        else:
            raise ValueError(f"tokenizer_kind must be one of {TOKENIZERS}, got {tokenizer_kind!r}")
    ids = tokenizer.backend_tokenizer.encode(text).ids  # the whole text as one stream, no length warning
    return tokenizer, torch.tensor(ids, dtype=torch.long)


def split_ids(ids: torch.Tensor, val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``1 - val_fraction`` of the token stream for training, the rest for validation."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    n = int(len(ids) * (1 - val_fraction))
    return ids[:n], ids[n:]


def get_batch(data: torch.Tensor, block_size: int, batch_size: int,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random windows of the stream: inputs ``x`` and targets ``y`` (x shifted by one)."""
    if len(data) <= block_size:
        raise ValueError(f"the data has {len(data)} tokens, not more than block_size={block_size}: "
                         "use a smaller block size or more text")
    start = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    windows = data.unfold(0, block_size + 1, 1)[start]  # (batch_size, block_size + 1), one copy
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


class Windows(torch.utils.data.Dataset):
    """Every window of the token stream: item ``i`` is ``(x, y)``, ``block_size`` tokens from ``i`` and the next ones."""

    def __init__(self, data: torch.Tensor, block_size: int):
        if len(data) <= block_size:
            raise ValueError(f"the data has {len(data)} tokens, not more than block_size={block_size}: "
                             "use a smaller block size or more text")
        self.data, self.block_size = data, block_size

    def __len__(self) -> int:
        return len(self.data) - self.block_size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        window = self.data[i : i + self.block_size + 1]
        return window[:-1], window[1:]


def window_loader(data: torch.Tensor, block_size: int, batch_size: int, seed: int = 0) -> torch.utils.data.DataLoader:
    """Random windows in batches, each start position once per epoch (like ``get_batch``, without replacement).

    A seeded ``DataLoader``: ``accelerate`` can split its batches between processes, and every process
    draws the same order, so no window is seen twice in an epoch.
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(Windows(data, block_size), batch_size=batch_size, shuffle=True,
                                       drop_last=True, generator=generator)


def make_blocks(data: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack the stream into consecutive non-overlapping blocks: inputs and targets, each (n_blocks, block_size)."""
    n = (len(data) - 1) // block_size
    if n < 1:
        raise ValueError(f"the data has {len(data)} tokens, too few for one block of {block_size} (+1 target); "
                         "use a smaller block size or more text")
    return data[: n * block_size].view(n, block_size), data[1 : n * block_size + 1].view(n, block_size)


def divisibility_message(n_embd: int, n_head: int, embd: str = "n_embd={}", head: str = "n_head={}") -> str:
    """Why ``n_embd`` must be a multiple of ``n_head``, with the nearest multiples below and above."""
    below, above = n_head * (n_embd // n_head), n_head * (n_embd // n_head + 1)
    near = f"{below} or {above}" if below else f"{above}"
    return (f"{embd.format(n_embd)} is not divisible by {head.format(n_head)} (each head gets n_embd / n_head "
            f"dimensions): use a multiple of {n_head} such as {near}, or a number of heads that divides {n_embd}")


def check_out_dir(out: str | Path) -> None:
    """Raise ValueError unless a checkpoint folder can be written at ``out`` (checked before training)."""
    out = Path(out)
    existing = next(p for p in (out, *out.parents) if p.exists() or p == Path(p.anchor))
    if existing != out and not existing.is_dir():
        raise ValueError(f"--out {out}: {existing} is a file, so no folder can be made under it; choose another path")
    if existing == out and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for the checkpoint")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: {existing} is not writable for you; choose another path")


def build_gpt2(vocab_size: int, n_layer: int = 4, n_head: int = 4, n_embd: int = 128, block_size: int = 64,
               dropout: float = 0.0, eos_token_id: int | None = None) -> GPT2LMHeadModel:
    """A freshly initialised GPT-2 of the given size, with PyTorch's sdpa attention and exact GELU.

    The exact GELU (nanoGPT's choice) runs about 3x faster on CPUs than GPT-2's tanh approximation.
    """
    for name, value in dict(vocab_size=vocab_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                            block_size=block_size).items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if n_embd % n_head:
        raise ValueError(divisibility_message(n_embd, n_head, "n_embd={}", "n_head={}"))
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    config = GPT2Config(vocab_size=vocab_size, n_positions=block_size, n_embd=n_embd, n_layer=n_layer,
                        n_head=n_head, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                        bos_token_id=eos_token_id, eos_token_id=eos_token_id, pad_token_id=eos_token_id,
                        activation_function="gelu", attn_implementation="sdpa")
    model = GPT2LMHeadModel(config)
    model.loss_type = "ForCausalLM"  # what labels=... computes (GPT-2's class name does not say it)
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


def lm_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy of next-token prediction for a batch ``(x, y)`` from ``get_batch``."""
    x, y = batch
    logits = model(input_ids=x, use_cache=False).logits
    return F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))


@torch.no_grad()
def estimate_loss(model: torch.nn.Module, data: torch.Tensor, block_size: int, max_blocks: int | None = 200,
                  batch_size: int = 64) -> float:
    """Mean loss (nats per token) over packed blocks of ``data``, at most ``max_blocks`` spread evenly."""
    x, y = make_blocks(data, block_size)
    if max_blocks is not None and len(x) > max_blocks:
        keep = torch.linspace(0, len(x) - 1, max_blocks).long()
        x, y = x[keep], y[keep]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = 0.0
    for i in range(0, len(x), batch_size):
        batch = (x[i : i + batch_size].to(device), y[i : i + batch_size].to(device))
        total += lm_loss(model, batch).item() * batch[0].numel()
    model.train(was_training)
    return total / x.numel()


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' picks CUDA, then MPS, then CPU; asking for a device this machine lacks is a ValueError."""
    name = str(device)
    kind = name.split(":")[0]
    if kind not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {name!r}")
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available here: use 'cpu' or 'auto'")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' was asked for but MPS (Apple GPU) is not available here: use 'cpu' or 'auto'")
    return torch.device(name)


def save_checkpoint(model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast, out_dir: str | Path,
                    info: dict | None = None) -> Path:
    """Save model and tokenizer with ``save_pretrained`` (plus ``pretrain.json`` with ``info``); returns the folder."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if info is not None:
        (out_dir / "pretrain.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return out_dir


def load_checkpoint(path: str | Path) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]:
    """Load a checkpoint written by ``save_checkpoint`` (or any causal LM folder) in eval mode."""
    if not (Path(path) / "config.json").is_file():
        raise ValueError(f"{path} has no config.json: give the folder that `course pretrain --out` wrote")
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def pretrain(text: str, tokenizer_kind: str = "char", vocab_size: int = 512, n_layer: int = 4, n_head: int = 4,
             n_embd: int = 128, block_size: int = 64, batch_size: int = 12, max_iters: int = 2000,
             lr: float = 1e-3, warmup: int = 100, min_lr_ratio: float = 0.1, weight_decay: float = 0.1,
             dropout: float = 0.0, eval_interval: int = 250, eval_blocks: int = 200, device: str = "auto",
             seed: int = 0, out_dir: str | Path | None = None, progress: bool = True, verbose: bool = True,
             tokenizer: PreTrainedTokenizerFast | None = None,
             callback: Callable[[int, History], None] | None = None, val_text: str | None = None,
             accelerator=None) -> Pretrained:
    """Train a GPT-2 on ``text`` and return ``(model, tokenizer, history, val_loss)``; save it to ``out_dir`` if given.

    Validation uses ``val_text`` when given (all of ``text`` is then trained on), else the last 10% of ``text``.
    With an ``accelerate.Accelerator`` it trains on the accelerator's processes and device (``device`` is
    then ignored); ``batch_size`` is the global batch, split between the processes.
    """
    main_process = accelerator is None or accelerator.is_main_process
    if accelerator is not None and batch_size % accelerator.num_processes:
        raise ValueError(f"batch_size={batch_size} cannot be split between {accelerator.num_processes} processes: "
                         "use a multiple of the number of processes")
    device = accelerator.device if accelerator is not None else resolve_device(device)
    for name, value in dict(max_iters=max_iters, batch_size=batch_size, eval_interval=eval_interval).items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    seed_everything(seed)
    tokenizer, ids = encode_text(text, tokenizer_kind, vocab_size, tokenizer)
    train_ids, val_ids = (ids, encode_text(val_text, tokenizer=tokenizer)[1]) if val_text is not None else split_ids(ids)
    if len(val_ids) <= block_size:
        where = "val_text" if val_text is not None else f"the last 10% of {len(ids)}"
        raise ValueError(f"block_size={block_size} is larger than the validation data ({len(val_ids)} tokens, "
                         f"{where}): use a smaller block size or a longer text")
    model = build_gpt2(len(tokenizer), n_layer, n_head, n_embd, block_size, dropout, tokenizer.eos_token_id)
    say = tqdm.write if verbose and main_process else (lambda *a, **k: None)
    say(f"{len(ids):,} tokens ({tokenizer_kind}, vocab {len(tokenizer)}): {len(train_ids):,} train, "
        f"{len(val_ids):,} val | model {count_parameters(model):,} parameters | device {device}")

    def report(step: int, history: History) -> None:
        if history.evals and history.evals[-1][0] == step:
            recent = history.losses[-min(len(history.losses), eval_interval):]
            say(f"step {step:>5}/{max_iters}: train loss {sum(recent) / len(recent):.4f}, "
                f"val loss {history.evals[-1][1]:.4f}, {history.tokens_per_s:,.0f} tokens/s")
        if callback is not None:
            callback(step, history)

    history = train(model, window_loader(train_ids, block_size, batch_size, seed), steps=max_iters,
                    lr=lr, warmup=min(warmup, max_iters - 1), weight_decay=weight_decay, clip=1.0, device=device,
                    loss_fn=lm_loss, eval_fn=lambda: estimate_loss(model, val_ids, block_size, eval_blocks),
                    eval_every=eval_interval, progress=progress and main_process, desc="pretraining",
                    betas=(0.9, 0.99), min_lr_ratio=min_lr_ratio, callback=report, accelerator=accelerator)
    val_loss = history.evals[-1][1]
    say(f"done: val loss {val_loss:.4f} (perplexity {math.exp(val_loss):.2f}), "
        f"{history.tokens_per_s:,.0f} tokens/s over {max_iters * batch_size * block_size:,} training tokens")
    if out_dir is not None and main_process:
        info = dict(tokenizer=tokenizer_kind, n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size,
                    batch_size=batch_size, max_iters=max_iters, lr=lr, val_loss=val_loss,
                    tokens_per_s=history.tokens_per_s, parameters=count_parameters(model),
                    processes=accelerator.num_processes if accelerator is not None else 1,
                    train_losses=history.losses)
        save_checkpoint(model, tokenizer, out_dir, info)
        say(f"saved to {out_dir}: load it with AutoModelForCausalLM.from_pretrained({str(out_dir)!r})")
    if accelerator is not None:
        accelerator.wait_for_everyone()  # no process exits before the checkpoint is written
    return Pretrained(model.eval(), tokenizer, history, val_loss)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `course pretrain` (nanoGPT's names; defaults are its CPU Shakespeare setting)."""
    parser.add_argument("--text", required=True, help="a UTF-8 text file to train on")
    parser.add_argument("--tokenizer", choices=TOKENIZERS, default="char", help="char (default) or bpe")
    parser.add_argument("--vocab-size", type=int, default=512, help="BPE vocabulary size (default: 512)")
    parser.add_argument("--n-layer", type=int, default=4, help="transformer blocks (default: 4)")
    parser.add_argument("--n-head", type=int, default=4, help="attention heads per block (default: 4)")
    parser.add_argument("--n-embd", type=int, default=128,
                        help="embedding width, a multiple of --n-head (default: 128)")
    parser.add_argument("--block-size", type=int, default=64, help="context length in tokens (default: 64)")
    parser.add_argument("--batch-size", type=int, default=12,
                        help="windows per step over all processes (default: 12); split between processes")
    parser.add_argument("--grad-accum", type=int, default=1,
                        help="batches accumulated per optimizer step (default: 1): a larger batch in the same memory")
    parser.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default=None,
                        help="autocast on GPU (default: what `accelerate config`/`accelerate launch` set, else no)")
    parser.add_argument("--max-iters", type=int, default=2000, help="optimizer steps (default: 2000)")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default: 1e-3)")
    parser.add_argument("--warmup", type=int, default=100, help="warm-up steps (default: 100)")
    parser.add_argument("--dropout", type=float, default=0.0, help="dropout probability, in [0, 1) (default: 0)")
    parser.add_argument("--eval-interval", type=int, default=250,
                        help="steps between validation losses (default: 250)")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="auto (default), cpu, cuda or mps")
    parser.add_argument("--seed", type=int, default=0, help="random seed of data order and weights (default: 0)")
    parser.add_argument("--out", default="out-pretrain", help="checkpoint folder to write (default: out-pretrain)")
    parser.add_argument("--sample", type=int, default=200,
                        help="tokens to sample at the end, at most block size - 1; 0: none (default: 200)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only; default: a bar)")
    parser.add_argument("--num-processes", type=int, default=1,
                        help="data-parallel processes on this machine (default: 1); >1 restarts the command under "
                             "`accelerate launch`, on CPU with an equal share of the cores per process")


def command_line(args: argparse.Namespace) -> list[str]:
    """The `course pretrain` options that give ``args`` (those left at their default and --num-processes omitted)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = []
    for action in parser._actions:
        value = getattr(args, action.dest, action.default)
        if not action.option_strings or action.dest == "num_processes" or value == action.default:
            continue
        argv += [action.option_strings[0]] if action.nargs == 0 else [action.option_strings[0], str(value)]
    return argv


def accelerate_launch(num_processes: int) -> list[str]:
    """`accelerate launch` for ``num_processes`` processes on this machine (GPUs, or CPU processes joined by gloo).

    accelerate 1.15 starts several CPU processes only through ``--multi_gpu`` (torchrun); without a GPU the
    course's Accelerator(cpu=True) then joins them with the gloo backend.
    """
    return [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes",
            str(num_processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def launch_command(argv: list[str], num_processes: int, cores: int | None = None) -> tuple[list[str], dict]:
    """The `accelerate launch` command and environment that rerun `course pretrain ARGV` in ``num_processes`` processes."""
    if not isinstance(num_processes, int) or num_processes < 2:
        raise ValueError(f"num_processes must be an int >= 2 to launch, got {num_processes!r}")
    command = accelerate_launch(num_processes) + ["-m", "course_utils", "pretrain", *argv]
    threads = max(1, (cores or os.cpu_count() or 1) // num_processes)  # processes x threads = cores, not more
    return command, {"OMP_NUM_THREADS": str(threads), **os.environ}


def make_accelerator(device: str = "auto", grad_accum: int = 1, mixed_precision: str | None = None):
    """The ``accelerate.Accelerator`` of `course pretrain`: one process, or the ones `accelerate launch` started."""
    from accelerate import Accelerator, DataLoaderConfiguration

    if not isinstance(grad_accum, int) or grad_accum < 1:
        raise ValueError(f"grad_accum must be a positive int, got {grad_accum!r}")
    on_cpu = resolve_device(device).type == "cpu"  # also a clear error for a device this machine lacks
    # cpu=True makes processes started by `accelerate launch` (torchrun) on a CPU machine join with gloo
    return Accelerator(cpu=on_cpu, gradient_accumulation_steps=grad_accum, mixed_precision=mixed_precision,
                       dataloader_config=DataLoaderConfiguration(split_batches=True))


def main(args: argparse.Namespace) -> int:
    """Run `course pretrain`; returns the exit code (2 with a message on bad input)."""
    transformers.utils.logging.disable_progress_bar()  # our own bar reports training; no "Writing model shards"
    if args.num_processes < 1:
        print(f"course pretrain: --num-processes must be at least 1, got {args.num_processes}", file=sys.stderr)
        return 2
    try:  # mistakes in the arguments are found now, not after training
        if args.n_head >= 1 and args.n_embd % args.n_head:
            raise ValueError(divisibility_message(args.n_embd, args.n_head, "--n-embd {}", "--n-head {}"))
        check_out_dir(args.out)
    except ValueError as exc:
        print(f"course pretrain: {exc}", file=sys.stderr)
        return 2
    if args.num_processes > 1 and "LOCAL_RANK" not in os.environ:  # not started by a launcher yet: become one
        command, env = launch_command(command_line(args), args.num_processes)
        return subprocess.run(command, env=env).returncode
    try:
        text = read_text_file(args.text, min_chars=MIN_CHARS)
        accelerator = make_accelerator(args.device, args.grad_accum, args.mixed_precision)
        model, tokenizer, _, _ = pretrain(
            text, args.tokenizer, vocab_size=args.vocab_size, n_layer=args.n_layer, n_head=args.n_head,
            n_embd=args.n_embd, block_size=args.block_size, batch_size=args.batch_size, max_iters=args.max_iters,
            lr=args.lr, warmup=args.warmup, dropout=args.dropout, eval_interval=args.eval_interval,
            seed=args.seed, out_dir=args.out, progress=not args.no_progress, accelerator=accelerator)
    except (ValueError, FloatingPointError) as exc:  # bad input, or a diverging run (lower --lr)
        print(f"course pretrain: {exc}", file=sys.stderr)
        return 2
    if args.sample > 0 and accelerator.is_main_process:  # one sample from a newline, as long as the context allows
        prompt = tokenizer.backend_tokenizer.encode("\n").ids[:1] or [tokenizer.eos_token_id]
        out = model.generate(torch.tensor([prompt], device=model.device), do_sample=True, top_k=50,
                             max_new_tokens=min(args.sample, model.config.n_positions - 1))
        print("sample:\n" + tokenizer.decode(out[0, 1:]))
    return 0
