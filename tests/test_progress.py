"""course_utils.progress: a finished bar is saved in the notebook as its final state, not tqdm's frozen 0%."""
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

from course_utils.instructor.runner import kernel_env


def saved_text(source: str) -> list[str]:
    """The text/plain of every display output ``source`` leaves in an executed, saved notebook."""
    nb = new_notebook(cells=[new_code_cell(source)])
    client = NotebookClient(nb, timeout=120, kernel_name="python3")
    with client.setup_kernel(env=kernel_env()):
        client.execute_cell(nb.cells[0], 0)
    return [o["data"]["text/plain"] for o in nb.cells[0].outputs if o.output_type == "display_data"]


def test_finished_bars_are_saved_in_their_final_state():
    texts = saved_text("from course_utils.progress import tqdm, trange\n"
                       "for _ in tqdm(range(40), desc='train'):\n    pass\n"
                       "for _ in trange(7, desc='eval'):\n    pass\n"
                       "for _ in tqdm(range(3), desc='gone', leave=False):\n    pass\n"
                       "from tqdm.auto import tqdm as plain\nfor _ in plain(range(5), desc='plain'):\n    pass")
    assert texts[0].startswith("train: 100%|") and "40/40" in texts[0]
    assert texts[1].startswith("eval: 100%|") and "7/7" in texts[1]
    assert texts[2] == "", "leave=False: nothing is left"
    assert texts[3].startswith("plain:   0%|"), "tqdm.auto's own bar is saved frozen (the problem solved here)"


def test_outside_a_notebook_it_is_tqdm_auto():
    from tqdm.auto import tqdm as auto_tqdm

    from course_utils import progress
    assert progress.tqdm is auto_tqdm
