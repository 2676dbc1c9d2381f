"""course_utils.lora: layer shapes, parameter counts against PEFT, memory accounting, the module's task."""
import copy
import warnings

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from course_utils.lora import (EVAL_FAMILY, OPPOSITE, TRAIN_FAMILY, choice_accuracy, full_finetune_bytes,
                               in_out_features, is_fan_in_fan_out, lora_finetune_bytes, module_bytes, opposite,
                               opposite_dev_tasks, opposite_task, PEFT_METHODS, peft_variant, trainable_parameters)
from course_utils.pretrain import build_gpt2


def test_in_out_features_for_linear_and_conv1d():
    assert in_out_features(nn.Linear(8, 3)) == (8, 3)
    assert in_out_features(Conv1D(3, 8)) == (8, 3)  # Conv1D(nf=out, nx=in) stores (in, out)
    assert is_fan_in_fan_out(Conv1D(3, 8)) and not is_fan_in_fan_out(nn.Linear(8, 3))
    with pytest.raises(TypeError, match="nn.Linear or a GPT-2 Conv1D"):
        in_out_features(nn.Embedding(4, 2))


def test_trainable_parameters_match_peft():
    from peft import LoraConfig, get_peft_model

    model = build_gpt2(vocab_size=40, n_layer=2, n_head=2, n_embd=32, block_size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True))
    assert trainable_parameters(peft_model) == tuple(peft_model.get_nb_trainable_parameters())
    assert trainable_parameters(model) == (sum(p.numel() for p in model.parameters()),) * 2  # tied weights once


def test_memory_accounting():
    assert full_finetune_bytes(7e9) == 16 * 7e9  # bf16 weight + bf16 grad + fp32 master + Adam m, v
    assert lora_finetune_bytes(100, 10) == 100 * 2 + 10 * 16
    with pytest.raises(ValueError, match="n_trainable"):
        lora_finetune_bytes(10, 20)
    with pytest.raises(ValueError, match="non-negative"):
        full_finetune_bytes(-1)


