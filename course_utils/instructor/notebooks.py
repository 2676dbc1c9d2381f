"""Notebook plumbing shared by the release, runner, grader and format tests.

The Colab badge and the setup cell are generated here from ``REPO_URL`` and ``REF`` so the
repository's address and the installed ref are written once; tests check every notebook against these functions.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat

from .. import REF, REPO_URL

FOLDERS = ("lectures", "labs", "solutions")


def colab_badge(folder: str, name: str) -> str:
    """Markdown for the 'Open in Colab' badge of ``folder/name.ipynb``."""
    if folder not in FOLDERS:
        raise ValueError(f"folder must be one of {FOLDERS}, got {folder!r}")
    path = REPO_URL.removeprefix("https://github.com/")
    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/{path}/blob/{REF}/{folder}/{name}.ipynb)")


def setup_cell(name: str) -> str:
    """The second cell of every notebook: install on Colab only, then seed and print the profile."""
    return (
        "# Setup: on Colab this installs the course package; locally `make start` already did.\n"
        "# Colab is not yet tested (docs/students.md): if it asks to restart the session after the install, do so\n"
        "# and run the notebook again from the top.\n"
        "import sys\n"
        "if \"google.colab\" in sys.modules:\n"
        f"    %pip install -q \"llm-course @ git+{REPO_URL}@{REF}\"\n"
        "from course_utils import setup\n"
        f"profile = setup(\"{name}\")"
    )


_ANY_BADGE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)")


def set_header(nb: nbformat.NotebookNode, folder: str, name: str) -> bool:
    """Rewrite ``nb``'s Colab badge and setup cell from REPO_URL and REF; True if anything changed."""
    if len(nb.cells) < 2 or not _ANY_BADGE.search(nb.cells[0].source):
        raise ValueError(f"{folder}/{name}: the first cell needs a Colab badge and the second the setup cell")
    before = (nb.cells[0].source, nb.cells[1].source)
    nb.cells[0].source = _ANY_BADGE.sub(lambda _: colab_badge(folder, name), nb.cells[0].source, count=1)
    nb.cells[1].source = setup_cell(name)
    return before != (nb.cells[0].source, nb.cells[1].source)


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
