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

# What each profile means, printed by setup() (the sizes themselves are in course_utils/settings/).
MEANING = {"ci": "the smallest sizes, the ones the tests run: each notebook within 120 s on a 2-core CPU",
           "cpu": "larger sizes for a laptop or desktop CPU: several minutes per notebook",
           "gpu": "the largest sizes, for a CUDA GPU (not yet run on one: see docs/students.md)"}

__all__ = ["MEANING", "PROFILES", "Profile", "detect_profile", "pick_device", "seed_everything", "seed_from_env", "setup"]


@dataclass(frozen=True)
class Profile:
    """The active profile: its name, the torch device, the notebook's settings and the seed.

    Notebooks derive the seeds of the lesson's own training and sampling from ``seed`` (e.g.
    ``seed=profile.seed + 1``), so ``COURSE_SEED`` reruns a lesson with other seeds; the seeds that
    define the data the lesson is evaluated on stay fixed.
    """

    name: str
    device: torch.device
    settings: dict = field(default_factory=dict)
    seed: int = 0

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


def seed_from_env() -> int:
    """The seed in $COURSE_SEED (an int), or 0 when it is unset or empty."""
    raw = os.environ.get("COURSE_SEED", "").strip()
    if not raw:
        return 0
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"COURSE_SEED={raw!r} is not an int; set it to a whole number such as 0, 1 or 2, "
                         "or unset it for seed 0") from None


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so runs are repeatable."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup(notebook: str | None = None, seed: int | None = None, profile: str | None = None, verbose: bool = True) -> Profile:
    """Pick the profile, seed everything, choose the device and print the notebook's settings.

    It also turns off transformers' own progress bars ("Loading weights", "Writing model shards"): for
    the course's tiny models they flash by as noise beside the course's bars (hub downloads keep theirs).
    The seed is ``seed`` when given, else $COURSE_SEED (default 0); it is ``profile.seed``.
    """
    name = profile.lower() if profile else detect_profile()
    if name not in PROFILES:
        raise ValueError(f"profile {name!r} is unknown; use one of {PROFILES}")
    settings = settings_for(notebook, name) if notebook is not None else {}
    if seed is None:
        seed = seed_from_env()
    seed_everything(seed)
    transformers.utils.logging.disable_progress_bar()
    prof = Profile(name=name, device=pick_device(name), settings=settings, seed=seed)
    if verbose:
        print(f"profile: {prof.name} ({MEANING[name]})  device: {prof.device}  seed: {seed}")
        print("  yours to change: COURSE_PROFILE=ci|cpu|gpu and COURSE_SEED=<whole number> (set before starting "
              "Jupyter), or setup(..., profile=..., seed=...)")
        if settings:
            print(f"  this notebook's {len(settings)} sizes: print(profile.settings)")
    return prof
