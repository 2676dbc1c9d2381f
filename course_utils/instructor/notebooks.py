"""Notebook plumbing shared by the release, runner, grader and format tests.

The Colab badge and the setup cell are generated here from ``REPO_URL`` so the repository's
address is written once; tests check every notebook against these functions.
"""
from __future__ import annotations

import json
from pathlib import Path

import nbformat

from .. import REPO_URL, __version__

FOLDERS = ("lectures", "labs", "solutions")


def colab_badge(folder: str, name: str) -> str:
    """Markdown for the 'Open in Colab' badge of ``folder/name.ipynb``."""
    if folder not in FOLDERS:
        raise ValueError(f"folder must be one of {FOLDERS}, got {folder!r}")
    path = REPO_URL.removeprefix("https://github.com/")
    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/{path}/blob/main/{folder}/{name}.ipynb)")


def setup_cell(name: str) -> str:
    """The second cell of every notebook: install on Colab only, then seed and print the profile."""
    return (
        "# Setup: on Colab this installs the course package; locally `make start` already did.\n"
        "import sys\n"
        "if \"google.colab\" in sys.modules:\n"
        f"    %pip install -q \"llm-course @ git+{REPO_URL}@v{__version__}\"\n"
        "from course_utils import setup\n"
        f"profile = setup(\"{name}\")"
    )


def read_notebook(path: str | Path) -> nbformat.NotebookNode:
    """Read a notebook, raising ValueError with the file name when it is not valid notebook JSON."""
    path = Path(path)
    try:
        return nbformat.read(path, as_version=4)
    except (OSError, ValueError, json.JSONDecodeError, nbformat.reader.NotJSONError) as exc:
        raise ValueError(f"{path}: not a readable notebook ({exc.__class__.__name__}: {exc})") from None


def strip_outputs(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Clear outputs and execution counts in place (notebooks are committed clean); returns nb."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return nb


def nbgrader_meta(cell) -> dict:
    """The cell's nbgrader metadata ({} when it has none)."""
    return dict(cell.get("metadata", {}).get("nbgrader", {}))
