"""The shipped course models, the hub path through a local folder, and the training loop."""
import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

from course_utils.world.corpus import make_corpus
from course_utils.world.tokenization import train_wordpiece
from course_utils.training import History, plot_losses, smooth, train
from course_utils.models import RECIPES, course_model_path, load_pretrained


@pytest.fixture(scope="module")
def tiny_bert():
    return load_pretrained("tiny-bert", progress=False)


def _masked_accuracy(model, tok, texts):
    """Accuracy at predicting every word of each text when it alone is masked (a real learning outcome)."""
    hits = total = 0
    for text in texts:
        ids = tok(text, return_tensors="pt")["input_ids"]
        positions = range(1, ids.shape[1] - 1)
        batch = ids.repeat(len(positions), 1)
        for row, pos in enumerate(positions):
            batch[row, pos] = tok.mask_token_id
        with torch.no_grad():
            pred = model(input_ids=batch).logits[torch.arange(len(positions)), list(positions)].argmax(-1)
        hits += (pred == ids[0, 1:-1]).sum().item()
        total += len(positions)
    return hits / total


def test_tiny_bert_is_shipped_and_learned_the_corpus(tiny_bert):
    model, tok = tiny_bert
    assert (course_model_path("tiny-bert") / "config.json").is_file()
    held_out = make_corpus(40, seed=999)
    words = [w for t in make_corpus(2000) for w in t.split()]
    unigram = max(words.count(w) for w in set(words)) / len(words)  # always guess the commonest word
    acc = _masked_accuracy(model, tok, held_out)
    assert acc > unigram + 0.25, f"tiny-bert masked-word accuracy {acc:.2f} vs unigram baseline {unigram:.2f}"


def test_tiny_bert_returns_attentions(tiny_bert):
    model, tok = tiny_bert
    out = model(**tok("the cat saw the dog .", return_tensors="pt"), output_attentions=True)
    cfg = RECIPES["tiny-bert"]["config"]
    assert len(out.attentions) == cfg["num_hidden_layers"]
    assert out.attentions[0].shape[1] == cfg["num_attention_heads"]
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones_like(out.attentions[0].sum(-1)))


def test_hub_path_loads_a_model_saved_to_a_local_folder(tmp_path, tiny_bert):
    """The gpu profile's hub ids go through from_pretrained; a local folder exercises that same path."""
    model, tok = tiny_bert
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, tok2 = load_pretrained(str(tmp_path))
    enc = tok("mia has two cups .", return_tensors="pt")
    torch.testing.assert_close(again(**enc).logits, model(**enc).logits)
    assert tok2.mask_token == "[MASK]"


def test_loading_errors_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="without config.json"):
        load_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="Offline, use a course model"):
        load_pretrained("no-such-org/no-such-model-xyz")
    with pytest.raises(TypeError):
        load_pretrained(None)


def test_train_lowers_the_loss_and_records_history():
    texts = make_corpus(200)
    tok = train_wordpiece(texts, vocab_size=120)
    model = BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=64, max_position_embeddings=64))
    enc = tok(texts[:32], padding=True, truncation=True, max_length=64, return_tensors="pt")
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
             "labels": enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)}
    history = train(model, [batch], steps=60, lr=3e-3, progress=False, eval_fn=lambda: 0.0, eval_every=20)
    assert isinstance(history, History) and len(history.losses) == 60
    assert history.losses[-1] < 0.5 * history.losses[0]
    assert [s for s, _ in history.evals] == [20, 40, 60]
    assert history.tokens_per_s > 0
    assert plot_losses(history, baseline=1.0).get_xlabel() == "step"


def test_train_rejects_bad_arguments():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="steps"):
        train(model, [], steps=0)
    with pytest.raises(ValueError, match="lr"):
        train(model, [], steps=1, lr=0)
    with pytest.raises(TypeError, match="batches"):
        train(model, 5, steps=1)


def test_train_stops_on_a_diverging_loss():
    model = torch.nn.Linear(2, 1)
    with pytest.raises(FloatingPointError, match="lower lr"):
        train(model, lambda: torch.ones(1, 2), steps=3, loss_fn=lambda m, b: m(b).sum() * float("nan"),
              progress=False)


def test_smooth():
    assert smooth([1.0, 3.0, 5.0], window=2) == [1.0, 2.0, 4.0]