def test_module_bytes_counts_nf4_weights_and_their_constants():
    import bitsandbytes as bnb

    linear = nn.Linear(128, 64, bias=False)
    assert module_bytes(linear) == 128 * 64 * 4
    for double_quant, expected in ((False, 128 * 64 // 2 + 4 * 128 * 64 // 64),
                                   (True, 128 * 64 // 2 + 128 * 64 // 64 + 4 + 4)):
        q = bnb.nn.Linear4bit(128, 64, bias=False, quant_type="nf4", compress_statistics=double_quant)
        q.weight = bnb.nn.Params4bit(linear.weight.data.clone(), requires_grad=False, quant_type="nf4",
                                     compress_statistics=double_quant)
        q.weight = q.weight._quantize("cpu") if hasattr(q.weight, "_quantize") else q.weight
        assert module_bytes(q) == expected, double_quant


def test_opposite_task_is_held_out_and_flipped():
    from course_utils.world.instructions import task_split

    train, held_out = opposite_task(300, 200)
    assert train and held_out
    assert {t.family for t in train} == {TRAIN_FAMILY} and {t.family for t in held_out} == {EVAL_FAMILY}
    train_sentences = {s for t in train for s in t.story.split(" . ") if s}
    held_out_sentences = {s for t in held_out for s in t.story.split(" . ") if s}
    assert not train_sentences & held_out_sentences  # the eval split shares no sentence with training
    originals = task_split(200, "eval", families=[EVAL_FAMILY])
    assert [opposite(t).answer for t in originals] == [t.answer for t in held_out]
    assert all(t.answer != o.answer and t.output == t.answer for t, o in zip(held_out, originals))
    assert opposite(opposite(held_out[0])) == held_out[0]
    with pytest.raises(ValueError, match="only sentiment tasks"):
        opposite(task_split(20, "train", families=["where"])[0])


@pytest.mark.parametrize("kind", ["plain", "prompt tuning"])
def test_choice_accuracy_ranks_replies_by_their_loss(kind):
    """The reply choice_accuracy picks is the one with the lower total SFT loss (PEFT pads the labels itself)."""
    from peft import PromptTuningConfig, get_peft_model

    from course_utils.sft import collate, encode_chat
    from course_utils.models import load_pretrained

    model, tokenizer = load_pretrained("tiny-gpt-sft", progress=False)
    if kind == "prompt tuning":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = get_peft_model(model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    model.eval()
    tasks = opposite_task(50, 40)[1][:12]
    right = 0
    for task in tasks:
        losses = {}
        for choice in OPPOSITE:
            batch = collate([encode_chat(tokenizer, task.messages(choice))], tokenizer.pad_token_id)
            n_scored = (batch["labels"][:, 1:] != -100).sum().item()
            with torch.no_grad():
                losses[choice] = model(**batch).loss.item() * n_scored
        right += min(losses, key=losses.get) == task.answer
    assert choice_accuracy(model, tokenizer, tasks, batch_size=5) == pytest.approx(right / len(tasks))
    with pytest.raises(ValueError, match="tasks is empty"):
        choice_accuracy(model, tokenizer, [])


def test_dev_tasks_ask_the_held_out_question_on_unused_training_stories():
    train, held_out = opposite_task(300, 200)
    dev = opposite_dev_tasks(train, n_stories=300)
    assert dev and {t.family for t in dev} == {EVAL_FAMILY}
    assert not {t.story for t in dev} & {t.story for t in train}  # never a story the methods trained on
    assert not {t.story for t in dev} & {t.story for t in held_out}  # dev and held-out are disjoint
    assert all(t.answer == t.output for t in dev)


SETTINGS = {"top_k_layers": 1, "adapter_size": 4, "virtual_tokens": 3, "lora_r": 2, "lora_alpha": 4}


@pytest.mark.parametrize("method, trains", [
    ("full", lambda name: True),
    ("top", lambda name: ".h.1." in name or "ln_f" in name),
    ("bitfit", lambda name: name.endswith("bias")),
    ("adapter", lambda name: ".down." in name or ".up." in name),
    ("lora", lambda name: "lora_" in name),
    ("prompt", lambda name: "prompt_encoder" in name),
    ("prefix", lambda name: "prompt_encoder" in name),
])
def test_peft_variant_trains_exactly_its_parameters_and_leaves_the_base_alone(method, trains):
    base = build_gpt2(vocab_size=40, n_layer=2, n_head=2, n_embd=32, block_size=8)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft_variant(base, method, SETTINGS)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all(trains(n) for n in trained)
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())  # a copy: the base is untouched
    assert all(p.requires_grad for p in base.parameters())
    ids = torch.randint(0, 40, (2, 5))
    if method in ("adapter", "lora"):  # both start as the identity change: same logits as the base
        torch.testing.assert_close(model(input_ids=ids).logits, base(input_ids=ids).logits)


def test_peft_variant_names_the_methods_it_knows():
    base = build_gpt2(vocab_size=40, n_layer=1, n_head=2, n_embd=16, block_size=8)
    with pytest.raises(ValueError, match="unknown method 'ia3'"):
        peft_variant(base, "ia3", SETTINGS)
    assert set(PEFT_METHODS) == {"full", "top", "bitfit", "adapter", "prompt", "prefix", "lora"}


def test_page_schedule_by_hand():
    """Three states of 4 bytes on a device of 12: paged in once, then only an activation spike moves any."""
    from course_utils.paging import page_schedule

    states = [("a", 4), ("b", 4), ("c", 4)]
    # step 3 needs 8 bytes of activations: a and b (least recently used) go out, come back for the optimizer
    assert page_schedule([states] * 4, [0, 0, 8, 0], 12) == [(12, 0, 12), (0, 0, 12), (8, 8, 12), (0, 0, 12)]
    # room for two of three states: a cyclic order misses every time under least-recently-used
    assert page_schedule([states] * 2, [0, 0], 8) == [(12, 4, 8), (12, 12, 8)]
    with pytest.raises(MemoryError, match="activations"):
        page_schedule([states], [13], 12)
    with pytest.raises(ValueError, match="one activation size per step"):
        page_schedule([states], [], 12)


def test_saved_activation_bytes_counts_what_backward_keeps():
    """A linear layer on x (no bias) saves x for its weight's gradient: exactly x's bytes; checkpointing saves less."""
    from course_utils.lora import saved_activation_bytes

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(8, 3, bias=False)

        def forward(self, x):
            return type("Out", (), {"loss": self.layer(x).sum()})()

    x = torch.randn(5, 8)
    assert saved_activation_bytes(Model(), {"x": x}) == x.numel() * 4
    model = build_gpt2(vocab_size=40, n_layer=2, n_head=2, n_embd=32, block_size=16).train()
    batch = {"input_ids": torch.randint(40, (2, 12)), "labels": torch.randint(40, (2, 12))}
    plain = saved_activation_bytes(model, batch)
    assert all(p.grad is None for p in model.parameters())
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert 0 < saved_activation_bytes(model, batch) < plain
