"""Helpers the check and grading tests share (imported as `from notebook_helpers import ...`)."""
import html
import re
from datetime import datetime, timezone
from pathlib import Path

import nbformat

from course_utils.instructor.notebooks import nbgrader_meta, read_notebook


def solution_namespace(solution: Path, checks_import: str) -> dict:
    """The solution's checks import and every solution cell, executed into one namespace."""
    namespace = {}
    for cell in read_notebook(solution).cells:
        if cell.cell_type == "code" and (checks_import in cell.source or nbgrader_meta(cell).get("solution")):
            exec(cell.source, namespace)
    return namespace


def total(rows: dict) -> tuple[int, int]:
    """(points, max_points) summed over one submission's gradebook rows."""
    return sum(r.points for r in rows.values()), sum(r.max_points for r in rows.values())


def assert_lost_exactly(rows: dict, lost: dict[str, str], partial: bool = False, may_also_lose: frozenset = frozenset()) -> None:
    """The submission lost points in exactly the exercises of ``lost``, each message naming its mistake.

    ``partial``: also that it kept some points (0 < its total < the maximum). ``may_also_lose``: outcome
    exercises the mistake really harms, measured near their bar, so they may go either way.
    """
    failed = {ex for ex, r in rows.items() if r.points < r.max_points}
    assert set(lost) <= failed <= set(lost) | set(may_also_lose), {ex: r.message for ex, r in rows.items()}
    if partial:
        points, max_points = total(rows)
        assert 0 < points < max_points, (points, max_points)
    for exercise, words in lost.items():
        assert words in rows[exercise].message, (exercise, rows[exercise].message)


# ---- Saving the notebooks the suite executes (nbval, `ci` profile) for the website (`make site`) ----------------
# nbval runs each code cell as one test and keeps no notebook; these helpers record the kernel's messages of every
# cell and write the executed notebook to build/executed/<folder>/<name>.ipynb, which website/build.py renders.
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
OUTPUT_MESSAGES = {"stream", "display_data", "execute_result", "error"}


def record_cell(item) -> dict:
    """Make nbval run ``item``'s cell while keeping the id it sends and every kernel message it reads:
    returns {"sent": [msg_id], "messages": [...]}, filled as the cell runs."""
    file, recording = item.parent, {"sent": [], "messages": []}
    execute, receive = file.kernel.execute_cell_input, file.get_kernel_message

    def recording_execute(*args, **kwargs):
        recording["sent"].append(execute(*args, **kwargs))
        return recording["sent"][-1]

    def recording_receive(*args, **kwargs):
        recording["messages"].append(receive(*args, **kwargs))
        return recording["messages"][-1]

    file.kernel.execute_cell_input, file.get_kernel_message = recording_execute, recording_receive
    return recording


def stop_recording(item) -> None:
    """Give nbval back its own kernel methods (undo record_cell)."""
    vars(item.parent.kernel).pop("execute_cell_input", None)
    vars(item.parent).pop("get_kernel_message", None)


def update_widgets(widgets: dict, message: dict) -> None:
    """Apply one comm message to ``widgets`` ({model id: state}), as a front end keeps ipywidgets' models."""
    content, kind = message["content"], message["msg_type"]
    data = content.get("data") or {}
    if kind == "comm_open" or (kind == "comm_msg" and data.get("method") == "update"):
        widgets.setdefault(content["comm_id"], {}).update(data.get("state") or {})


def widget_text(widgets: dict, model_id: str) -> str:
    """The text a widget shows in its final state: tqdm's bar (an HBox of HTML, progress, HTML) as one line."""
    state = widgets.get(model_id, {})
    name = state.get("_model_name", "")
    if name in ("HBoxModel", "VBoxModel"):
        parts = [widget_text(widgets, child.removeprefix("IPY_MODEL_")) for child in state.get("children", [])]
        return ("" if name == "HBoxModel" else "\n").join(parts)
    if "Progress" in name:
        low, high, value = state.get("min", 0), state.get("max", 100), state.get("value", 0)
        filled = round(10 * (value - low) / (high - low)) if high > low else 10
        return "|" + "█" * filled + " " * (10 - filled) + "|"
    return html.unescape(re.sub(r"<[^>]*>", "", str(state.get("value", state.get("description", "")))))


def cell_outputs(messages: list[dict], widgets: dict) -> list:
    """A cell's outputs from its execution's messages, as Jupyter would save them (clear_output and display
    updates applied); a widget output becomes the text of its final state, so a progress bar shows where it ended."""
    outputs, clear_on_next = [], False
    for message in messages:
        kind, content = message["msg_type"], message["content"]
        if kind == "clear_output":
            clear_on_next = bool(content.get("wait"))
            if not clear_on_next:
                outputs.clear()
        elif kind in OUTPUT_MESSAGES:
            if clear_on_next:
                outputs.clear()
                clear_on_next = False
            outputs.append(nbformat.v4.output_from_msg(message))
            outputs[-1].display_id = (content.get("transient") or {}).get("display_id")
        elif kind == "update_display_data":
            display_id = (content.get("transient") or {}).get("display_id")
            for output in outputs:
                if getattr(output, "display_id", None) == display_id:
                    output.data, output.metadata = content["data"], content["metadata"]
    for output in outputs:
        output.pop("display_id", None)
        view = output.get("data", {}).pop(WIDGET_VIEW, None)
        if view is not None:
            output.data = {"text/plain": widget_text(widgets, view["model_id"])}
    return outputs


def keep_cell(item, recording: dict, failed: bool) -> None:
    """Store the outputs of ``item``'s cell (from record_cell's recording) in the notebook nbval is running."""
    file = item.parent
    widgets = vars(file).setdefault("executed_widgets", {})
    for message in recording["messages"]:
        update_widgets(widgets, message)
    msg_id = recording["sent"][0] if recording["sent"] else None
    mine = [m for m in recording["messages"] if msg_id and m["parent_header"].get("msg_id") == msg_id]
    item.cell.outputs = cell_outputs(mine, widgets)
    if mine:  # nbval runs cells without storing history, so the kernel numbers every one 1: count them here
        vars(file)["executed_count"] = vars(file).get("executed_count", 0) + 1
    item.cell.execution_count = vars(file).get("executed_count") if mine else None
    if failed:
        vars(file).setdefault("executed_failures", []).append(item.cell_num)


def save_executed(item, root: Path, profile: str) -> Path | None:
    """After ``item``, the last code cell of its notebook: write the notebook with the outputs it produced to
    root/build/executed/<folder>/<name>.ipynb, with the profile, the time and the failing cells in its metadata."""
    file = item.parent
    if item.cell_num != sum(cell.cell_type == "code" for cell in file.nb.cells) - 1:
        return None
    failures = vars(file).get("executed_failures", [])
    file.nb.metadata["course_execution"] = {
        "profile": profile, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "by": "make test (pytest --nbval-lax)", "failed_cells": failures}
    path = root / "build" / "executed" / Path(str(file.fspath)).relative_to(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(file.nb, path)
    return path
