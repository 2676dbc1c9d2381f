"""The course's tiny GPT base model: shipped, causal, with the chat tokenizer, and it learned the story world."""
import math
from collections import Counter

import pytest
import torch
from transformers import GPT2LMHeadModel

from course_utils.world.corpus import make_split_stories
from course_utils.world.tokenization import END
from course_utils.models import RECIPES, course_model_path, load_pretrained


@pytest.fixture(scope="module")
def tiny_gpt():
    return load_pretrained("tiny-gpt", progress=False)


def test_tiny_gpt_is_a_cached_causal_lm_with_a_chat_tokenizer(tiny_gpt):
    model, tok = tiny_gpt
    assert (course_model_path("tiny-gpt") / "config.json").is_file()
    assert isinstance(model, GPT2LMHeadModel) and not model.training
    assert model.config.n_positions == RECIPES["tiny-gpt"]["config"]["block_size"]
    assert tok.chat_template and "{% generation %}" in tok.chat_template
    assert model.config.pad_token_id == tok.pad_token_id != tok.eos_token_id
    assert tok.convert_tokens_to_ids(END) in model.generation_config.eos_token_id
    assert len(tok) <= model.config.vocab_size


def test_tiny_gpt_learned_held_out_stories(tiny_gpt):
    """Per-token loss on eval-split stories is far below a unigram model fitted on training stories."""
    model, tok = tiny_gpt
    train = [t for s in make_split_stories(2000, "train", seed=5) for t in tok(s.text)["input_ids"]]
    counts, n = Counter(train), len(train)
    evals = [s.text for s in make_split_stories(100, "eval", seed=5)]
    unigram = total = 0.0
    tokens = 0
    for text in evals:
        ids = tok(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            loss = model(input_ids=ids, labels=ids).loss.item()
        total += loss * (ids.shape[1] - 1)
        tokens += ids.shape[1] - 1
        unigram += sum(-math.log((counts[i] + 1) / (n + len(tok))) for i in ids[0, 1:].tolist())
    assert total / tokens < 0.6 * unigram / tokens, (total / tokens, unigram / tokens)


def test_causal_checkpoints_load_from_a_local_folder(tmp_path, tiny_gpt):
    """The gpu profile's instruct model ids go through AutoModelForCausalLM; a local folder exercises that path."""
    model, tok = tiny_gpt
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, tok2 = load_pretrained(str(tmp_path))
    assert isinstance(again, GPT2LMHeadModel)
    enc = tok2("mia has two cups .", return_tensors="pt")
    torch.testing.assert_close(again(**enc).logits, model(**enc).logits)
    assert tok2.chat_template == tok.chat_template


def test_end_of_turn_ids_for_the_course_tokenizer_and_a_hub_style_one(tiny_gpt):
    from course_utils.sft import end_of_turn_ids
    from course_utils.world.tokenization import train_char

    _, tok = tiny_gpt
    assert end_of_turn_ids(tok) == [tok.convert_tokens_to_ids(END), tok.eos_token_id]
    hub_like = train_char("a chat model without the course's end-of-turn token " * 5)  # has only an eos token
    assert hub_like.eos_token_id is not None
    assert end_of_turn_ids(hub_like) == [hub_like.eos_token_id]
