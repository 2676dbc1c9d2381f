"""The course website, checked like a product: built by website/build.py from the notebooks `make test` executed,
then opened in headless Chromium with the network blocked (DevTools protocol, websocket-client).

Run after `make test` (.ci/run does): `.venv/bin/python -m pytest website`. Under CI every lecture must have a
passing execution; elsewhere a missing one only shows as a banner on its page.
"""
import base64
import json
import re
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import websocket

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "build" / "site" / "html"
SHOTS = ROOT / "build" / "site" / "screenshots"
sys.path.insert(0, str(ROOT / "tests"))
from test_bertviz_browser import NO_NETWORK, chromium  # noqa: E402,F401  (the browser fixture and its flags)

# The page a search must find first among its results, per course term.
SEARCHES = {"80-10-10": "lectures/02_bert_mlm.html", "Bradley": "lectures/05_rlhf_ppo.html",
            "NF4": "lectures/07_lora_qlora.html"}
# Resolves once MathJax (if the page loads it) has typeset everything.
SETTLED = """new Promise(done => {
  const wait = () => window.MathJax && MathJax.startup ? MathJax.startup.promise.then(() => done(true)) : done(true);
  setTimeout(wait, 300);
})"""
# Text of the page's article outside code, and each math element with or without typeset output.
MATH_REPORT = """(() => {
  const article = (document.querySelector("article") || document.body).cloneNode(true);
  article.querySelectorAll("pre, code, script, style, mjx-container").forEach(e => e.remove());
  const math = [...document.querySelectorAll(".math.notranslate")];
  return {text: article.textContent, math: math.length,
          typeset: math.filter(e => e.querySelector("mjx-container svg")).length};
})()"""
BROKEN_IMAGES = "[...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)"
SEARCH_RESULTS = """new Promise(done => { const start = Date.now(); (function poll() {
  const links = [...document.querySelectorAll("#search-results ul.search li a")].map(a => a.href);
  const finished = document.querySelector("#search-results p") !== null;
  if (links.length || finished || Date.now() - start > 15000) done(links); else setTimeout(poll, 100);
})(); })"""
BERTVIZ = """[...document.querySelectorAll("div[id^='bertviz-']")].filter(d => d.parentElement.closest("div[id^='bertviz-']") === null)
  .map(d => ({lines: d.querySelectorAll("line").length, rects: d.querySelectorAll("rect").length,
              texts: d.querySelectorAll("text").length}))"""


class Browser:
    """One headless Chromium tab, network blocked, driven over the DevTools protocol."""

    def __init__(self, chromium: str, profile: Path):
        self.process = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--remote-debugging-port=0", f"--user-data-dir={profile}", *NO_NETWORK, "--window-size=1200,900",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        for _ in range(300):
            if port_file.exists() and len(port_file.read_text().split()) == 2:
                break
            time.sleep(0.1)
        port, path = port_file.read_text().split()
        self.socket = websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=60, suppress_origin=True)
        self.next_id, self.events, self.session = 0, [], None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")

    def call(self, method: str, **params):
        """Send one command and return its result; events that arrive meanwhile are kept in self.events."""
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        self.socket.send(json.dumps(message))
        while True:
            reply = json.loads(self.socket.recv())
            if reply.get("id") == self.next_id:
                assert "error" not in reply, (method, reply["error"])
                return reply["result"]
            self.events.append(reply)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        assert "exceptionDetails" not in result, (expression[:80], result["exceptionDetails"])
        return result["result"].get("value")

    def open(self, page: str) -> list[str]:
        """Load a page of the build (with its query, if any) and let it settle; returns what went wrong."""
        self.events.clear()
        path, _, query = page.partition("?")
        self.call("Page.navigate", url=(HTML / path).as_uri() + (f"?{query}" if query else ""))
        deadline = time.time() + 60
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events) and time.time() < deadline:
            self.events.append(json.loads(self.socket.recv()))
        self.evaluate(SETTLED)
        return self.problems()

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions, failed loads and any request that left the build."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(f"exception: {params['exceptionDetails'].get('exception', {}).get('description')}")
            elif method == "Runtime.consoleAPICalled" and params["type"] == "error":
                found.append(f"console.error: {[a.get('value') for a in params['args']]}")
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(f"log: {params['entry']['text']} {params['entry'].get('url', '')}")
            elif method == "Network.loadingFailed":
                found.append(f"failed load: {params.get('errorText')}")
            elif method == "Network.requestWillBeSent" and not params["request"]["url"].startswith(("file:", "data:")):
                found.append(f"request outside the build: {params['request']['url']}")
        return found

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        self.socket.close()
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def site():
    """Build the site (website/build.py, as `make site`); prints its time and size."""
    done = subprocess.run([sys.executable, str(ROOT / "website" / "build.py")], capture_output=True, text=True)
    print(done.stdout, done.stderr)
    assert done.returncode == 0, f"the site did not build:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return HTML


