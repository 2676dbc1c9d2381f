"""The attention views render in a real browser with the network blocked; bertviz's own HTML does not.

Needs Debian's chromium (``apt-get install -y chromium fonts-liberation``): skipped without it, except
under CI (the CI variable set), where a missing browser is a failure.
"""
import os
import re
import shutil
import subprocess
from pathlib import Path

import bertviz
import matplotlib.pyplot as plt
import pytest

from course_utils.attention_views import get_attention, head_view, model_view, save_view
from course_utils.models import load_pretrained

SENTENCE = "the red cat chased the dog in the park ."
INSTALL = "install Debian's chromium: apt-get install -y chromium fonts-liberation"
NO_NETWORK = ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost", "--proxy-server=127.0.0.1:9",
              "--disable-background-networking", "--disable-quic", "--disable-component-update",
              "--disable-sync", "--disable-extensions", "--no-first-run", "--no-default-browser-check"]
# Clicks the first thumbnail of a model view, which draws that head in detail, tokens included.
CLICK_FIRST_HEAD = """<script>setTimeout(function () {
  var background = document.querySelector(".attn_background");
  background.parentNode.lastElementChild.dispatchEvent(new MouseEvent("click", {bubbles: true}));
}, 500);</script>"""
# Plays a classic Jupyter page: an AMD loader and the page's own jQuery are already there.
HOST_PAGE_GLOBALS = """<script>var defineCalls = 0;
window.define = function () { defineCalls++; }; window.define.amd = {jQuery: true};
window.jQuery = window.$ = "page jquery";</script>"""
REPORT_GLOBALS = """<pre id="report"></pre><script>setTimeout(function () {
  document.getElementById("report").textContent = "define calls: " + defineCalls + ", page jquery kept: "
    + (window.jQuery === "page jquery" && window.$ === "page jquery") + ", global d3: " + (typeof window.d3);
}, 1000);</script>"""


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"chromium is missing and CI is set: {INSTALL}")
        pytest.skip(f"chromium is missing: {INSTALL}")
    return path


@pytest.fixture(scope="module")
def attention():
    model, tokenizer = load_pretrained("tiny-bert", progress=False)
    return get_attention(model, tokenizer, SENTENCE)


def browse(chromium: str, page: Path, *action: str) -> subprocess.CompletedProcess:
    """Open ``page`` in headless chromium, network blocked, JS given 5 s of virtual time."""
    profile = page.parent / f"profile-{page.stem}-{action[0].strip('-').split('=')[0]}"
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               f"--user-data-dir={profile}", *NO_NETWORK, "--virtual-time-budget=5000",
               "--window-size=1000,1000", "--hide-scrollbars", *action, page.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
    return done


def rendered(chromium: str, page: Path) -> str:
    """The view's container in the DOM after its scripts ran (the markup before the first script)."""
    dom = browse(chromium, page, "--dump-dom").stdout
    start = dom.index('<div id="bertviz-')
    return dom[start:dom.index("<script", start)]


def colored_pixels(chromium: str, page: Path) -> int:
    """Number of clearly coloured (not white, grey or black) pixels in a screenshot of ``page``."""
    png = page.with_suffix(".png")
    browse(chromium, page, f"--screenshot={png}")
    rgb = plt.imread(png)[..., :3]
    return int(((rgb.max(-1) - rgb.min(-1)) > 0.05).sum())


def count(tag: str, html: str) -> int:
    return len(re.findall(rf"<{tag}\b", html))


def token_texts(html: str) -> list[str]:
    return re.findall(r"<text\b[^>]*>([^<]*)</text>", html)


def test_head_view_renders_offline(chromium, attention, tmp_path):
    attentions, tokens = attention
    page = save_view(head_view(attentions, tokens, html_action="return"), tmp_path / "head.html")
    view = rendered(chromium, page)
    assert count("svg", view) == 1 and count("line", view) >= len(tokens) ** 2 * 4  # 4 heads
    assert count("rect", view) >= 2 * len(tokens) and count("option", view) == 2  # layer 0, 1
    assert token_texts(view) == tokens + tokens, "the tokens are drawn on both sides"
    assert colored_pixels(chromium, page) > 5000, "the screenshot shows no coloured attention lines"  # head boxes: 1600


def test_model_view_renders_offline(chromium, attention, tmp_path):
    attentions, tokens = attention
    html = model_view(attentions, tokens, html_action="return").data
    page = save_view(html, tmp_path / "model.html")
    view = rendered(chromium, page)
    assert count("rect", view) >= 2 * 2 * 4 and count("line", view) >= len(tokens) ** 2 * 2 * 4  # 2 layers x 4 heads
    assert {"Heads", "Layers", "0", "1", "2", "3"} <= set(token_texts(view))
    assert colored_pixels(chromium, page) > 50000, "the screenshot shows no coloured attention lines"
    clicked = rendered(chromium, save_view(html + CLICK_FIRST_HEAD, tmp_path / "model-clicked.html"))
    assert set(tokens) <= set(token_texts(clicked)), "clicking a head draws it in detail, with its tokens"


def test_view_waits_for_its_div_and_leaves_page_globals_alone(chromium, attention, tmp_path):
    attentions, tokens = attention
    markup, script = head_view(attentions, tokens, html_action="return").data.split("<script", 1)
    # The script runs before its div exists, as in JupyterLab, on a page that has its own AMD loader.
    page = save_view(HOST_PAGE_GLOBALS + "<script" + script + markup + REPORT_GLOBALS, tmp_path / "host.html")
    dom = browse(chromium, page, "--dump-dom").stdout
    assert token_texts(rendered(chromium, page)) == tokens + tokens
    assert "define calls: 0, page jquery kept: true, global d3: undefined" in dom


def test_bertviz_own_view_does_not_render_offline(chromium, attention, tmp_path):
    """The control: bertviz's HTML needs its CDN, so the blocked browser must leave it empty."""
    attentions, tokens = attention
    original = bertviz.head_view(attentions, tokens, html_action="return").data
    assert "cdnjs.cloudflare.com" in original
    page = save_view(original, tmp_path / "bertviz.html")
    view = rendered(chromium, page)
    assert count("svg", view) == count("line", view) == count("text", view) == 0, view
    assert colored_pixels(chromium, page) == 0
