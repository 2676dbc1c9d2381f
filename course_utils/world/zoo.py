"""The model zoo: one call gives any notebook a pretrained model and its tokenizer.

``load_pretrained("tiny-bert")`` returns the course's own tiny BERT, pretrained on the course corpus
the first time it is asked for and cached on disk (deterministic, about half a minute on 2 cores).
``load_pretrained("tiny-gpt")`` returns the course's tiny GPT base model (a causal LM with a chat
tokenizer), pretrained on the training split of the story world, which modules 04-07 start from.
``load_pretrained("tiny-gpt-sft")`` is that base model after supervised fine-tuning on imperfect human
demonstrations (right answers, but often wordy): the shared starting point of RLHF (05) and DPO (06);
``tiny-gpt-sft-long`` is the same fine-tuning run 4x longer, the starting point of module 05's reward models,
and ``tiny-gpt-rm`` is module 05's fully trained reward model (a sequence classifier with one output).
Any other name is a hub id or a local folder and goes through ``from_pretrained``: that is the path
the ``gpu`` profile uses for real checkpoints such as ``bert-base-uncased`` or an instruct model.
Masked LM, causal LM or reward model (sequence classifier) is read from the config's ``architectures``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import socket
import tempfile
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging
from platformdirs import user_cache_dir
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM,
                          AutoModelForSequenceClassification, AutoTokenizer, BertConfig,
                          BertForMaskedLM, DataCollatorForLanguageModeling, GPT2LMHeadModel)

from .corpus import WORLD_VERSION, make_corpus, make_split_stories
from .instructions import FAMILIES, TEMPLATES_DIGEST, make_tasks, task_split
from .preferences import SURE, VERBOSE, human_demonstrations
from .reasoning import MIXTURE, REASONING_VERSION, copy_document, make_mixture
from ..profiles import seed_everything
from .tokenization import CHAT_TEMPLATE, END, train_chat_bpe, train_wordpiece
from ..training import train

# Recipes of the models the course trains itself. Changing a recipe changes its cache key.
RECIPES = {
    "tiny-bert": {
        "corpus": {"n": 4000, "seed": 0},
        "vocab_size": 300,
        "config": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                   "intermediate_size": 128, "max_position_embeddings": 64},
        "train": {"steps": 600, "batch_size": 32, "lr": 3e-3, "seed": 0},
    },
    "tiny-gpt": {
        "corpus": {"n": 8000, "seed": 0, "min_sentences": 1, "max_sentences": 4},  # training split only
        "vocab_size": 600,
        "chat_template": CHAT_TEMPLATE,
        "task_templates": TEMPLATES_DIGEST,  # the tokenizer also reads every task family's wording
        "config": {"n_layer": 2, "n_head": 4, "n_embd": 64, "block_size": 128},
        "train": {"steps": 400, "batch_size": 16, "lr": 3e-3, "seed": 0},
    },
    "tiny-gpt-reasoner": {  # module 08: few-shot episodes and word problems (world/reasoning.py)
        "data": {"n": 12000, "seed": 0, "mixture": MIXTURE, "version": REASONING_VERSION},  # training split only
        "vocab_size": 700,  # every world word one token
        "config": {"n_layer": 2, "n_head": 4, "n_embd": 64, "block_size": 192},
        "copy": {"n": 4000, "steps": 600, "lr": 3e-3},  # first grow induction heads on copy lists
        "train": {"steps": 3000, "batch_size": 32, "lr": 3e-3, "seed": 0},  # CoT and ICL appear after ~1500-3000
    },
}
# The SFT model of modules 05-06. Its demonstrations are right but often wordy (as people write them), so its
# replies sit well below the maximum of r* (correctness, then concision) and preference learning has room to help.
RECIPES["tiny-gpt-sft"] = {
    "base": "tiny-gpt",
    "base_recipe": RECIPES["tiny-gpt"],  # a change to the base model retrains this one
    "data": {"stories": 1000, "seed": 0, "wordy_rate": 0.6, "sure_rate": 0.08, "styles": list(VERBOSE) + [SURE]},
    "train": {"steps": 400, "batch_size": 32, "lr": 6e-3, "seed": 0},
}

# Module 05's reward models start from this one: the same base fine-tuned 4x longer on 4x the demonstrations.
# It answers most held-out questions right (tiny-gpt-sft about a third), so a reward model built on it can
# learn to judge correctness, not only length. InstructGPT also took its reward model from another SFT model
# (6B) than its policy (175B); the policy here stays tiny-gpt-sft, whose replies leave room to improve.
RECIPES["tiny-gpt-sft-long"] = {**RECIPES["tiny-gpt-sft"],
                                "data": {**RECIPES["tiny-gpt-sft"]["data"], "stories": 4000},
                                "train": {**RECIPES["tiny-gpt-sft"]["train"], "steps": 1600}}

# Module 05's reward model: tiny-gpt-sft-long with a scalar head, trained with the reward loss on the world's
# comparison pairs (stories disjoint from PPO's prompts and from every evaluation story). The lecture trains a
# short run of the same recipe live; this full-length run reaches about 0.92x of the label-noise ceiling.
RECIPES["tiny-gpt-rm"] = {
    "base": "tiny-gpt-sft-long",
    "base_recipe": RECIPES["tiny-gpt-sft-long"],
    "data": {"pair_stories": 2000, "prompt_stories": 300, "n_pairs": 80000, "bt_beta": 4.0, "seed": 0},
    "train": {"steps": 2400, "batch_size": 32, "lr": 1e-3, "seed": 0},
}


TRAIN_THREADS = 2  # the course machine's cores; the asserted outcomes of the notebooks were measured on these models


def cache_dir() -> Path:
    """Where course-trained models live: $COURSE_CACHE_DIR, else the user's cache folder."""
    return Path(os.environ.get("COURSE_CACHE_DIR") or user_cache_dir("llm-course")) / "zoo"


