"""Progress bars whose final state is what a saved notebook (and its HTML export) shows.

tqdm's notebook bar is a widget; a notebook saved without widget state keeps only the text it had when it was
first drawn, so a finished bar shows "0%" when reopened. Here the bar is shown through a display handle and,
when it closes, the handle's output is replaced by the finished bar as text. Outside a notebook these are
``tqdm.auto``'s bars unchanged.
"""
from __future__ import annotations

from IPython.display import display
from tqdm import autonotebook
from tqdm.auto import tqdm as auto_tqdm
from tqdm.notebook import tqdm as notebook_tqdm

__all__ = ["tqdm", "trange"]


class _FinalStateBar(notebook_tqdm):
    """tqdm's notebook bar that leaves its final state, as text, in the notebook's saved output."""

    def __init__(self, *args, **kwargs):
        show = kwargs.pop("display", True)
        super().__init__(*args, display=False, **kwargs)
        self._handle = display(self.container, display_id=True) if show and not self.disable else None

    def close(self):
        super().close()
        if self._handle is not None:
            final = self.format_meter(**self.format_dict) if self.leave else ""  # leave=False: the bar goes
            self._handle.update({"text/plain": final}, raw=True)
            self._handle = None


tqdm = _FinalStateBar if issubclass(autonotebook.tqdm, notebook_tqdm) else auto_tqdm


def trange(*args, **kwargs):
    """``tqdm(range(*args), **kwargs)``."""
    return tqdm(range(*args), **kwargs)
