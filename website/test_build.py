"""website/build.py's staging rules, without Sphinx: links, and what happens to a lecture `make test` did not run."""

import nbformat
import pytest

import course_utils
from website import build


@pytest.fixture
def staged(tmp_path, monkeypatch):
    """build.py writing into tmp_path, reading executions from tmp_path/executed."""
    monkeypatch.setattr(build, "EXECUTED", tmp_path / "executed")
    for name, folder in (("BUILD", "site"), ("SRC", "site/src"), ("STATIC", "site/static"), ("HTML", "site/html")):
        monkeypatch.setattr(build, name, tmp_path / folder)
    return tmp_path


def test_links_stay_on_the_site_or_point_at_the_repository():
    pages = {"lectures/01_attention.ipynb", "benchmarks/README.md"}
    text = ("[a](../benchmarks/README.md#robustness) [b](../course_utils/lora.py) [c](../README.md#on-colab) "
            "[d](https://example.org/x) [e](#local) [f](01_attention.ipynb)")
    assert build.rewrite_links(text, "lectures/02_bert_mlm.ipynb", pages) == (
        f"[a](../benchmarks/README.md#robustness) [b]({course_utils.REPO_URL}/blob/{course_utils.REF}/course_utils/"
        "lora.py) [c](../index.md#on-colab) [d](https://example.org/x) [e](#local) [f](01_attention.ipynb)")


def test_strict_build_refuses_lectures_that_were_not_executed(staged, capsys):
    assert build.main(["--strict"]) == 1
    err = capsys.readouterr().err
    assert "lectures/01_attention.ipynb was not executed" in err and "run `make test` first" in err


def test_a_lecture_changed_since_its_execution_is_reported(staged):
    (staged / "executed" / "lectures").mkdir(parents=True)
    nb = nbformat.read(build.ROOT / "lectures" / "01_attention.ipynb", as_version=4)
    nb.metadata["course_execution"] = {"profile": "ci", "date": "2026-12-07 09:00 UTC", "failed_cells": []}
    nbformat.write(nb, staged / "executed" / "lectures" / "01_attention.ipynb")
    problems = []
    assert build.saved_execution("lectures/01_attention.ipynb", problems) is not None and not problems
    next(c for c in nb.cells if c.cell_type == "code").source += "\nprint('edited')"
    nbformat.write(nb, staged / "executed" / "lectures" / "01_attention.ipynb")
    assert build.saved_execution("lectures/01_attention.ipynb", problems) is None
    assert problems == ["lectures/01_attention.ipynb changed since `make test` executed it: run `make test` again"]
