"""Diagrams the lectures draw themselves (matplotlib, no image files): the Transformer block, the
multi-head split and merge, and the encoder–decoder with cross-attention.

Each function returns a ``matplotlib.figure.Figure``; the notebooks show it with ``plt.show()``.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle

COLORS = {"attention": "#f6c38b", "ffn": "#9fd3f0", "norm": "#f3ef9a", "embed": "#c9e7b7", "head": "#d9c2ef",
          "plain": "#eeeeee"}


def _box(ax, x: float, y: float, w: float, h: float, text: str, kind: str = "plain", size: int = 9):
    """A rounded box centred at (x, y) with ``text``; returns its (bottom, top) y coordinates."""
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                facecolor=COLORS[kind], edgecolor="black", linewidth=1))
    ax.text(x, y, text, ha="center", va="center", fontsize=size)
    return y - h / 2, y + h / 2


def _arrow(ax, start: tuple[float, float], end: tuple[float, float], style: str = "-|>", **kwargs):
    """An arrow from ``start`` to ``end`` (extra kwargs go to FancyArrowPatch, e.g. connectionstyle)."""
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=12, linewidth=1.2,
                                 color=kwargs.pop("color", "black"), **kwargs))


def _canvas(width: float, height: float, title: str):
    fig, ax = plt.subplots(figsize=(width, height))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.axis("off")
    ax.set_title(title, fontsize=11)
    return fig, ax


def transformer_block(pre_norm: bool = False):
    """One Transformer encoder block: attention and feed-forward, each with a residual and a layer norm."""
    fig, ax = _canvas(4.6, 6.8, f"a Transformer block ({'pre' if pre_norm else 'post'}-norm)")
    x = 2.0
    _box(ax, x, 0.45, 2.6, 0.5, "token embeddings\n+ position embeddings", "embed", 8)
    if pre_norm:
        rows = [("layer norm", "norm"), ("multi-head\nself-attention", "attention"), ("add: x + attention(norm(x))", "plain"),
                ("layer norm ", "norm"), ("feed-forward\n(d → 4d → d)", "ffn"), ("add: x + ffn(norm(x))", "plain")]
    else:
        rows = [("multi-head\nself-attention", "attention"), ("add: x + attention(x)", "plain"), ("layer norm", "norm"),
                ("feed-forward\n(d → 4d → d)", "ffn"), ("add: x + ffn(x)", "plain"),
                ("layer norm ", "norm")]
    y, previous_top, tops = 1.25, 0.7, {}
    for text, kind in rows:
        bottom, top = _box(ax, x, y, 2.6, 0.55, text, kind, 8)
        _arrow(ax, (x, previous_top), (x, bottom))
        tops[text], previous_top, y = (bottom, top), top, y + 0.85
    _arrow(ax, (x, previous_top), (x, previous_top + 0.4))
    ax.text(x, previous_top + 0.55, "to the next block", ha="center", fontsize=8)
    adds = [t for t in tops if t.startswith("add")]  # (labels are unique: tops is keyed by them)
    # Each residual leaves the main path just before its sub-layer and re-enters at its "add" box.
    starts = [0.95, tops[adds[0]][1] + (0.85 if not pre_norm else 0.15)]
    for start, add in zip(starts, adds):
        end = (tops[add][0] + tops[add][1]) / 2
        ax.plot([x, x + 1.55, x + 1.55], [start, start, end], color="tab:red", linewidth=1.2)
        _arrow(ax, (x + 1.55, end), (x + 1.31, end), color="tab:red")
        ax.text(x + 1.65, (start + end) / 2, "residual", rotation=90, va="center", fontsize=8, color="tab:red")
    return fig


def multi_head_split(n_heads: int = 4, seq_len: int = 5, d_model: int = 16):
    """How multi-head attention splits d_model into heads, attends in each, and concatenates them back."""
    if n_heads < 1 or d_model % n_heads:
        raise ValueError(f"d_model={d_model} must be a positive multiple of n_heads={n_heads}")
    d_head, width, height = d_model // n_heads, 2.0, 1.4
    fig, ax = _canvas(11.0, 4.6, f"multi-head attention: d_model = {d_model} split into {n_heads} heads of {d_head}")
    shades = [plt.cm.Pastel1(h % 9) for h in range(n_heads)]

    def sliced(x0: float, y0: float, label: str):
        """A (seq_len x d_model) matrix drawn as one coloured column slice per head."""
        for h in range(n_heads):
            ax.add_patch(Rectangle((x0 + h * width / n_heads, y0), width / n_heads, height,
                                   facecolor=shades[h], edgecolor="black"))
        ax.text(x0 + width / 2, y0 - 0.3, label, ha="center", va="top", fontsize=8)

    sliced(0.3, 1.6, f"Q = x·W_Q  ({seq_len} × {d_model});\nK and V are split the same way")
    step = 3.6 / n_heads
    for h in range(n_heads):
        y = 4.0 - (h + 0.5) * step
        ax.add_patch(Rectangle((3.3, y - 0.25), width / n_heads, 0.5, facecolor=shades[h], edgecolor="black"))
        ax.text(3.3 + width / n_heads + 0.1, y, f"head {h + 1}\n({seq_len} × {d_head})", fontsize=7, va="center")
        _arrow(ax, (0.3 + (h + 0.5) * width / n_heads, 1.6 + height), (3.28, y))
        _box(ax, 6.0, y, 1.9, 0.5, f"softmax(q·kᵀ/√{d_head})·v", "attention", 7)
        _arrow(ax, (4.55, y), (5.03, y))
        _arrow(ax, (6.97, y), (7.7 + (h + 0.5) * width / n_heads, 1.6 + height))
    sliced(7.7, 1.6, f"concatenate the heads\n({seq_len} × {d_model})")
    _box(ax, 10.4, 1.6 + height / 2, 0.8, 0.6, "· W_O", "plain", 9)
    _arrow(ax, (7.7 + width + 0.05, 1.6 + height / 2), (9.98, 1.6 + height / 2))
    return fig


def encoder_decoder():
    """An encoder–decoder: the decoder's cross-attention reads the encoder's output as keys and values."""
    fig, ax = _canvas(7.5, 5.4, "encoder–decoder with cross-attention")
    _box(ax, 1.9, 0.5, 2.6, 0.5, "source tokens (all visible)", "embed", 8)
    _box(ax, 1.9, 1.5, 2.6, 0.6, "bidirectional\nself-attention", "attention", 8)
    _box(ax, 1.9, 2.5, 2.6, 0.6, "feed-forward", "ffn", 8)
    _box(ax, 1.9, 3.6, 2.6, 0.6, "encoder output\n(one vector per source token)", "norm", 8)
    for y0, y1 in ((0.75, 1.2), (1.8, 2.2), (2.8, 3.3)):
        _arrow(ax, (1.9, y0), (1.9, y1))
    ax.text(1.9, 4.2, "encoder (× N layers)", ha="center", fontsize=9, weight="bold")
    _box(ax, 5.6, 0.5, 2.6, 0.5, "target tokens so far", "embed", 8)
    _box(ax, 5.6, 1.5, 2.6, 0.6, "causal (masked)\nself-attention", "attention", 8)
    _box(ax, 5.6, 2.5, 2.6, 0.6, "cross-attention\nQ from decoder, K and V from encoder", "attention", 7)
    _box(ax, 5.6, 3.5, 2.6, 0.6, "feed-forward", "ffn", 8)
    _box(ax, 5.6, 4.5, 2.6, 0.5, "next-token probabilities", "plain", 8)
    for y0, y1 in ((0.75, 1.2), (1.8, 2.2), (2.8, 3.2), (3.8, 4.25)):
        _arrow(ax, (5.6, y0), (5.6, y1))
    ax.text(5.6, 5.0, "decoder (× N layers)", ha="center", fontsize=9, weight="bold")
    _arrow(ax, (3.2, 3.6), (4.3, 2.6), color="tab:red", connectionstyle="arc3,rad=-0.2")
    ax.text(3.45, 3.35, "K, V", color="tab:red", fontsize=9)
    return fig
