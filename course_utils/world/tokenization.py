"""Tokenizers trained locally with the `tokenizers` library, wrapped as `transformers` fast tokenizers.

WordPiece (BERT style, with [CLS]/[SEP]/[MASK]/[PAD]/[UNK]) and byte-level BPE (GPT-2 style, with
an end-of-text token). Both train in well under a second on the course corpus and behave like the
tokenizers you would download from the hub: ``tok(texts, padding=True, return_tensors="pt")``,
``save_pretrained``, ``from_pretrained``.
"""
from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertTokenizerFast, PreTrainedTokenizerFast

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
EOS = "<|endoftext|>"


def _check_texts(texts: Iterable[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string: wrap it as [text]")
    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a non-empty list of strings")
    return texts


def train_wordpiece(texts: Iterable[str], vocab_size: int = 400, model_max_length: int = 128) -> BertTokenizerFast:
    """Train a lower-casing WordPiece tokenizer and wrap it as a ``BertTokenizerFast``."""
    texts = _check_texts(texts)
    if vocab_size < len(BERT_SPECIALS) + 30:
        raise ValueError(f"vocab_size={vocab_size} is too small; use at least {len(BERT_SPECIALS) + 30}")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=BERT_SPECIALS, show_progress=False)
    tok.train_from_iterator(texts, trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return BertTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length,
                             pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]")


def _byte_bpe(texts: list[str], vocab_size: int, specials: list[str]) -> Tokenizer:
    if vocab_size < 256 + len(specials) + 1:
        raise ValueError(f"vocab_size={vocab_size} is too small for byte-level BPE; use at least {257 + len(specials)}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def train_bpe(texts: Iterable[str], vocab_size: int = 500, model_max_length: int = 256) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (GPT-2 style) with an end-of-text token used for padding too."""
    tok = _byte_bpe(_check_texts(texts), vocab_size, [EOS])
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length,
                                   bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=EOS)


# Chat: a user turn, then the assistant's turn closed by <|end|>. The {% generation %} block marks the
# tokens the assistant must learn (its reply AND its <|end|>), which TRL's assistant_only_loss reads.
# A space opens each turn, so a word is the same token in a reply as in a story ("Ġpark" both times).
PAD, USER, ASSISTANT, END = "<|pad|>", "<|user|>", "<|assistant|>", "<|end|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}" + USER + " {{ message['content'] }}" + END +
    "{% elif message['role'] == 'assistant' %}" + ASSISTANT +
    "{% generation %} {{ message['content'] }}" + END + "{% endgeneration %}"
    "{% else %}{{ raise_exception('only user and assistant roles are supported, got ' + message['role']) }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)


def train_chat_bpe(texts: Iterable[str], vocab_size: int = 600, model_max_length: int = 128) -> PreTrainedTokenizerFast:
    """Byte-level BPE with chat tokens (<|user|>, <|assistant|>, <|end|>), a separate <|pad|> and a chat template."""
    tok = _byte_bpe(_check_texts(texts), vocab_size, [EOS, PAD, USER, ASSISTANT, END])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length,
                                        bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=PAD,
                                        additional_special_tokens=[USER, ASSISTANT, END])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def train_char(text: str, model_max_length: int = 256) -> PreTrainedTokenizerFast:
    """A character-level tokenizer (nanoGPT's Shakespeare setting): one id per distinct character."""
    if not isinstance(text, str) or not text:
        raise ValueError("text must be a non-empty string")
    chars = sorted(set(text))
    vocab = {EOS: 0, **{c: i + 1 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=EOS))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length,
                                   bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=EOS)
