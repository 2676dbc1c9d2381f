"""The recipes of the course's own models, and the key that ties shipped weights to a recipe and to the world.

A recipe is plain data: which parts of the world a model reads (``world``), its config and its training
settings. ``recipe_key`` hashes a recipe together with a fingerprint of the text of each world part it (or a
model it starts from) reads, so a change to either (a new sentence pattern, another step count) makes that
model's shipped weights stale until they are rebuilt with ``course models build``; the other models stay valid.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import random

from ..world.corpus import WORLD_VERSION, make_corpus, make_split_stories
from ..world.instructions import FAMILIES, TEMPLATES_DIGEST, make_tasks, task_split
from ..world.preferences import SURE, VERBOSE, human_demonstrations, rlhf_split, sample_pairs
from ..world.reasoning import MIXTURE, REASONING_VERSION, copy_document, make_mixture
from ..world.tokenization import CHAT_TEMPLATE

RECIPES = {
    "tiny-bert": {
        "world": ["corpus"],
        "corpus": {"n": 4000, "seed": 0},
        "vocab_size": 300,
        "config": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                   "intermediate_size": 128, "max_position_embeddings": 64},
        "train": {"steps": 600, "batch_size": 32, "lr": 3e-3, "seed": 0},
    },
    "tiny-gpt": {
        "world": ["stories", "instructions"],
        "corpus": {"n": 8000, "seed": 0, "min_sentences": 1, "max_sentences": 4},  # training split only
        "vocab_size": 600,
        "chat_template": CHAT_TEMPLATE,
        "task_templates": TEMPLATES_DIGEST,  # the tokenizer also reads every task family's wording
        "config": {"n_layer": 2, "n_head": 4, "n_embd": 64, "block_size": 128},
        "train": {"steps": 400, "batch_size": 16, "lr": 3e-3, "seed": 0},
    },
    "tiny-gpt-reasoner": {  # module 08: few-shot episodes and word problems (world/reasoning.py)
        "world": ["reasoning"],
        "data": {"n": 48000, "seed": 0, "mixture": MIXTURE, "version": REASONING_VERSION},  # training split only
        "vocab_size": 700,  # every world word one token
        "config": {"n_layer": 2, "n_head": 4, "n_embd": 64, "block_size": 192},
        "copy": {"n": 4000, "steps": 600, "lr": 3e-3},  # first grow induction heads on copy lists
        "train": {"steps": 12000, "batch_size": 32, "lr": 3e-3, "seed": 0},  # at 3500 steps seed 1 learnt no ICL
    },
}
# The SFT model of modules 05-06. Its demonstrations are right but often wordy (as people write them), so its
# replies sit well below the maximum of r* (correctness, then concision) and preference learning has room to help.
RECIPES["tiny-gpt-sft"] = {
    "base": "tiny-gpt",
    "base_recipe": RECIPES["tiny-gpt"],  # a change to the base model changes this model's key too
    "world": ["instructions", "demonstrations"],
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
# short run of the same recipe live; this full-length run is the one PPO uses.
RECIPES["tiny-gpt-rm"] = {
    "base": "tiny-gpt-sft-long",
    "base_recipe": RECIPES["tiny-gpt-sft-long"],
    "world": ["pairs"],
    "data": {"pair_stories": 2000, "prompt_stories": 300, "n_pairs": 80000, "bt_beta": 4.0, "seed": 0},
    "train": {"steps": 2400, "batch_size": 32, "lr": 1e-3, "seed": 0},
}

TRAIN_THREADS = 2  # PyTorch threads while building: the thread count changes the order of float sums


def check_name(name: str) -> None:
    """Raise ValueError unless ``name`` is a course model."""
    if name not in RECIPES:
        raise ValueError(f"{name!r} is not a course model; the course models are {', '.join(RECIPES)}")


def with_seed(recipe: dict, seed: int) -> dict:
    """A copy of ``recipe`` (and of its base recipes) whose training seed is ``seed``; the data stay the same."""
    recipe = copy.deepcopy(recipe)
    part = recipe
    while part is not None:
        part["train"]["seed"] = seed
        part = part.get("base_recipe")
    return recipe


def _world_sample(part: str) -> dict:
    """A sample of the text one part of the world generates, with the version numbers that part depends on."""
    if part == "corpus":
        return {"version": WORLD_VERSION, "corpus": make_corpus(300, seed=0)}
    if part == "stories":
        return {"version": WORLD_VERSION, "stories": [s.text for s in make_split_stories(300, "train", seed=0)]}
    if part == "instructions":
        tasks = make_tasks(make_split_stories(300, "train", seed=0), families=list(FAMILIES), seed=0)
        return {"templates": TEMPLATES_DIGEST, "tasks": [[t.instruction, t.output] for t in tasks]}
    if part == "demonstrations":
        return {"demonstrations": human_demonstrations(task_split(200, "train", seed=0), 0.6, 0.08, seed=0)}
    if part == "pairs":
        pair_tasks = rlhf_split(60, 10, 1, seed=0)["pairs"]
        return {"pairs": [[p.chosen, p.rejected] for p in sample_pairs(pair_tasks, 300, sharpness=4.0, seed=0)]}
    if part == "reasoning":
        return {"version": REASONING_VERSION, "mixture": make_mixture(300, split="train", seed=0, mixture=MIXTURE),
                "copy": [copy_document(random.Random(i)) for i in range(50)]}
    raise ValueError(f"{part!r} is not a part of the world; the parts are {', '.join(WORLD_PARTS)}")


WORLD_PARTS = ("corpus", "stories", "instructions", "demonstrations", "pairs", "reasoning")


@functools.lru_cache(maxsize=None)
def world_fingerprint(part: str) -> str:
    """A hash of a sample of one world part's generated text: it changes when that part's text does."""
    return hashlib.sha256(json.dumps(_world_sample(part), sort_keys=True).encode()).hexdigest()[:16]


def world_parts(recipe: dict) -> list[str]:
    """The world parts a recipe reads, with those of every model it starts from."""
    parts = set()
    while recipe is not None:
        parts.update(recipe["world"])
        recipe = recipe.get("base_recipe")
    return sorted(parts)


def recipe_key(name: str, seed: int = 0) -> str:
    """The key of course model ``name`` trained with ``seed``: a hash of its recipe and of the world's text."""
    check_name(name)
    recipe = RECIPES[name] if seed == 0 else with_seed(RECIPES[name], seed)
    keyed = {"recipe": recipe, "world": {part: world_fingerprint(part) for part in world_parts(recipe)}}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:12]
