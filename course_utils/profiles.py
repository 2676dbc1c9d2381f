"""Hardware profiles (ci / cpu / gpu), seeding and device selection in one call.

Every notebook starts with ``profile = setup("01_attention")``: it picks the profile, seeds
every random number generator, chooses the device and prints the settings the notebook will use.
Sizes live here, in one table, so no notebook hard-codes them.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

import numpy as np
import torch

PROFILES = ("ci", "cpu", "gpu")

# Per-notebook sizes. "ci" must run in seconds on 2 CPU cores; "cpu" in a few minutes on a laptop;
# "gpu" is sized for a free Colab T4 and may load real checkpoints from the model hub.
SETTINGS: dict[str, dict[str, dict]] = {
    "01_attention": {
        "ci": {"model": "tiny-bert", "w2v_stories": 1500, "w2v_steps": 300, "probe_stories": 100, "n_random_checks": 20},
        "cpu": {"model": "tiny-bert", "w2v_stories": 4000, "w2v_steps": 1500, "probe_stories": 400, "n_random_checks": 100},
        "gpu": {"model": "bert-base-uncased", "w2v_stories": 4000, "w2v_steps": 1500, "probe_stories": 400, "n_random_checks": 100},
    },
    "02_bert_mlm": {
        "ci": {"train_stories": 3000, "eval_stories": 300, "vocab_size": 300, "hidden_size": 64, "layers": 2,
               "steps": 400, "batch_size": 32, "lr": 5e-3, "lab_steps": 60, "hub_model": None,
               "twin": {"hidden_size": 64, "layers": 2, "steps": 400, "batch_size": 32, "lr": 5e-3}},
        "cpu": {"train_stories": 8000, "eval_stories": 1000, "vocab_size": 400, "hidden_size": 128, "layers": 2,
                "steps": 800, "batch_size": 64, "lr": 3e-3, "lab_steps": 300, "hub_model": None,
                "twin": {"hidden_size": 64, "layers": 2, "steps": 400, "batch_size": 32, "lr": 5e-3}},
        "gpu": {"train_stories": 20000, "eval_stories": 2000, "vocab_size": 500, "hidden_size": 256, "layers": 4,
                "steps": 3000, "batch_size": 128, "lr": 1e-3, "lab_steps": 1000,
                "hub_model": "bert-base-uncased",
                "twin": {"hidden_size": 64, "layers": 2, "steps": 400, "batch_size": 32, "lr": 5e-3}},
    },
    "03_gpt_pretraining": {
        "ci": {"stories": 3000, "vocab_size": 600, "model": {"n_layer": 2, "n_head": 4, "n_embd": 64}, "block_size": 64,
               "batch_size": 16, "max_iters": 300, "lr": 6e-3, "warmup": 30, "eval_interval": 50, "ppl_margin": 0.1,
               "scaling": [{"n_layer": 1, "n_head": 2, "n_embd": 16}, {"n_layer": 2, "n_head": 2, "n_embd": 32},
                           {"n_layer": 2, "n_head": 4, "n_embd": 64}], "scaling_iters": 150,
               "decode_model": None, "decode_prompt": "mia was", "max_new_tokens": 24,
               "lab_stories": 1500, "lab_model": {"n_layer": 2, "n_head": 4, "n_embd": 64}, "lab_iters": 400,
               "lab_lr": 1e-2},
        "cpu": {"stories": 10000, "vocab_size": 600, "model": {"n_layer": 4, "n_head": 4, "n_embd": 128}, "block_size": 64,
                "batch_size": 16, "max_iters": 600, "lr": 3e-3, "warmup": 50, "eval_interval": 100, "ppl_margin": 0.1,
                "scaling": [{"n_layer": 1, "n_head": 2, "n_embd": 16}, {"n_layer": 2, "n_head": 2, "n_embd": 32},
                            {"n_layer": 4, "n_head": 4, "n_embd": 128}], "scaling_iters": 150,
                "decode_model": None, "decode_prompt": "mia was", "max_new_tokens": 30,
                "lab_stories": 4000, "lab_model": {"n_layer": 2, "n_head": 4, "n_embd": 64}, "lab_iters": 800,
                "lab_lr": 1e-2},
        "gpu": {"stories": 30000, "vocab_size": 1000, "model": {"n_layer": 6, "n_head": 6, "n_embd": 384}, "block_size": 128,
                "batch_size": 64, "max_iters": 1500, "lr": 1e-3, "warmup": 100, "eval_interval": 250, "ppl_margin": 0.1,
                "scaling": [{"n_layer": 1, "n_head": 2, "n_embd": 16}, {"n_layer": 2, "n_head": 4, "n_embd": 64},
                            {"n_layer": 6, "n_head": 6, "n_embd": 384}], "scaling_iters": 200,
                "decode_model": "gpt2", "decode_prompt": "Once upon a time,", "max_new_tokens": 40,
                "lab_stories": 4000, "lab_model": {"n_layer": 4, "n_head": 4, "n_embd": 128}, "lab_iters": 2000,
                "lab_lr": 3e-3},
    },
}


@dataclass(frozen=True)
class Profile:
    """The active profile: its name, the torch device and the notebook's settings."""

    name: str
    device: torch.device
    settings: dict = field(default_factory=dict)

    def __getitem__(self, key: str):
        if key not in self.settings:
            raise KeyError(f"profile {self.name!r} has no setting {key!r}; known: {sorted(self.settings)}")
        return self.settings[key]


def detect_profile() -> str:
    """Return the profile name: $COURSE_PROFILE if set, 'ci' under CI, 'gpu' with CUDA, else 'cpu'."""
    forced = os.environ.get("COURSE_PROFILE", "").strip().lower()
    if forced:
        if forced not in PROFILES:
            raise ValueError(f"COURSE_PROFILE={forced!r} is not a profile; use one of {PROFILES} or unset it")
        return forced
    if os.environ.get("CI"):
        return "ci"
    return "gpu" if torch.cuda.is_available() else "cpu"


def pick_device(profile: str) -> torch.device:
    """CUDA for the gpu profile when available, else CPU (ci always runs on CPU)."""
    if profile == "gpu" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so runs are repeatable."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup(notebook: str | None = None, seed: int = 0, profile: str | None = None, verbose: bool = True) -> Profile:
    """Pick the profile, seed everything, choose the device and print the notebook's settings."""
    name = profile.lower() if profile else detect_profile()
    if name not in PROFILES:
        raise ValueError(f"profile {name!r} is unknown; use one of {PROFILES}")
    if notebook is not None and notebook not in SETTINGS:
        raise ValueError(f"no settings for notebook {notebook!r}; known: {sorted(SETTINGS)}")
    seed_everything(seed)
    settings = dict(SETTINGS[notebook][name]) if notebook else {}
    prof = Profile(name=name, device=pick_device(name), settings=settings)
    if verbose:
        print(f"profile: {prof.name}  device: {prof.device}  torch {torch.__version__}  seed: {seed}")
        for key, value in settings.items():
            print(f"  {key}: {value}")
        if name != "gpu":
            print("  (set COURSE_PROFILE=cpu or gpu, or run on a GPU, for larger sizes)")
    return prof
