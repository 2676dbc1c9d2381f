"""Loading models: the course's shipped models by name, or any hub id or local folder through ``from_pretrained``.

``load_pretrained("tiny-gpt")`` reads the weights shipped in ``course_utils/models/weights`` (or in
``$COURSE_MODELS_DIR``, e.g. a set rebuilt with another seed): nothing is trained or downloaded, so every
machine starts from the same model. Any other name is a hub id or a folder: that is the path the ``gpu``
profile takes for real checkpoints such as ``bert-base-uncased``.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSequenceClassification
from transformers import AutoTokenizer
from transformers.utils import logging as hf_logging

from .recipes import RECIPES, recipe_key

SHIPPED = Path(__file__).with_name("weights")


def models_dir() -> Path:
    """Where the course models are read from: $COURSE_MODELS_DIR, else the weights shipped with the package."""
    return Path(os.environ.get("COURSE_MODELS_DIR") or SHIPPED)


def read_manifest(folder: Path | None = None) -> dict:
    """The manifest of a folder of course models ({} if it has none)."""
    path = (folder or models_dir()) / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def rebuild_command(folder: Path) -> str:
    """The command that rebuilds the course models in ``folder`` with the seed its manifest records."""
    if Path(folder) == SHIPPED:
        return "course models build"
    return f"course models build --seed {read_manifest(Path(folder)).get('seed', 0)} --out {folder}"


def course_model_path(name: str) -> Path:
    """The folder of course model ``name``, after checking that it was built from today's recipe and world."""
    folder = models_dir()
    manifest = read_manifest(folder)
    entry = manifest.get("models", {}).get(name)
    rebuild = rebuild_command(folder)
    if entry is None or not (folder / name / "config.json").is_file():
        raise FileNotFoundError(f"course model {name!r} is missing from {folder}; build it with `{rebuild}`")
    if entry["key"] != recipe_key(name, manifest.get("seed", 0)):
        raise RuntimeError(f"the weights of {name!r} in {folder} were built from another recipe or world text "
                           f"than this code's; rebuild them with `{rebuild}` (a few minutes on 2 cores)")
    return folder / name


def _auto_class(name: str, local: bool):
    """AutoModelForCausalLM, -ForSequenceClassification or -ForMaskedLM, from the config's ``architectures``."""
    archs = AutoConfig.from_pretrained(name, local_files_only=local).architectures or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return AutoModelForCausalLM
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return AutoModelForSequenceClassification
    return AutoModelForMaskedLM


def load_pretrained(name: str = "tiny-bert", attn_implementation: str | None = None, progress: bool = True):
    """Return ``(model, tokenizer)`` for a course model name, a hub id or a local folder, in eval mode.

    Course models (``tiny-bert``, ``tiny-gpt``, ``tiny-gpt-sft``, ...) load from the shipped weights; hub ids
    and folders load with ``AutoModelForCausalLM``, ``AutoModelForSequenceClassification`` or
    ``AutoModelForMaskedLM`` (whichever the config's ``architectures`` names). Masked LMs default to eager
    attention so that ``output_attentions=True`` returns the weights the course visualises; others to sdpa.
    ``progress`` is kept for callers that pass it; loading a few megabytes shows no bar.
    """
    if not isinstance(name, str) or not name:
        raise TypeError("name must be a model name such as 'tiny-bert', a hub id or a local folder path")
    source = str(course_model_path(name)) if name in RECIPES else name
    if name not in RECIPES and Path(name).exists() and not (Path(name) / "config.json").is_file():
        raise ValueError(f"{name} is a folder without config.json: save a model there with save_pretrained")
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bars for a few kilobytes
    try:
        local = Path(source).exists() or not hub_reachable()
        auto = _auto_class(source, local)
        if attn_implementation is None:
            attn_implementation = "eager" if auto is AutoModelForMaskedLM else "sdpa"
        model = auto.from_pretrained(source, attn_implementation=attn_implementation, local_files_only=local,
                                     adapter_kwargs={"local_files_only": local})
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
    except OSError as exc:
        raise ValueError(f"could not load {name!r} ({exc}). Offline, use a course model "
                         f"({', '.join(RECIPES)}) or a local folder; hub ids need the network "
                         "(or a copy already in the Hugging Face cache).") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
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
