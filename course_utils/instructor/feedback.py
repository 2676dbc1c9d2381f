"""Feedback pages of `course grade`: one self-contained HTML file per student, readable offline.

Each page shows the student's points per exercise with the check's message, the notebook's own cell
where the message names one (else the student's answer cell above the check, or the check cell as the
student has it: hidden tests never appear), and the class's distribution of totals with the student's bar.
"""
from __future__ import annotations

import html
import re
from pathlib import Path

from .gradebook import by_student
from .notebooks import nbgrader_meta, read_notebook

BINS = 10
STYLE = """body{font-family:sans-serif;max-width:52em;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:.4em;text-align:left;
vertical-align:top}.ok{color:#17653a}.lost{color:#a4161a}pre{background:#f5f5f5;padding:.6em;overflow-x:auto;
font-size:.85em}.flag{background:#fde2e2;padding:.5em}"""


def page_name(student: str) -> str:
    """A file name for ``student``'s page: letters, digits, '.', '-' and '_' kept, anything else '_'."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", student) + ".html"


def _cells(submission: str) -> list:
    try:
        return read_notebook(submission).cells
    except Exception:
        return []


def _excerpt(row: dict, cells: list) -> str:
    """The notebook cell behind a lost exercise: the one its message names, else the student's answer cell
    above the exercise's check cell (else the check cell itself)."""
    named = re.search(r"\bcell (\d+)\b", row["message"])
    index = int(named.group(1)) - 1 if named else None
    if index is None:
        check = next((i for i, c in enumerate(cells) if nbgrader_meta(c).get("grade_id") == row["exercise"]), None)
        answers = [i for i in range(check or 0) if nbgrader_meta(cells[i]).get("solution")]
        index = answers[-1] if answers else check
    if index is None or not 0 <= index < len(cells):
        return ""
    return f"<p>Cell {index + 1} of your notebook:</p><pre>{html.escape(cells[index].source)}</pre>"


def histogram(totals: list[float], most: float, mine: float) -> str:
    """An inline SVG bar chart of the class's totals in ``BINS`` bins; the bar holding ``mine`` is dark."""
    width = most / BINS if most > 0 else 1.0
    counts = [0] * BINS
    for t in totals:
        counts[min(BINS - 1, int(t / width))] += 1
    own, top = min(BINS - 1, int(mine / width)), max(counts) or 1
    bars = "".join(
        f'<rect x="{i * 40 + 5}" y="{110 - 100 * c / top:.1f}" width="30" height="{100 * c / top:.1f}" '
        f'fill="{"#1f4e79" if i == own else "#9db9d5"}"><title>{i * width:g}-{(i + 1) * width:g}: {c}</title></rect>'
        for i, c in enumerate(counts))
    return (f'<svg role="img" aria-label="class distribution" width="{BINS * 40 + 10}" height="130">{bars}'
            f'<text x="5" y="126" font-size="11">0</text><text x="{BINS * 40 - 20}" y="126" font-size="11">'
            f'{most:g}</text></svg>')


def page(student: dict, exercises: list[str], rows: list[dict], totals: list[float]) -> str:
    """The HTML feedback page of one student (``rows``: their gradebook rows)."""
    lab, cells = rows[0]["lab"], _cells(student["submission"])
    body = []
    for r in rows:
        ok = float(r["points"]) == float(r["max_points"])
        body.append(f'<tr><td>{html.escape(r["exercise"])}</td><td class="{"ok" if ok else "lost"}">'
                    f'{float(r["points"]):g} / {float(r["max_points"]):g}</td><td>{html.escape(r["message"])}'
                    f'{"" if ok else _excerpt(r, cells)}</td></tr>')
    flag = f'<p class="flag">Flag: {html.escape(student["flags"])}</p>' if student["flags"] else ""
    median = sorted(totals)[len(totals) // 2]
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(lab)}: '
            f'{html.escape(student["student"])}</title><style>{STYLE}</style></head><body>'
            f'<h1>{html.escape(lab)}: feedback for {html.escape(student["student"])}</h1>'
            f'<p id="total">Total: <b>{student["total"]:g} / {student["max"]:g}</b></p>{flag}'
            f'<table><tr><th>exercise</th><th>points</th><th>check says</th></tr>{"".join(body)}</table>'
            f'<h2>The class on this lab</h2><p>{len(totals)} students, median {median:g} / {student["max"]:g}; '
            f'your bar is the dark one.</p>{histogram(totals, student["max"], student["total"])}</body></html>')


def write_feedback(rows: list[dict], out: Path) -> Path:
    """Write ``<out stem>-feedback/<student>.html`` for every student in ``rows``; returns the folder."""
    folder = Path(f"{out.with_suffix('')}-feedback")
    folder.mkdir(parents=True, exist_ok=True)
    exercises, students = by_student(rows)
    totals = [s["total"] for s in students]
    for s in students:
        mine = [r for r in rows if r["student"] == s["student"]]
        (folder / page_name(s["student"])).write_text(page(s, exercises, mine, totals), encoding="utf-8")
    return folder
