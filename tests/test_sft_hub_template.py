"""The gpu profile's path on a model saved to a local folder whose chat template has no {% generation %} markers.

Hub chat templates (Qwen2.5's, bundled with TRL) do not mark the assistant's tokens, so
``return_assistant_tokens_mask`` alone would train on nothing; ``encode_chat`` then uses TRL's training copy of
the template, exactly as ``SFTTrainer(assistant_only_loss=True)`` does. No download: the model is built here.
"""
import warnings

import pytest
import torch

from course_utils.checks.sft import trl_labels
from course_utils.models import load_pretrained
from course_utils.sft import IGNORE_INDEX, collate, encode_chat, sft_loss, training_template

CHATS = [[{"role": "user", "content": "who ran to the park ?"}, {"role": "assistant", "content": "tom"}],
         [{"role": "user", "content": "was mia happy ?"}, {"role": "assistant", "content": "yes"},
          {"role": "user", "content": "where was tom ?"}, {"role": "assistant", "content": "the park"}]]


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory):
    """A tiny Qwen2 model and a tokenizer carrying Qwen2.5's marker-less chat template, saved to a folder."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from trl.chat_template_utils import qwen2_5_chat_template

    tokenizer = load_pretrained("tiny-gpt", progress=False)[1]
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.chat_template = qwen2_5_chat_template
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    folder = tmp_path_factory.mktemp("qwen-like")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def hub_like(hub_folder):
    return load_pretrained(hub_folder, progress=False)


def test_the_template_has_no_markers_so_trls_training_copy_is_used(hub_like):
    _, tokenizer = hub_like
    assert "generation" not in tokenizer.chat_template.replace("add_generation_prompt", "")
    assert "{%- generation %}" in training_template(tokenizer)


def test_labels_cover_each_reply_and_its_end_of_turn_and_equal_trls(hub_like):
    _, tokenizer = hub_like
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for chat, expected in zip(CHATS, trl_labels(tokenizer, CHATS)):
        got = encode_chat(tokenizer, chat)
        assert got == expected
        trained = [t for t in got["labels"] if t != IGNORE_INDEX]
        replies = sum(m["role"] == "assistant" for m in chat)
        assert trained.count(end) == replies  # each reply's <|im_end|> is trained: the model learns to stop
        prompt_end = got["input_ids"].index(end)  # the system/user turns before the first reply stay masked
        assert all(label == IGNORE_INDEX for label in got["labels"][:prompt_end + 1])


def test_a_training_step_on_the_saved_model_has_a_finite_loss(hub_like):
    model, tokenizer = hub_like
    batch = collate([encode_chat(tokenizer, chat) for chat in CHATS], tokenizer.pad_token_id)
    loss = sft_loss(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"])
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_a_template_without_markers_that_trl_cannot_patch_is_refused_clearly(hub_like):
    _, tokenizer = hub_like
    plain = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    tokenizer = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = plain
    with pytest.raises(ValueError, match="generation"):
        encode_chat(tokenizer, CHATS[0])


def test_lecture_07s_gpu_path_trains_qlora_on_the_local_model_and_scores_it(hub_folder):
    """lora.qlora_finetune (the gpu profile's QLoRA) on CPU: NF4 loads, only LoRA trains, the loss falls."""
    pytest.importorskip("bitsandbytes")
    from course_utils.lora import opposite_task, qlora_finetune

    train_tasks, eval_tasks = opposite_task(60, 20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = qlora_finetune(hub_folder, train_tasks, eval_tasks[:16], steps=12, device="cpu", batch_size=4, lr=3e-3,
                             rank=4)
    assert 0.0 <= run["before"] <= 1.0 and 0.0 <= run["after"] <= 1.0
    first, last = sum(run["losses"][:3]) / 3, sum(run["losses"][-3:]) / 3
    assert last < first, run["losses"]
    trained = {n for n, p in run["model"].named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained)


def test_trls_trainers_start_no_telemetry_thread(hub_like):
    """The course is offline: TRL's usage telemetry (a hub request from a background thread) stays off."""
    from huggingface_hub.utils import _telemetry

    _, tokenizer = hub_like
    trl_labels(tokenizer, CHATS[:1])  # builds an SFTTrainer, which calls send_telemetry
    assert _telemetry._TELEMETRY_THREAD is None or not _telemetry._TELEMETRY_THREAD.is_alive()


def test_readable_template_keeps_every_tag_in_order_and_indents_blocks():
    from trl.chat_template_utils import qwen2_5_chat_template

    from course_utils.sft import _JINJA_TAG, readable_template

    lines = readable_template(qwen2_5_chat_template).splitlines()
    tags = [line.strip() for line in lines if line.strip().startswith("{%")]
    assert tags == _JINJA_TAG.findall(qwen2_5_chat_template)
    opened = next(i for i, line in enumerate(lines) if line.strip().startswith("{%- for message"))
    assert len(lines[opened + 1]) - len(lines[opened + 1].lstrip()) > len(lines[opened]) - len(lines[opened].lstrip())
