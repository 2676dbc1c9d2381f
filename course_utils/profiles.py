"""Hardware profiles (ci / cpu / gpu), seeding and device selection in one call.

Every notebook starts with ``profile = setup("01_attention")``: it picks the profile, seeds
every random number generator, chooses the device and prints the settings the notebook will use.
Sizes live in ``course_utils/settings/``, one small file per module, so no notebook hard-codes them.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

import numpy as np
import torch
import transformers

from .settings import PROFILES, settings_for

__all__ = ["PROFILES", "Profile", "detect_profile", "pick_device", "seed_everything", "setup"]


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
    """Pick the profile, seed everything, choose the device and print the notebook's settings.

    It also turns off transformers' own progress bars ("Loading weights", "Writing model shards"): for
    the course's tiny models they flash by as noise beside the course's bars (hub downloads keep theirs).
    """
    name = profile.lower() if profile else detect_profile()
    if name not in PROFILES:
        raise ValueError(f"profile {name!r} is unknown; use one of {PROFILES}")
    settings = settings_for(notebook, name) if notebook is not None else {}
    seed_everything(seed)
    transformers.utils.logging.disable_progress_bar()
    prof = Profile(name=name, device=pick_device(name), settings=settings)
    if verbose:
        print(f"profile: {prof.name}  device: {prof.device}  torch {torch.__version__}  seed: {seed}")
        for key, value in settings.items():
            print(f"  {key}: {value}")
        if name != "gpu":
            print("  (set COURSE_PROFILE=cpu or gpu, or run on a GPU, for larger sizes)")
    return prof
