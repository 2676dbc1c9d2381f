"""Fast tests of course_utils.attention_views: offline HTML, vendored files, heatmap, head scores."""
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import BertConfig, BertModel  # noqa: E402

from course_utils import attention_views as av  # noqa: E402
from course_utils.world.tokenization import train_wordpiece  # noqa: E402

# URLs that may appear in the inlined code: XML namespaces and comments, never fetched.
HARMLESS_URLS = ("http://www.w3.org/", "https://d3js.org", "https://github.com/tensorflow/")


@pytest.fixture(scope="module")
def tiny():
    """A tiny random BERT with eager attention and a WordPiece tokenizer trained on two sentences."""
    tokenizer = train_wordpiece(["the cat sat on the mat", "the dog chased the cat in the park"] * 5,
                                vocab_size=60)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, attn_implementation="eager")
    return BertModel(config), tokenizer


@pytest.fixture(scope="module")
def attn(tiny):
    return av.get_attention(*tiny, "the cat sat on the mat")


def test_get_attention_shapes_and_tokens(tiny):
    model, tokenizer = tiny
    model.train()
    attentions, tokens = av.get_attention(model, tokenizer, "the cat sat on the mat")
    assert tokens == ["[CLS]", "the", "cat", "sat", "on", "the", "mat", "[SEP]"]
    assert len(attentions) == 2 and all(a.shape == (1, 2, 8, 8) for a in attentions)
    assert torch.allclose(attentions[0].sum(-1), torch.ones(1, 2, 8), atol=1e-5)
    assert not attentions[0].requires_grad and model.training  # no graph kept, mode restored
    pair, pair_tokens = av.get_attention(model, tokenizer, ("the cat sat", "the dog"))
    assert pair_tokens.count("[SEP]") == 2 and pair[0].shape[-1] == len(pair_tokens)


def test_get_attention_errors(tiny):
    model, tokenizer = tiny
    with pytest.raises(TypeError, match="string or a pair"):
        av.get_attention(model, tokenizer, ["a list", "of texts"])
    with pytest.raises(TypeError, match="torch.nn.Module"):
        av.get_attention("bert", tokenizer, "the cat")
    with pytest.raises(TypeError, match="tokenizer"):
        av.get_attention(model, None, "the cat")
    sdpa = BertModel(BertConfig(**{**model.config.to_dict(), "attn_implementation": "sdpa"}))
    with pytest.raises(ValueError, match="attn_implementation='eager'"):
        av.get_attention(sdpa, tokenizer, "the cat")


@pytest.mark.parametrize("view", [av.head_view, av.model_view])
def test_views_are_offline_and_inline_the_vendored_code(attn, view):
    attentions, tokens = attn
    html = view(attentions, tokens, html_action="return").data
    assert "cdn" not in html.lower() and "require.config" not in html
    markup, script = html.split("<script", 1)
    assert not re.search(r"\b(src|href)\s*=", markup + script.split(">", 1)[0]), "nothing may load from a URL"
    urls = re.findall(r"https?://[^\s\"'`)]+", html)
    assert all(url.startswith(HARMLESS_URLS) for url in urls), sorted(set(urls))
    for path in av.vendored_assets().values():
        assert path.read_text("utf-8").strip() in html
    assert html.lower().count("</script") == 1 and html.rstrip().endswith("</script>")  # one inline script
    assert re.search(r'<div id="bertviz-[0-9a-f]+"', html) and '"cat"' in html


def test_view_escapes_script_breaking_tokens(attn):
    attentions, tokens = attn
    html = av.head_view(attentions, tokens[:-1] + ["</script><!--"], html_action="return").data
    assert html.lower().count("</script") == 1 and "<!--" not in html


def test_view_actions_and_bad_input(attn, monkeypatch):
    attentions, tokens = attn
    shown = []
    monkeypatch.setattr("IPython.display.display", shown.append)
    assert av.model_view(attentions, tokens, display_mode="light") is None
    assert len(shown) == 1 and "bertviz-" in shown[0].data
    with pytest.raises(ValueError, match="'view'.*'return'"):
        av.head_view(attentions, tokens, html_action="save")
    with pytest.raises(ValueError, match="8 strings"):
        av.head_view(attentions, tokens[:-1], html_action="return")
    with pytest.raises(ValueError, match=r"\[1, heads, seq, seq\]"):
        av.model_view([a[0] for a in attentions], tokens, html_action="return")
    with pytest.raises(TypeError, match="tuple of tensors"):
        av.head_view(torch.stack(attentions), tokens, html_action="return")


