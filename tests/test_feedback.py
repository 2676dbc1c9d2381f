"""The per-student feedback pages of `course grade`, opened in headless Chromium with the network blocked.

Needs Debian's chromium (see test_bertviz_browser.py): skipped without it, except under CI.
"""
import re

import nbformat
import pytest
from test_bertviz_browser import browse, chromium, colored_pixels  # noqa: F401  (chromium is a fixture)
from test_grading import EXERCISES, solution_notebook

from course_utils.instructor import feedback, grading
from course_utils.instructor.release import release_notebook

POINTS = {"profile_check": 0.0, "add_check": 2.0, "mul_check": 2.0, "neg_check": 2.0}
VERDICTS = {  # student -> exercise -> message of a lost exercise (anything else passes)
    "ana": {},
    "ben": {"mul_check": "not run: the notebook stopped in cell 6 (timed out after 5 s)",
            "neg_check": "AssertionError: <script>alert('x')</script> neg(2) should be -2"},
    "cy": {"add_check": "NameError: name 'add' is not defined", "mul_check": "AssertionError",
           "neg_check": "AssertionError"},
}


@pytest.fixture
def pages(tmp_path, monkeypatch):
    sol = solution_notebook()
    nbformat.write(sol, tmp_path / "99_demo.ipynb")
    lab = release_notebook(sol)
    looping = release_notebook(sol)
    looping.cells[5].source = "def mul(a, b):\n    while True:\n        pass  # ben's loop"
    paths = []
    for name, nb in zip(VERDICTS, (looping, looping, lab)):  # cy hands in the lab as released
        nbformat.write(nb, tmp_path / f"{name}.ipynb")
        paths.append(tmp_path / f"{name}.ipynb")

    def fake(submission, solution_path, timeout, profile, hide, run_cache=None):
        lost = VERDICTS[re.sub(r".*/|\.ipynb$", "", str(submission))]
        return [grading.ExerciseResult(str(submission), e, 0.0 if e in lost else POINTS[e], POINTS[e],
                                       lost.get(e, "passed")) for e in EXERCISES]

    monkeypatch.setattr(grading, "grade_submission", fake)
    grading.grade(tmp_path / "99_demo.ipynb", paths, tmp_path / "grades.csv")
    return tmp_path / "grades-feedback"


def test_one_page_per_student(pages):
    assert sorted(p.name for p in pages.iterdir()) == ["ana.html", "ben.html", "cy.html"]
    assert feedback.page_name("Zoë O'Neil/1") == "Zo__O_Neil_1.html"


def test_feedback_page_in_a_browser(chromium, pages):  # noqa: F811
    dom = browse(chromium, pages / "ben.html", "--dump-dom").stdout
    text = re.sub(r"<[^>]+>", " ", dom)
    assert re.search(r"Total:\s+2 / 6", text)
    assert "not run: the notebook stopped in cell 6 (timed out after 5 s)" in text
    assert "ben's loop" in dom and "Cell 6 of your notebook" in text, "the notebook's own failing cell is shown"
    assert "<script>alert" not in dom and "&lt;script&gt;alert" in dom, "messages are shown as text"
    assert "Cell 8 of your notebook" in text and "Write your solution here" in dom, "neg's answer cell, above its check"
    assert "HIDDEN" not in dom and "assert neg(-3)" not in dom, "no hidden tests"
    assert "3 students, median 2 / 6" in text
    bars = re.findall(r'<rect [^>]*fill="(#[0-9a-f]+)"', dom)
    assert len(bars) == feedback.BINS and bars.count("#1f4e79") == 1, "ten bars, the student's own dark"
    assert not re.search(r"(src|href)=\"https?:", dom), "the page loads nothing from the network"
    assert colored_pixels(chromium, pages / "ben.html") > 1000, "the bars are drawn"


def test_flags_and_full_marks_pages(chromium, pages):  # noqa: F811
    text = re.sub(r"<[^>]+>", " ", browse(chromium, pages / "cy.html", "--dump-dom").stdout)
    assert "Flag: not attempted" in text and re.search(r"Total:\s+0 / 6", text)
    text = re.sub(r"<[^>]+>", " ", browse(chromium, pages / "ana.html", "--dump-dom").stdout)
    assert re.search(r"Total:\s+6 / 6", text) and "Cell " not in text