def _recipe_path(name: str) -> Path:
    keyed = {"recipe": RECIPES[name], "world": WORLD_VERSION}  # a change to either retrains the model
    key = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir() / f"{name}-{key}"


def pretrain_tiny_bert(recipe: dict, progress: bool = True) -> tuple[BertForMaskedLM, object]:
    """Train the tiny BERT of ``recipe`` with masked language modelling; returns (model, tokenizer)."""
    texts = make_corpus(**recipe["corpus"])
    tokenizer = train_wordpiece(texts, vocab_size=recipe["vocab_size"],
                                model_max_length=recipe["config"]["max_position_embeddings"])
    seed_everything(recipe["train"]["seed"])
    config = BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **recipe["config"])
    model = BertForMaskedLM(config)
    encoded = tokenizer(texts, truncation=True)["input_ids"]
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    generator = torch.Generator().manual_seed(recipe["train"]["seed"])
    batch_size = recipe["train"]["batch_size"]

    def next_batch() -> dict:
        idx = torch.randint(len(encoded), (batch_size,), generator=generator).tolist()
        return collator([{"input_ids": encoded[i]} for i in idx])

    train(model, next_batch, steps=recipe["train"]["steps"], lr=recipe["train"]["lr"],
          progress=progress, desc="pretraining tiny-bert")
    return model, tokenizer


def pretrain_tiny_gpt(recipe: dict, progress: bool = True) -> tuple[GPT2LMHeadModel, object]:
    """Train the tiny GPT of ``recipe`` on the training split of the story world; returns (model, tokenizer).

    The tokenizer is a chat BPE (see ``tokenization.train_chat_bpe``) fitted on the stories and on every
    instruction family's wording, so later fine-tuning needs no new tokens. The model sees stories only.
    """
    from ..pretrain import build_gpt2, get_batch

    stories = make_split_stories(split="train", **recipe["corpus"])
    texts = [s.text for s in stories]
    tasks = make_tasks(stories[:2000], families=list(FAMILIES), seed=recipe["corpus"]["seed"])
    cfg = recipe["config"]
    tokenizer = train_chat_bpe(texts + [t.instruction for t in tasks] + [t.output for t in tasks],
                               vocab_size=recipe["vocab_size"], model_max_length=cfg["block_size"])
    tokenizer.chat_template = recipe["chat_template"]
    seed_everything(recipe["train"]["seed"])
    model = build_gpt2(len(tokenizer), eos_token_id=tokenizer.eos_token_id, **cfg)
    model.config.pad_token_id = model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = [tokenizer.convert_tokens_to_ids(END), tokenizer.eos_token_id]
    stream = tokenizer.backend_tokenizer.encode(tokenizer.eos_token.join(texts) + tokenizer.eos_token).ids
    data = torch.tensor(stream, dtype=torch.long)
    generator = torch.Generator().manual_seed(recipe["train"]["seed"])
    batch_size, block = recipe["train"]["batch_size"], cfg["block_size"]

    def next_batch() -> dict:
        x, _ = get_batch(data, block, batch_size, generator)
        return {"input_ids": x, "labels": x}  # the model shifts the labels itself

    train(model, next_batch, steps=recipe["train"]["steps"], lr=recipe["train"]["lr"],
          progress=progress, desc="pretraining tiny-gpt")
    return model, tokenizer


