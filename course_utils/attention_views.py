"""Attention views that work offline: bertviz's head and model views, a static heatmap, head scores.

bertviz's views load require.js, d3 and jQuery from a CDN, so they stay blank without a network.
Here the same views are built by bertviz, then rewritten into one self-contained script: d3 and
jQuery come from ``course_utils/vendor`` (inlined, each in its own scope, so nothing global such as
a notebook's own jQuery or require.js is touched) and bertviz's two ``require`` calls are answered by
a small stand-in. The HTML works the same in JupyterLab, classic Jupyter, Colab and in a saved
file opened in a browser.
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import torch

VENDOR = Path(__file__).parent / "vendor"
# name -> (file, package, version, license); course_utils/vendor/README.md tells where they come from.
ASSETS = {"d3": ("d3.min.js", "d3", "5.7.0", "BSD-3-Clause"),
          "jquery": ("jquery.min.js", "jquery", "3.7.1", "MIT")}

_LOADER = """(function () {
  function load(code) { var module = {exports: {}}; code.call(window, module, module.exports); return module.exports; }
  var libs = {
%(libs)s
  };
  // bertviz asks require.js for jquery and d3; answer from the inlined copies once the view's div
  // is in the page (JupyterLab runs output scripts before it attaches the output).
  var require = {config: function () {}};
  function requirejs(deps, callback) {
    var tries = 0;
    (function run() {
      if (document.getElementById(%(root)s) || tries++ > 400) {
        callback.apply(null, deps.map(function (name) { return libs[name]; }));
      } else { setTimeout(run, 25); }
    })();
  }
%(view)s
})();"""


def vendored_assets() -> dict[str, Path]:
    """Name -> path of each vendored JavaScript file (d3, jquery)."""
    return {name: VENDOR / file for name, (file, *_) in ASSETS.items()}


def _script_safe(js: str) -> str:
    """Escape the two sequences that would end or confuse an inline <script> (valid in JS strings)."""
    return re.sub(r"<(?=/script|!--)", r"\\x3C", js, flags=re.IGNORECASE)


def _offline(html: str) -> str:
    """Rewrite bertviz's CDN-loading HTML into HTML with d3 and jQuery inlined."""
    html = re.sub(r'<script src="[^"]*"></script>', "", html)
    match = re.search(r'<script type="text/javascript">(.*)</script>', html, flags=re.DOTALL)
    root = re.search(r'id="(bertviz-[0-9a-f]+)"', html)
    if match is None or root is None or "require.config" not in match.group(1):
        raise RuntimeError("unexpected HTML from this bertviz version: course_utils.attention_views "
                           "needs updating (it was written for bertviz 1.4)")
    view = re.sub(r"require\.config\(\s*\{.*?\}\s*\)\s*;", "", match.group(1), count=1, flags=re.DOTALL)
    libs = ",\n".join(f"    {name}: load(function (module, exports, define) {{\n{path.read_text('utf-8')}\n}})"
                      for name, path in vendored_assets().items())
    script = _LOADER % {"libs": libs, "root": json.dumps(root.group(1)), "view": view}
    return html[:match.start()] + '<script type="text/javascript">\n' + _script_safe(script) + "\n</script>\n"


def _check_attention(attention, tokens) -> None:
    """Raise a clear error unless ``attention`` is a sequence of [1, heads, seq, seq] tensors matching ``tokens``."""
    if attention is None:
        return
    if isinstance(attention, torch.Tensor) or not isinstance(attention, Sequence) or not attention:
        raise TypeError("attention must be a tuple of tensors, one per layer, each [1, heads, seq, seq]: "
                        "pass the first value returned by get_attention(model, tokenizer, text)")
    for i, layer in enumerate(attention):
        if not isinstance(layer, torch.Tensor) or layer.dim() != 4 or layer.shape[0] != 1:
            shape = tuple(layer.shape) if isinstance(layer, torch.Tensor) else type(layer).__name__
            raise ValueError(f"attention[{i}] is {shape}; each layer must be [1, heads, seq, seq] "
                             "(one sentence: batch size 1)")
    if tokens is not None and (isinstance(tokens, str) or len(tokens) != attention[0].shape[-1]):
        raise ValueError(f"tokens must be a list of {attention[0].shape[-1]} strings, one per position "
                         "of the attention: pass the tokens returned by get_attention")


