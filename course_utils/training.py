"""A small training loop (AdamW, warm-up + cosine schedule, gradient clipping) and loss plots.

``train`` works for any model whose loss comes from ``loss_fn(model, batch)``; by default that is
``model(**batch).loss``, which every `transformers` model with labels returns. Batches come from a
function (called once per step, like nanoGPT's ``get_batch``) or from any iterable (re-iterated, so a
shuffling ``DataLoader`` reshuffles every epoch). Given an ``accelerate.Accelerator``, the same loop runs
data-parallel over processes (``accelerate launch``), with its gradient accumulation and mixed precision.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from .progress import tqdm
from transformers import get_cosine_with_min_lr_schedule_with_warmup


@dataclass
class History:
    """What ``train`` measured: the training loss and learning rate per step, and any evaluations."""

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    evals: list[tuple[int, float]] = field(default_factory=list)
    tokens_per_s: float = float("nan")  # training tokens per second so far (evaluation time excluded)
    lrs: list[float] = field(default_factory=list)


def default_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """The loss a `transformers` model returns when the batch carries labels."""
    return model(**batch).loss


def _batch_source(batches: Callable[[], dict] | Iterable[dict]) -> Callable[[], dict]:
    if callable(batches):
        return batches
    if isinstance(batches, Iterator):  # a generator runs once: keep its batches and cycle through them
        batches = list(batches)
    if isinstance(batches, Iterable):
        stream = _epochs(batches)
        return lambda: next(stream)
    raise TypeError("batches must be a function returning a batch, or an iterable of batches")


def _epochs(batches: Iterable) -> Iterator:
    """The batches of ``batches``, epoch after epoch (each epoch a fresh pass, so loaders reshuffle)."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise ValueError("batches is empty: give at least one batch")


def _to(batch, device):
    if isinstance(batch, dict):
        return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(v.to(device) if torch.is_tensor(v) else v for v in batch)
    return batch.to(device)


def _count_tokens(batch) -> int:
    first = next(iter(batch.values())) if isinstance(batch, dict) else batch[0] if isinstance(batch, (tuple, list)) else batch
    return first.numel() if torch.is_tensor(first) else 0


