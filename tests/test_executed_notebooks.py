"""The notebooks the suite saves for the website (tests/notebook_helpers.py) hold the outputs Jupyter would keep:
checked against nbclient, Jupyter's own executor, on the same cells in a real kernel."""
import re

import nbformat
import pytest
from nbclient import NotebookClient

from notebook_helpers import WIDGET_VIEW, cell_outputs, update_widgets, widget_text

CELLS = [
    "print('first'); import sys; print('warn', file=sys.stderr)",
    "from IPython.display import clear_output, display\nprint('gone')\nclear_output(wait=True)\nprint('kept')",
    "handle = display('v1', display_id=True)\nhandle.update('v2')\n21 * 2",
    "from tqdm.auto import tqdm\nfor _ in tqdm(range(5), desc='demo'):\n    pass",
]


class RecordingClient(NotebookClient):
    """nbclient that also keeps every message of each cell, as nbval hands them to the suite's recorder."""

    def process_message(self, msg, cell, cell_index):
        self.recorded.setdefault(cell_index, []).append(msg)
        return super().process_message(msg, cell, cell_index)


@pytest.fixture(scope="module")
def executed():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in CELLS])
    client = RecordingClient(nb, timeout=120, kernel_name="python3", store_widget_state=True)
    client.recorded = {}
    client.execute()
    return nb, client.recorded


def plain(outputs):
    """Outputs without what differs between runs and savers (execution counts, metadata)."""
    return [{k: v for k, v in o.items() if k not in ("execution_count", "metadata")} for o in outputs]


def test_outputs_match_what_nbclient_saves(executed):
    nb, recorded = executed
    widgets = {}
    for index in range(3):
        for message in recorded[index]:
            update_widgets(widgets, message)
        assert plain(cell_outputs(recorded[index], widgets)) == plain(nb.cells[index].outputs), CELLS[index]


def test_a_progress_bar_is_saved_as_the_text_of_its_final_state(executed):
    nb, recorded = executed
    widgets = {}
    for message in recorded[3]:
        update_widgets(widgets, message)
    [saved] = cell_outputs(recorded[3], widgets)
    model_id = nb.cells[3].outputs[0]["data"][WIDGET_VIEW]["model_id"]
    nbclient_state = {key: value["state"] for key, value in
                      nb.metadata.widgets["application/vnd.jupyter.widget-state+json"]["state"].items()}
    assert saved.data == {"text/plain": widget_text(nbclient_state, model_id)}
    assert re.fullmatch(r"demo: 100%\|██████████\| 5/5 \[\d\d:\d\d<\d\d:\d\d, .*it/s\]",
                        saved.data["text/plain"].replace("\u2007", " ")), saved.data["text/plain"]