def _show(html: str, html_action: str):
    """Display the HTML in the notebook ('view') or return it as an IPython HTML object ('return')."""
    from IPython.display import HTML, display
    if html_action == "view":
        display(HTML(html))
        return None
    return HTML(html)


def _check_action(html_action: str) -> None:
    """Raise unless ``html_action`` is 'view' or 'return'."""
    if html_action not in ("view", "return"):
        raise ValueError(f"html_action must be 'view' (show it in the notebook) or 'return' (get the HTML), "
                         f"not {html_action!r}")


def head_view(attention=None, tokens=None, sentence_b_start=None, *, html_action: str = "view", **kwargs):
    """bertviz's head view, offline; other keyword arguments (layer, heads, ...) go to bertviz."""
    import bertviz
    _check_action(html_action)
    _check_attention(attention, tokens)
    html = bertviz.head_view(attention, tokens, sentence_b_start, html_action="return", **kwargs).data
    return _show(_offline(html), html_action)


def model_view(attention=None, tokens=None, sentence_b_start=None, *, html_action: str = "view", **kwargs):
    """bertviz's model view, offline; other keyword arguments (display_mode, ...) go to bertviz."""
    import bertviz
    _check_action(html_action)
    _check_attention(attention, tokens)
    html = bertviz.model_view(attention, tokens, sentence_b_start, html_action="return", **kwargs).data
    return _show(_offline(html), html_action)


def save_view(html_or_obj, path: str | Path) -> Path:
    """Write a view (HTML string or object with ``.data``) as a standalone .html file; returns its path."""
    html = getattr(html_or_obj, "data", html_or_obj)
    if not isinstance(html, str):
        raise TypeError("save_view needs the HTML: pass head_view(..., html_action='return') or a string")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('<!DOCTYPE html>\n<html>\n<head><meta charset="utf-8"><title>Attention view</title></head>\n'
                    f"<body>\n{html}\n</body>\n</html>\n", encoding="utf-8")
    return path


@torch.no_grad()
def get_attention(model, tokenizer, text: str | tuple[str, str]) -> tuple[tuple[torch.Tensor, ...], list[str]]:
    """Run ``model`` on ``text`` (or a sentence pair); return (attentions per layer [1, heads, seq, seq], tokens)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError("model must be a transformers model (a torch.nn.Module), e.g. from load_pretrained")
    if not callable(tokenizer) or not hasattr(tokenizer, "convert_ids_to_tokens"):
        raise TypeError("tokenizer must be a transformers tokenizer, e.g. the second value of load_pretrained")
    pair = isinstance(text, tuple) and len(text) == 2 and all(isinstance(t, str) for t in text)
    if not (isinstance(text, str) or pair):
        raise TypeError("text must be a string or a pair of strings (sentence_a, sentence_b)")
    inputs = tokenizer(*text, return_tensors="pt") if pair else tokenizer(text, return_tensors="pt")
    device = next(model.parameters(), torch.empty(0)).device
    was_training = model.training
    model.eval()
    try:
        out = model(**inputs.to(device), output_attentions=True)
    finally:
        model.train(was_training)
    attentions = getattr(out, "attentions", None)
    if not attentions or any(a is None for a in attentions):
        raise ValueError("the model returned no attention weights: load it with attn_implementation='eager' "
                         "(course_utils.models.load_pretrained does), e.g. "
                         "AutoModel.from_pretrained(name, attn_implementation='eager')")
    return tuple(a.detach().float().cpu() for a in attentions), tokenizer.convert_ids_to_tokens(inputs["input_ids"][0])


def plot_attention(attn: torch.Tensor, tokens: Sequence[str], ax=None, title: str | None = None):
    """Heatmap of one head's attention [seq, seq]: queries on rows, keys on columns; returns the axes."""
    import matplotlib.pyplot as plt
    attn = torch.as_tensor(attn).detach().float().cpu()
    if attn.dim() != 2 or attn.shape[0] != attn.shape[1]:
        raise ValueError(f"attn must be one head's [seq, seq] matrix, got {tuple(attn.shape)}: "
                         "use attentions[layer][0, head]")
    if isinstance(tokens, str) or len(tokens) != attn.shape[0]:
        raise ValueError(f"tokens must be a list of {attn.shape[0]} strings, one per row of attn")
    if ax is None:
        size = 2 + 0.35 * len(tokens)
        _, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(attn.numpy(), cmap="viridis", vmin=0.0)
    ax.set_xticks(range(len(tokens)), list(tokens), rotation=90)
    ax.set_yticks(range(len(tokens)), list(tokens))
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if title is not None:
        ax.set_title(title)
    return ax