def finetune_tiny_gpt_sft(recipe: dict, progress: bool = True) -> tuple[GPT2LMHeadModel, object]:
    """SFT of the zoo's base model on human demonstrations of the seen task families; returns (model, tokenizer)."""
    from ..sft import collate, encode_chat, sft_loss

    model, tokenizer = load_pretrained(recipe["base"], progress=progress)
    data = recipe["data"]
    tasks = task_split(data["stories"], "train", seed=data["seed"])
    replies = human_demonstrations(tasks, data["wordy_rate"], data["sure_rate"], seed=data["seed"])
    examples = [encode_chat(tokenizer, t.messages(r)) for t, r in zip(tasks, replies)]
    cfg = recipe["train"]
    seed_everything(cfg["seed"])
    rng = random.Random(cfg["seed"])

    def loss_fn(m, batch: dict) -> torch.Tensor:
        return sft_loss(m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"])

    train(model, lambda: collate(rng.sample(examples, cfg["batch_size"]), tokenizer.pad_token_id),
          steps=cfg["steps"], lr=cfg["lr"], loss_fn=loss_fn, progress=progress, desc="SFT of tiny-gpt")
    return model, tokenizer


def pretrain_tiny_gpt_reasoner(recipe: dict, progress: bool = True) -> tuple[GPT2LMHeadModel, object]:
    """Train module 08's tiny GPT: copy lists first (induction heads), then the prompting mixture; returns (model, tokenizer)."""
    from ..pretrain import build_gpt2

    data_recipe = recipe["data"]
    docs = make_mixture(data_recipe["n"], split="train", seed=data_recipe["seed"], mixture=data_recipe["mixture"])
    cfg = recipe["config"]
    tokenizer = train_chat_bpe(docs, vocab_size=recipe["vocab_size"], model_max_length=cfg["block_size"])
    seed_everything(recipe["train"]["seed"])
    model = build_gpt2(len(tokenizer), eos_token_id=tokenizer.eos_token_id, **cfg)
    model.config.pad_token_id = model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    # One episode per row, starting at position 0 (as prompts do), rows of similar length batched together.
    rng = random.Random(recipe["train"]["seed"])
    batch_size = recipe["train"]["batch_size"]

    def batches(texts: list[str]):
        rows_all = sorted((e.ids[:cfg["block_size"]] for e in tokenizer.backend_tokenizer.encode_batch(
            [t + tokenizer.eos_token for t in texts])), key=len)

        def next_batch() -> dict:
            start = rng.randrange(len(rows_all) - batch_size + 1)
            rows = rows_all[start:start + batch_size]
            ids = torch.full((len(rows), len(rows[-1])), tokenizer.pad_token_id, dtype=torch.long)
            labels = torch.full_like(ids, -100)
            for i, row in enumerate(rows):
                ids[i, :len(row)] = labels[i, :len(row)] = torch.tensor(row)
            return {"input_ids": ids, "attention_mask": (labels != -100).long(), "labels": labels}
        return next_batch

    copy_rng = random.Random(f"copy-{data_recipe['seed']}")
    copies = [copy_document(copy_rng) for _ in range(recipe["copy"]["n"])]
    train(model, batches(copies), steps=recipe["copy"]["steps"], lr=recipe["copy"]["lr"], progress=progress,
          desc="tiny-gpt-reasoner: copy lists")
    next_batch = batches(docs)
    train(model, next_batch, steps=recipe["train"]["steps"], lr=recipe["train"]["lr"],
          progress=progress, desc="pretraining tiny-gpt-reasoner")
    return model, tokenizer


def train_tiny_gpt_rm(recipe: dict, progress: bool = True):
    """Module 05's reward model: ``recipe["base"]`` plus a scalar head, trained on comparison pairs; (model, tokenizer)."""
    from ..rlhf import train_reward_model
    from .preferences import rlhf_split, sample_pairs

    base, tokenizer = load_pretrained(recipe["base"], progress=progress)
    data, cfg = recipe["data"], recipe["train"]
    # the lecture's own split (prompt stories follow the pair stories); evaluation stories are not needed here
    tasks = rlhf_split(data["pair_stories"], data["prompt_stories"], 1, seed=data["seed"])["pairs"]
    pairs = sample_pairs(tasks, data["n_pairs"], beta=data["bt_beta"], seed=data["seed"])
    rm = train_reward_model(base, tokenizer, pairs, cfg["steps"], cfg["batch_size"], cfg["lr"], seed=cfg["seed"],
                            progress=progress, desc="reward model tiny-gpt-rm")
    return rm, tokenizer


PRETRAINERS = {"tiny-bert": pretrain_tiny_bert, "tiny-gpt": pretrain_tiny_gpt, "tiny-gpt-sft": finetune_tiny_gpt_sft,
               "tiny-gpt-sft-long": finetune_tiny_gpt_sft, "tiny-gpt-rm": train_tiny_gpt_rm,
               "tiny-gpt-reasoner": pretrain_tiny_gpt_reasoner}


def _auto_class(name: str, local: bool):
    """AutoModelForCausalLM, -ForSequenceClassification or -ForMaskedLM, from the config's ``architectures``."""
    archs = AutoConfig.from_pretrained(name, local_files_only=local).architectures or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return AutoModelForCausalLM
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return AutoModelForSequenceClassification
    return AutoModelForMaskedLM


def _train_with_fixed_threads(name: str, progress: bool):
    """Train course model ``name`` with ``TRAIN_THREADS`` PyTorch threads, whatever the caller uses.

    The thread count changes the order of floating-point sums, so it changes the trained weights; fixing it
    gives every run on a machine (a notebook, or `make test` with one thread per process) the same model.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    try:
        return PRETRAINERS[name](RECIPES[name], progress=progress)
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def _training_lock(path: Path):
    """An exclusive lock on ``path``'s model while it is trained (POSIX; elsewhere a concurrent run trains it too)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def load_pretrained(name: str = "tiny-bert", attn_implementation: str | None = None, progress: bool = True):
    """Return ``(model, tokenizer)`` for a course model name, a hub id or a local folder.

    Course models (``RECIPES``: ``tiny-bert``, ``tiny-gpt``, ``tiny-gpt-sft``, ...) are trained on first use and
    cached; hub ids and folders are loaded with ``AutoModelForCausalLM``, ``AutoModelForSequenceClassification``
    or ``AutoModelForMaskedLM`` (whichever the config's ``architectures`` names). Masked LMs default to eager
    attention so that ``output_attentions=True`` returns the attention weights the course visualises; the others
    default to PyTorch's sdpa.
    """
    if not isinstance(name, str) or not name:
        raise TypeError("name must be a model name such as 'tiny-bert', a hub id or a local folder path")
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bars for a few kilobytes
    try:
        return _load(name, attn_implementation, progress)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _load(name: str, attn_implementation: str | None, progress: bool):
    if name in RECIPES:
        path = _recipe_path(name)
        if not (path / "config.json").is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            with _training_lock(path):  # another process training the same model: wait for it, then load
                if not (path / "config.json").is_file():
                    model, tokenizer = _train_with_fixed_threads(name, progress)
                    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{name}-"))
                    model.save_pretrained(tmp)
                    tokenizer.save_pretrained(tmp)
                    try:
                        tmp.rename(path)  # atomic: readers never see a half-written folder
                    except OSError:
                        shutil.rmtree(tmp, ignore_errors=True)
        name = str(path)
    elif Path(name).exists() and not (Path(name) / "config.json").is_file():
        raise ValueError(f"{name} is a folder without config.json: save a model there with save_pretrained")
    local = Path(name).exists() or not hub_reachable()
    try:
        auto = _auto_class(name, local)
        if attn_implementation is None:
            attn_implementation = "eager" if auto is AutoModelForMaskedLM else "sdpa"
        model = auto.from_pretrained(name, attn_implementation=attn_implementation, local_files_only=local,
                                     adapter_kwargs={"local_files_only": local})
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local)
    except OSError as exc:
        raise ValueError(f"could not load {name!r} ({exc}). Offline, use a course model "
                         f"({', '.join(RECIPES)}) or a local folder; hub ids need the network "
                         "(or a copy already in the Hugging Face cache).") from None
    return model.eval(), tokenizer


def hub_reachable(host: str = "huggingface.co", timeout: float = 2.0) -> bool:
    """True if the model hub answers; offline we load from local files at once instead of retrying."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False
