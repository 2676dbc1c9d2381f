"""`make start`'s page: JupyterLab at the repository root on START_HERE.ipynb, rendered in headless Chromium
(network blocked except this machine's JupyterLab). Skipped without chromium, except under CI.
"""
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
from test_bertviz_browser import NO_NETWORK, chromium  # noqa: F401  (chromium is a fixture)

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "START_HERE.ipynb"


def test_make_start_opens_the_start_page_at_the_root():
    recipe = re.search(r"^start: install\n\t(.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE).group(1)
    assert recipe == "$(BIN)/jupyter lab $(ROOT_FLAG) START_HERE.ipynb"


def test_start_page_links_resolve_and_it_has_no_code():
    nb = nbformat.read(PAGE, as_version=4)
    assert {c.cell_type for c in nb.cells} == {"markdown"}
    text = "\n".join(c.source for c in nb.cells)
    links = re.findall(r"\]\(([^)#]+)\)", text)
    assert len(links) >= 18 and all((ROOT / link).exists() for link in links), links
    for heading in ("lecture, then lab", "checks give feedback", "How to submit", "Profiles", "first run"):
        assert heading in text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab server at the repository root, as `make start` runs it (token off, no browser)."""
    port = free_port()
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--IdentityProvider.token=",
               f"--ServerApp.root_dir={ROOT}", "--ServerApp.open_browser=False", *(
                   ["--allow-root"] if os.geteuid() == 0 else [])]
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=1) as r:
                    json.load(r)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not start within 60 s")
        yield f"http://localhost:{port}"  # the browser resolves localhost only
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_start_page_renders_in_jupyterlab(chromium, jupyterlab, tmp_path):  # noqa: F811
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               f"--user-data-dir={tmp_path / 'profile'}", *NO_NETWORK, "--virtual-time-budget=20000",
               "--window-size=1200,900", "--dump-dom", f"{jupyterlab}/lab/tree/START_HERE.ipynb"]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
    assert '<h1 data-jupyter-id="Start-here"' in dom, "the start page is open and its markdown rendered"
    assert "How the checks give feedback" in dom and "How to submit" in dom
    listed = set(re.findall(r'class="jp-DirListing-itemText"[^>]*><span>([^<]+)', dom))
    assert {"lectures", "labs", "docs", "START_HERE.ipynb"} <= listed, "the file browser shows the repository root"
