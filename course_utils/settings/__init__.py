"""Each module's sizes per profile, one small file per module: ``settings/<topic>.py`` for ``NN_topic``.

A settings file names its notebook (``NOTEBOOK = "01_attention"``) and holds one dict per profile,
``CI``, ``CPU`` and ``GPU``, with the same keys. ``ci`` must run in seconds on 2 CPU cores, ``cpu`` in a
few minutes on a laptop, and ``gpu`` is sized for a free Colab T4 and may name real hub checkpoints.
"""
from __future__ import annotations

import copy
import importlib
import pkgutil

PROFILES = ("ci", "cpu", "gpu")


def _modules() -> dict:
    mods = [importlib.import_module(f"{__name__}.{m.name}") for m in pkgutil.iter_modules(__path__)]
    return {mod.NOTEBOOK: mod for mod in mods}


def notebooks() -> list[str]:
    """The notebook names (``NN_topic``) that have settings, in course order."""
    return sorted(_modules())


def settings_for(notebook: str, profile: str) -> dict:
    """A fresh copy of ``notebook``'s settings in ``profile`` (editing it changes nothing here)."""
    if profile not in PROFILES:
        raise ValueError(f"profile {profile!r} is unknown; use one of {PROFILES}")
    modules = _modules()
    if notebook not in modules:
        raise ValueError(f"no settings for notebook {notebook!r}; known: {sorted(modules)}. "
                         "Add course_utils/settings/<topic>.py (see CONTRIBUTING.md)")
    return copy.deepcopy(getattr(modules[notebook], profile.upper()))