def _stack(attentions) -> torch.Tensor:
    """Attentions as one [layers, heads, seq, seq] tensor (from a tuple of [1, heads, seq, seq] or a 4-D tensor)."""
    if isinstance(attentions, torch.Tensor):
        stacked = attentions
    elif isinstance(attentions, Sequence) and attentions and all(isinstance(a, torch.Tensor) for a in attentions):
        stacked = torch.stack([a[0] if a.dim() == 4 and a.shape[0] == 1 else a for a in attentions])
    else:
        raise TypeError("attentions must be the tuple from get_attention or a [layers, heads, seq, seq] tensor")
    if stacked.dim() != 4 or stacked.shape[-1] != stacked.shape[-2] or stacked.shape[-1] < 2:
        raise ValueError(f"attentions must stack to [layers, heads, seq, seq] with seq >= 2, got {tuple(stacked.shape)}")
    return stacked.detach().float().cpu()


def previous_token_score(attentions) -> torch.Tensor:
    """[layers, heads]: mean attention from each token to the token right before it."""
    return torch.diagonal(_stack(attentions), offset=-1, dim1=-2, dim2=-1).mean(-1)


def self_score(attentions) -> torch.Tensor:
    """[layers, heads]: mean attention from each token to itself."""
    return torch.diagonal(_stack(attentions), dim1=-2, dim2=-1).mean(-1)


def sep_score(attentions, tokens: Sequence[str] | None = None, sep_token: str = "[SEP]") -> torch.Tensor:
    """[layers, heads]: mean attention mass on ``sep_token`` positions (on the last token if no tokens given)."""
    stacked = _stack(attentions)
    if tokens is None:
        keys = [stacked.shape[-1] - 1]
    else:
        keys = [i for i, t in enumerate(tokens) if t == sep_token]
        if len(tokens) != stacked.shape[-1] or not keys:
            raise ValueError(f"tokens must be the {stacked.shape[-1]} tokens of the input and contain {sep_token!r} "
                             "(or pass tokens=None to score attention to the last token)")
    return stacked[..., keys].sum(-1).mean(-1)


def head_scores(attentions, tokens: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """All head scores at once: {'previous': ..., 'self': ..., 'sep': ...}, each [layers, heads]."""
    return {"previous": previous_token_score(attentions), "self": self_score(attentions),
            "sep": sep_score(attentions, tokens if tokens is not None and "[SEP]" in tokens else None)}


def top_head(scores: torch.Tensor) -> tuple[int, int]:
    """(layer, head) of the highest score in a [layers, heads] tensor."""
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2:
        raise TypeError("scores must be a [layers, heads] tensor, e.g. previous_token_score(attentions)")
    layer, head = divmod(int(scores.argmax()), scores.shape[1])
    return layer, head
