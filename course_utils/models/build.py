"""Building the shipped course models: ``course models build`` trains each from its recipe, ``check`` verifies.

Each trainer below is the lesson code of its module run at full length (pretraining, SFT, the reward loss).
A build writes ``<folder>/<name>/`` (safetensors, config, tokenizer) and records in ``manifest.json`` each
model's recipe key, the SHA-256 of every file, the seconds it took and the machine that built it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling, GPT2LMHeadModel

from ..profiles import seed_everything
from ..training import train
from ..world.corpus import make_corpus, make_split_stories
from ..world.instructions import FAMILIES, make_tasks, task_split
from ..world.preferences import human_demonstrations
from ..world.reasoning import copy_document, make_mixture
from ..world.tokenization import END, train_chat_bpe, train_wordpiece
from .load import SHIPPED, load_pretrained, read_manifest, rebuild_command
from .recipes import RECIPES, TRAIN_THREADS, check_name, recipe_key, with_seed


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
    from ..world.preferences import rlhf_split, sample_pairs

    base, tokenizer = load_pretrained(recipe["base"], progress=progress)
    data, cfg = recipe["data"], recipe["train"]
    # the lecture's own split (prompt stories follow the pair stories); evaluation stories are not needed here
    tasks = rlhf_split(data["pair_stories"], data["prompt_stories"], 1, seed=data["seed"])["pairs"]
    pairs = sample_pairs(tasks, data["n_pairs"], sharpness=data["bt_beta"], seed=data["seed"])
    rm = train_reward_model(base, tokenizer, pairs, cfg["steps"], cfg["batch_size"], cfg["lr"], seed=cfg["seed"],
                            progress=progress, desc="reward model tiny-gpt-rm")
    return rm, tokenizer


TRAINERS = {"tiny-bert": pretrain_tiny_bert, "tiny-gpt": pretrain_tiny_gpt, "tiny-gpt-sft": finetune_tiny_gpt_sft,
            "tiny-gpt-sft-long": finetune_tiny_gpt_sft, "tiny-gpt-rm": train_tiny_gpt_rm,
            "tiny-gpt-reasoner": pretrain_tiny_gpt_reasoner}


def file_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file in ``folder``, by name."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def machine() -> dict:
    """What built the weights: CPU, numerics, thread count and library versions."""
    import transformers

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": cpu, "threads": TRAIN_THREADS, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(),
            "numerics": {k: os.environ[k] for k in ("MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY") if k in os.environ}}


def build(names: list[str] | None = None, seed: int = 0, out: Path = SHIPPED, progress: bool = True) -> dict:
    """Train course models ``names`` (default: all, bases first) with training seed ``seed`` into ``out``."""
    names = list(RECIPES) if not names else names
    for name in names:
        check_name(name)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(out) or {"seed": seed, "models": {}}
    if manifest.get("seed", 0) != seed:
        raise ValueError(f"{out} holds models built with seed {manifest['seed']}; build seed {seed} into another --out")
    previous, threads = os.environ.get("COURSE_MODELS_DIR"), torch.get_num_threads()
    os.environ["COURSE_MODELS_DIR"] = str(out)  # derived models load their base from the folder being built
    torch.set_num_threads(TRAIN_THREADS)
    try:
        for name in [n for n in RECIPES if n in names]:  # RECIPES lists every base before its derived models
            start = time.perf_counter()
            recipe = RECIPES[name] if seed == 0 else with_seed(RECIPES[name], seed)
            model, tokenizer = TRAINERS[name](recipe, progress=progress)
            tmp = Path(tempfile.mkdtemp(dir=out, prefix=f".{name}-"))
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            shutil.rmtree(out / name, ignore_errors=True)
            for path in [tmp, *tmp.iterdir()]:  # safetensors writes 0600; graded kernels run as another user
                path.chmod(0o755 if path.is_dir() else 0o644)
            tmp.rename(out / name)
            seconds = round(time.perf_counter() - start, 1)
            manifest["models"][name] = {"key": recipe_key(name, seed), "seconds": seconds, "files": file_hashes(out / name)}
            manifest["built_with"] = machine()
            (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
            if progress:
                print(f"built {name} in {manifest['models'][name]['seconds']} s -> {out / name}", flush=True)
    finally:
        torch.set_num_threads(threads)
        if previous is None:
            os.environ.pop("COURSE_MODELS_DIR", None)
        else:
            os.environ["COURSE_MODELS_DIR"] = previous
    return manifest


def problems(folder: Path = SHIPPED) -> list[str]:
    """Why the models in ``folder`` do not match this code (empty when every model is there and current)."""
    manifest, found = read_manifest(folder), []
    seed = manifest.get("seed", 0)
    for name in RECIPES:
        entry = manifest.get("models", {}).get(name)
        if entry is None or not (folder / name).is_dir():
            found.append(f"{name}: missing")
        elif entry["key"] != recipe_key(name, seed):
            found.append(f"{name}: built from another recipe or world text (key {entry['key']}, "
                         f"now {recipe_key(name, seed)})")
        elif file_hashes(folder / name) != entry["files"]:
            found.append(f"{name}: its files differ from the SHA-256 sums in the manifest")
    return found


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`course models build|check [NAME ...] [--seed N] [--out DIR]`."""
    parser.add_argument("action", choices=["build", "check"], help="build: train and save; check: verify")
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"course models (default all: {', '.join(RECIPES)})")
    parser.add_argument("--seed", type=int, default=0, help="training seed of every model built (default 0)")
    parser.add_argument("--out", type=Path, default=SHIPPED, help="folder of the models (default: the shipped ones)")


def main(args: argparse.Namespace) -> int:
    """Build or check; returns 1 when a check finds stale or missing models."""
    if args.action == "build":
        build(args.names, seed=args.seed, out=args.out)
        return 0
    found = problems(args.out)
    for line in found:
        print(line, file=sys.stderr)
    if found:
        print(f"rebuild with `{rebuild_command(args.out)}`", file=sys.stderr)
        return 1
    print(f"all {len(RECIPES)} course models in {args.out} match their recipes, the world and their SHA-256 sums")
    return 0
