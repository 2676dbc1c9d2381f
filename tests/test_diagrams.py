"""The lectures' diagrams draw what they say: every labelled part is on the figure."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from course_utils import diagrams  # noqa: E402


def _texts(fig) -> str:
    return " | ".join(t.get_text() for ax in fig.axes for t in ax.texts + [ax.title])


def test_transformer_block_shows_both_sublayers_residuals_and_norm_placement():
    post, pre = _texts(diagrams.transformer_block()), _texts(diagrams.transformer_block(pre_norm=True))
    for text in (post, pre):
        assert "self-attention" in text and "feed-forward" in text and text.count("residual") == 2
    assert "post-norm" in post and "x + attention(x)" in post
    assert "pre-norm" in pre and "x + attention(norm(x))" in pre
    plt.close("all")


def test_multi_head_split_has_one_row_per_head():
    text = _texts(diagrams.multi_head_split(n_heads=3, seq_len=4, d_model=12))
    assert all(f"head {h}" in text for h in (1, 2, 3)) and "head 4" not in text
    assert "(4 × 12)" in text and "(4 × 4)" in text and "√4" in text
    with pytest.raises(ValueError, match="multiple of n_heads"):
        diagrams.multi_head_split(n_heads=5, d_model=12)
    plt.close("all")


def test_encoder_decoder_shows_cross_attention_reading_the_encoder():
    text = _texts(diagrams.encoder_decoder())
    assert "cross-attention" in text and "K, V" in text and "causal" in text and "bidirectional" in text
    plt.close("all")
