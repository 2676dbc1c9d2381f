import pytest
from transformers import AutoTokenizer

from course_utils.world.corpus import make_corpus
from course_utils.world.tokenization import train_bpe, train_char, train_wordpiece

TEXTS = make_corpus(300)


def test_wordpiece_behaves_like_a_bert_tokenizer(tmp_path):
    tok = train_wordpiece(TEXTS, vocab_size=200)
    enc = tok("the cat saw the dog .", "mia has two cups .")
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2 and tokens[-1] == "[SEP]"
    assert set(enc["token_type_ids"]) == {0, 1}
    assert "##" in "".join(tok.tokenize("the catapults"))  # an unseen word splits into word pieces
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again("the cat saw the dog .")["input_ids"] == tok("the cat saw the dog .")["input_ids"]
    batch = tok(["the cat", "the red cat chased the dog"], padding=True, return_tensors="pt")
    assert batch["input_ids"].shape[0] == 2 and (batch["attention_mask"] == 0).any()


def test_bpe_round_trips_text(tmp_path):
    tok = train_bpe(TEXTS, vocab_size=300)
    text = "the red cat chased the dog in the park ."
    assert tok.decode(tok(text)["input_ids"]) == text
    assert len(tok(text)["input_ids"]) < len(text)  # merges made tokens longer than bytes
    assert tok.decode(tok("Zebra 42!")["input_ids"]) == "Zebra 42!"  # byte-level: nothing is unknown
    tok.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path)(text)["input_ids"] == tok(text)["input_ids"]


def test_char_tokenizer_round_trips():
    text = "To be, or not to be:\nthat is the question."
    tok = train_char(text)
    ids = tok(text)["input_ids"]
    assert len(ids) == len(text) and tok.decode(ids) == text


@pytest.mark.parametrize("bad", ["one string", [], [1, 2]])
def test_bad_texts(bad):
    with pytest.raises((TypeError, ValueError)):
        train_wordpiece(bad)


def test_too_small_vocab():
    with pytest.raises(ValueError, match="too small"):
        train_bpe(TEXTS, vocab_size=10)