def train(model: torch.nn.Module, batches, steps: int, lr: float = 1e-3, warmup: int | None = None,
          weight_decay: float = 0.01, clip: float = 1.0, device: torch.device | str | None = None,
          loss_fn: Callable = default_loss, eval_fn: Callable[[], float] | None = None,
          eval_every: int = 0, progress: bool = True, desc: str = "training",
          betas: tuple[float, float] = (0.9, 0.999), min_lr_ratio: float = 0.0,
          callback: Callable[[int, History], None] | None = None, fused: bool | None = None,
          accelerator=None, optimizer_class: type | None = None) -> History:
    """Train ``model`` for ``steps`` optimizer steps and return the loss history.

    The learning rate warms up linearly for ``warmup`` steps, then follows a cosine down to
    ``min_lr_ratio * lr``. ``callback(step, history)`` runs after every step (live plots, logging).
    ``fused=None`` uses PyTorch's fused AdamW on CPU and CUDA (faster; same update rule); ``optimizer_class``
    replaces AdamW with another class taking the same parameter groups (e.g. bitsandbytes' ``PagedAdamW``).
    With an ``accelerate.Accelerator`` (see ``course_utils.pretrain``), model, optimizer and a
    ``DataLoader`` of batches are prepared by it: each step then takes ``gradient_accumulation_steps``
    batches, gradients are averaged over processes, and the logged loss is the mean over processes.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be between 0 and 1, got {min_lr_ratio}")
    if accelerator is not None:
        device = accelerator.device
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device).train()
    warmup = max(1, steps // 10) if warmup is None else warmup
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    if fused is None:
        fused = optimizer_class is None and device.type in ("cpu", "cuda")
    optimizer = (optimizer_class or torch.optim.AdamW)([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=betas,
                                  **({"fused": True} if fused else {}))
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(optimizer, warmup, steps, min_lr_rate=min_lr_ratio)
    micro, processes, wrapped = 1, 1, model
    if accelerator is not None:
        micro, processes = accelerator.gradient_accumulation_steps, accelerator.num_processes
        wrapped, optimizer = accelerator.prepare(model, optimizer)  # the scheduler is stepped once per step below
        if isinstance(batches, torch.utils.data.DataLoader):
            batches = accelerator.prepare(batches)  # each process gets its own part of every batch
    next_batch = _batch_source(batches)
    backward = accelerator.backward if accelerator is not None else torch.Tensor.backward
    clip_norm = accelerator.clip_grad_norm_ if accelerator is not None else torch.nn.utils.clip_grad_norm_
    optimizer.zero_grad(set_to_none=True)  # gradients left by earlier code must not leak into step 1
    history, n_tokens, overhead = History(), 0, 0.0  # overhead: time in evaluations and callbacks
    start = time.perf_counter()
    bar = tqdm(range(1, steps + 1), desc=desc, disable=not progress, mininterval=0.5)
    for step in bar:
        loss_value = 0.0
        for _ in range(micro):  # gradient accumulation: several batches, one optimizer step
            batch = _to(next_batch(), device)
            n_tokens += _count_tokens(batch) * processes
            with accelerator.accumulate(wrapped) if accelerator is not None else nullcontext():
                loss = loss_fn(wrapped, batch)
                mean_loss = accelerator.reduce(loss.detach(), "mean") if processes > 1 else loss
                loss_value += mean_loss.item() / micro  # the one host sync per batch
                if not math.isfinite(loss_value):
                    raise FloatingPointError(f"loss became {loss_value} at step {step}: lower lr (now {lr}) or check the data")
                backward(loss)
                if clip and (accelerator is None or accelerator.sync_gradients):
                    clip_norm(model.parameters(), clip)
                if accelerator is None or accelerator.sync_gradients:
                    history.lrs.append(scheduler.get_last_lr()[0])
                optimizer.step()  # a prepared optimizer steps only when the accumulated gradients are synced
                optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        history.steps.append(step)
        history.losses.append(loss_value)
        history.tokens_per_s = n_tokens / max(time.perf_counter() - start - overhead, 1e-9)
        extra_start = time.perf_counter()
        if eval_fn is not None and eval_every and (step % eval_every == 0 or step == steps):
            model.eval()
            history.evals.append((step, float(eval_fn())))
            model.train()
        if callback is not None:
            callback(step, history)
        overhead += time.perf_counter() - extra_start
        if step % 10 == 0 or step == steps:
            bar.set_postfix(loss=f"{loss_value:.3f}")
    model.eval()
    return history


class LiveLossPlot:
    """A ``train`` callback that redraws the loss curve in place in a notebook (every ``every`` steps and at each evaluation)."""

    def __init__(self, every: int = 25, baseline: float | None = None, baseline_label: str = "baseline",
                 title: str = "training loss (live)"):
        import matplotlib.pyplot as plt
        from IPython.display import display

        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        self.every, self.baseline, self.baseline_label, self.title = every, baseline, baseline_label, title
        self.fig, self.ax = plt.subplots(figsize=(6, 3.5))
        plt.close(self.fig)  # shown only through the display handle, which is updated in place
        self.handle = display(self.fig, display_id=True)

    def __call__(self, step: int, history: History) -> None:
        if step % self.every and not (history.evals and history.evals[-1][0] == step):
            return
        self.ax.clear()
        plot_losses(history, self.baseline, self.baseline_label, self.title, ax=self.ax)
        self.handle.update(self.fig)


def smooth(values: list[float], window: int = 20) -> list[float]:
    """Running mean over the last ``window`` values (for readable loss curves)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_losses(history: History, baseline: float | None = None, baseline_label: str = "baseline",
                title: str = "training loss", ax=None, unit: str = "nats / token"):
    """Plot the (smoothed) training loss, evaluations and an optional baseline; returns the axes.

    ``unit`` labels the y axis: a language-model loss is per token, DPO's or a reward model's per pair.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(history.steps, history.losses, alpha=0.3, label="loss per step")
    ax.plot(history.steps, smooth(history.losses), label="loss (running mean)")
    if history.evals:
        ax.plot(*zip(*history.evals), "o-", label="validation")
    if baseline is not None and math.isfinite(baseline):
        ax.axhline(baseline, color="gray", linestyle="--", label=baseline_label)
    ax.set_xlabel("step")
    ax.set_ylabel(f"loss ({unit})")
    ax.set_title(title)
    ax.legend()
    return ax


def plot_panels(panels, xlabel: str, axes=None, title: str = "", label: str | None = None):
    """One small panel per (name, values) curve, side by side; with ``label``, curves add to the given axes."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, len(panels), figsize=(3.25 * len(panels), 2.8))
    for ax, (name, values) in zip(axes, panels):
        if label is None:
            ax.clear()
        ax.plot(range(1, len(values) + 1), values, label=label)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(xlabel)
    axes[0].figure.suptitle(title, fontsize=11)
    axes[0].figure.tight_layout()
    return axes