@pytest.fixture(scope="module")
def browser(chromium, site, tmp_path_factory):
    tab = Browser(chromium, tmp_path_factory.mktemp("chromium"))
    yield tab
    tab.close()


def pages() -> list[str]:
    return sorted(str(p.relative_to(HTML)) for p in HTML.rglob("*.html") if not p.relative_to(HTML).parts[0]
                  .startswith("_"))


def test_every_page_loads_offline_with_math_typeset_and_images(browser, site):
    failures = {}
    for page in pages():
        problems = browser.open(page)
        math = browser.evaluate(MATH_REPORT)
        raw = re.findall(r"\$[^$\s][^$\n]{0,60}\$|\\\(.{0,60}\\\)", math["text"])
        if raw:
            problems.append(f"raw math: {raw[:3]}")
        if math["typeset"] != math["math"]:
            problems.append(f"{math['math'] - math['typeset']} of {math['math']} math elements not typeset")
        problems += [f"broken image: {src}" for src in browser.evaluate(BROKEN_IMAGES)]
        if problems:
            failures[page] = problems
    assert len(pages()) >= 19, pages()
    assert not failures, json.dumps(failures, indent=1)[:5000]


def test_math_is_typeset_on_the_lectures_that_have_it(browser):
    browser.open("lectures/02_bert_mlm.html")
    math = browser.evaluate(MATH_REPORT)
    assert math["math"] > 0 and math["typeset"] == math["math"], math["math"]


@pytest.mark.parametrize("term", SEARCHES)
def test_search_finds_the_page_of_a_course_term(browser, term):
    problems = browser.open(f"search.html?q={term}")
    links = browser.evaluate(SEARCH_RESULTS)
    assert not problems, problems
    found = [urlsplit(link).path.split("/html/", 1)[-1] for link in links]
    assert SEARCHES[term] in found[:3], f"search for {term!r}: {found}"
    if term == "Bradley":
        browser.screenshot(SHOTS / "search-bradley.png")


def test_bertviz_views_render_on_lecture_01(browser):
    assert not browser.open("lectures/01_attention.html")
    views = browser.evaluate(BERTVIZ)
    assert len(views) == 2, views  # the head view and the model view
    assert all(v["lines"] > 100 and v["rects"] > 10 and v["texts"] >= 8 for v in views), views
    browser.screenshot(SHOTS / "lecture-01.png")
    browser.evaluate("document.querySelector(\"div[id^='bertviz-']\").scrollIntoView({behavior: 'instant'}); true")
    browser.screenshot(SHOTS / "lecture-01-bertviz.png")
    browser.open("index.html")
    browser.screenshot(SHOTS / "home.png")


def test_lecture_pages_state_profile_and_date_and_offer_colab_and_download(site):
    for page in sorted((site / "lectures").glob("*.html")):
        text = page.read_text()
        assert re.search(r"Outputs of the <code[^>]*><span class=\"pre\">\w+</span></code> profile, produced "
                         r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", text) or "Not executed" in text, page.name
        assert "colab.research.google.com/github/" in text and "_downloads/" in text, page.name
        assert re.search(r"\b0%\|", text) is None, f"{page.name}: a progress bar shows 0%"


class Links(HTMLParser):
    """The ids and the href/src targets of one HTML page."""

    def __init__(self):
        super().__init__()
        self.ids, self.targets = set(), []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        for name in ("href", "src"):
            if attrs.get(name):
                self.targets.append(attrs[name])


def test_no_internal_link_is_broken(site):
    parsed = {}
    for page in site.rglob("*.html"):
        parsed[page] = Links()
        parsed[page].feed(page.read_text())
    broken = []
    for page, links in parsed.items():
        for target in links.targets:
            parts = urlsplit(target)
            if parts.scheme or target.startswith(("//", "mailto:", "javascript:")):
                continue
            path = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if path.is_dir():
                path = path / "index.html"
            if not path.exists():
                broken.append(f"{page.relative_to(site)} -> {target}")
            elif parts.fragment and path.suffix == ".html" and unquote(parts.fragment) not in parsed[path].ids:
                broken.append(f"{page.relative_to(site)} -> {target} (no such anchor)")
    assert not broken, broken[:30]