def test_save_view_writes_standalone_html(attn, tmp_path):
    attentions, tokens = attn
    view = av.head_view(attentions, tokens, html_action="return")
    path = av.save_view(view, tmp_path / "sub" / "head.html")
    text = path.read_text("utf-8")
    assert text.startswith("<!DOCTYPE html>") and view.data in text and text.rstrip().endswith("</html>")
    assert av.save_view(view.data, tmp_path / "again.html").read_text("utf-8") == text
    with pytest.raises(TypeError, match="html_action='return'"):
        av.save_view(None, tmp_path / "none.html")


def test_vendored_assets_exist_with_licenses():
    assets = av.vendored_assets()
    assert set(assets) == {"d3", "jquery"}
    for name, path in assets.items():
        assert path.is_file() and path.stat().st_size > 10_000, path
        license_text = path.with_name(f"{name}.LICENSE").read_text("utf-8")
        assert "Copyright" in license_text and ("Permission" in license_text or "Redistribution" in license_text)
        assert f"| `{path.name}` |" in (path.parent / "README.md").read_text("utf-8")
    assert "d3js.org v5.7.0" in assets["d3"].read_text("utf-8")
    assert "jQuery v3.7.1" in assets["jquery"].read_text("utf-8")
    assert sum(p.stat().st_size for p in assets.values()) < 400_000


def test_plot_attention_labels_and_errors(attn):
    attentions, tokens = attn
    ax = av.plot_attention(attentions[1][0, 0], tokens, title="layer 1, head 0")
    assert [t.get_text() for t in ax.get_xticklabels()] == tokens
    assert [t.get_text() for t in ax.get_yticklabels()] == tokens
    assert ax.get_title() == "layer 1, head 0" and len(ax.figure.axes) == 2  # heatmap + colorbar
    assert ax.images[0].get_array().shape == (8, 8)
    plt.close(ax.figure)
    _, given = plt.subplots()
    assert av.plot_attention(torch.eye(3), ["a", "b", "c"], ax=given) is given
    plt.close(given.figure)
    with pytest.raises(ValueError, match=r"attentions\[layer\]\[0, head\]"):
        av.plot_attention(attentions[0], tokens)
    with pytest.raises(ValueError, match="8 strings"):
        av.plot_attention(attentions[0][0, 0], tokens[:3])


def _pattern(seq: int, kind: str) -> torch.Tensor:
    """One head's [seq, seq] attention with an exact pattern: 'previous', 'self' or 'last'."""
    a = torch.zeros(seq, seq)
    for i in range(seq):
        a[i, {"previous": max(i - 1, 0), "self": i, "last": seq - 1}[kind]] = 1.0
    return a


def test_head_scores_find_the_planted_heads():
    seq, uniform = 6, torch.full((6, 6), 1 / 6)
    layer0 = torch.stack([uniform, _pattern(seq, "previous"), uniform])[None]
    layer1 = torch.stack([_pattern(seq, "self"), uniform, _pattern(seq, "last")])[None]
    attentions = (layer0, layer1)
    tokens = ["[CLS]", "a", "b", "c", "d", "[SEP]"]

    prev = av.previous_token_score(attentions)
    assert prev.shape == (2, 3) and prev[0, 1] == 1.0 and av.top_head(prev) == (0, 1)
    assert prev[1, 0] == 0.0 and prev[1, 2] == 0.0
    assert torch.allclose(prev[0, 0], torch.tensor(1 / 6))
    own = av.self_score(attentions)
    assert own[1, 0] == 1.0 and own[0, 1] == pytest.approx(1 / 6) and av.top_head(own) == (1, 0)
    sep = av.sep_score(attentions, tokens)
    assert sep[1, 2] == 1.0 and av.top_head(sep) == (1, 2)
    assert torch.equal(sep, av.sep_score(attentions))  # [SEP] is the last token here
    assert torch.equal(av.previous_token_score(torch.cat(attentions)), prev)  # a stacked tensor works too
    scores = av.head_scores(attentions, tokens)
    assert set(scores) == {"previous", "self", "sep"} and torch.equal(scores["sep"], sep)


def test_head_scores_errors():
    with pytest.raises(TypeError, match="get_attention"):
        av.previous_token_score([[0.5, 0.5]])
    with pytest.raises(ValueError, match="seq >= 2"):
        av.self_score(torch.ones(1, 1, 1, 1))
    with pytest.raises(ValueError, match="contain '\\[SEP\\]'"):
        av.sep_score(torch.ones(1, 1, 3, 3) / 3, ["a", "b", "c"])
    with pytest.raises(TypeError, match=r"\[layers, heads\]"):
        av.top_head(torch.ones(3))
