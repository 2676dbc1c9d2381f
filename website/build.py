"""Build the course website (`make site`): the README, docs/*.md, the lectures with the outputs of their `ci`
run in `make test`, the labs as students receive them, the benchmark tables and a course_utils reference.

Sources are staged in build/site/src (links to repository files outside the site point at the repository),
then Sphinx (website/conf.py) writes build/site/html. A lecture without a saved, passing execution in
build/executed/ is an error under --strict (CI) and a warning banner on its page otherwise.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat

import course_utils

ROOT = Path(__file__).resolve().parents[1]
EXECUTED = ROOT / "build" / "executed"
BUILD = ROOT / "build" / "site"
SRC, STATIC, HTML = BUILD / "src", BUILD / "static", BUILD / "html"
MATHJAX = Path(importlib.util.find_spec("mathjax").submodule_search_locations[0]) / "static" / "mathjax"  # v3
BADGE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)\s*")
DISPLAY_MATH = re.compile(r"^(\$\$.+\$\$)[ \t]*$", re.MULTILINE)
LINK = re.compile(r"\]\(([^)\s]+)\)")
TOC = """

```{{toctree}}
:hidden:
:caption: {caption}
:glob:

{entries}
```
"""


def repository_url(path: str) -> str:
    """The repository's page for a file or folder of this checkout."""
    kind = "tree" if (ROOT / path).is_dir() else "blob"
    return f"{course_utils.REPO_URL}/{kind}/{course_utils.REF}/{path}"


def rewrite_links(text: str, source: str, pages: set[str]) -> str:
    """Point relative links of ``source`` (a repository path) that are not site pages at the repository."""
    def fix(match: re.Match) -> str:
        target = match.group(1)
        if re.match(r"^[a-z]+:|^#|^/", target):
            return match.group(0)
        path, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(source), path))
        if resolved == "README.md":  # staged as the home page
            path = os.path.relpath("index.md", os.path.dirname(source) or ".")
        elif resolved in pages or not (ROOT / resolved).exists():
            return match.group(0)  # a page, or a broken link that Sphinx reports
        else:
            path = repository_url(resolved)
        return f"]({path}{'#' + anchor if anchor else ''})"

    return LINK.sub(fix, text)


def banner(path: str, execution: dict | None) -> str:
    """The note under a notebook's title: where its outputs come from, Run on Colab and download links."""
    colab = course_utils.REPO_URL.replace("https://github.com/", "https://colab.research.google.com/github/")
    links = (f"[Run on Colab]({colab}/blob/{course_utils.REF}/{path}) · "
             f"{{download}}`Download the notebook <../download/{path}>`")
    if path.startswith("labs/"):
        origin = "The lab as students receive it (`course release`): run it to see outputs and checks."
    elif execution is None:
        origin = "**Not executed**: no outputs here (`make site` said why). Run `make test`, then `make site`."
    else:
        origin = (f"Outputs of the `{execution['profile']}` profile, produced {execution['date']} "
                  f"by `make test`; your numbers may differ in another profile.")
    return f"```{{note}}\n{origin}\n\n{links}\n```\n"


def code(nb) -> list[str]:
    return [cell.source for cell in nb.cells if cell.cell_type == "code"]


def saved_execution(path: str, problems: list[str]):
    """The lecture's notebook as `make test` last executed it, or None (with the reason added to ``problems``)."""
    executed = EXECUTED / path
    if not executed.exists():
        problems.append(f"{path} was not executed: no saved run in build/executed/ (run `make test` first)")
        return None
    nb = nbformat.read(executed, as_version=4)
    execution = nb.metadata.get("course_execution")
    if code(nb) != code(nbformat.read(ROOT / path, as_version=4)):
        problems.append(f"{path} changed since `make test` executed it: run `make test` again")
    elif not execution or execution["failed_cells"]:
        problems.append(f"{path}: cells {execution and execution['failed_cells']} failed in `make test`")
    else:
        return nb
    return None


def stage_notebook(path: str, pages: set[str], problems: list[str]) -> None:
    """Copy one lecture (its saved execution) or lab to the sources, with the banner and fixed links."""
    source = ROOT / path
    executed = saved_execution(path, problems) if path.startswith("lectures/") else None
    nb = executed or nbformat.read(source, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":  # a $$...$$ line inside a paragraph: its own block, as Jupyter shows it
            cell.source = DISPLAY_MATH.sub(r"\n\1\n", rewrite_links(BADGE.sub("", cell.source), path, pages))
    if nb.cells[0].cell_type != "markdown":
        nb.cells.insert(0, nbformat.v4.new_markdown_cell(f"# {source.stem}"))
    title, _, rest = nb.cells[0].source.partition("\n")
    nb.cells[0].source = f"{title}\n\n{banner(path, executed and executed.metadata.course_execution)}\n{rest}"
    for folder in (SRC, SRC / "download"):
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, SRC / "download" / path)
    nbformat.write(nb, SRC / path)


def api_page() -> str:
    """A reference page with every module of course_utils, from the docstrings."""
    modules = sorted(m.name for m in pkgutil.walk_packages(course_utils.__path__, "course_utils.")
                     if not m.name.endswith("__main__"))
    blocks = [f"## {name}\n\n```{{eval-rst}}\n.. automodule:: {name}\n   :members:\n```\n" for name in modules]
    return "# course_utils reference\n\nGenerated from the docstrings of the course's library.\n\n" + "\n".join(blocks)


def stage() -> list[str]:
    """Write the site's sources to build/site/src; returns the problems found (lectures not executed)."""
    shutil.rmtree(BUILD, ignore_errors=True)
    (STATIC / "mathjax").mkdir(parents=True)
    for name in ("es5/tex-svg.js", "LICENSE"):
        shutil.copy(MATHJAX / name, STATIC / "mathjax")
    markdown = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")),
                "benchmarks/README.md"]
    notebooks = sorted(str(p.relative_to(ROOT)) for folder in ("lectures", "labs")
                       for p in (ROOT / folder).glob("*.ipynb"))
    pages, problems = set(markdown + notebooks), []
    for path in markdown:
        target = SRC / ("index.md" if path == "README.md" else path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(rewrite_links((ROOT / path).read_text(), path, pages))
    for path in notebooks:
        stage_notebook(path, pages, problems)
    (SRC / "api.md").write_text(api_page())
    tocs = [("Guide", "docs/*"), ("Lectures", "lectures/*"), ("Labs", "labs/*"),
            ("Reference", "benchmarks/README\napi")]
    with (SRC / "index.md").open("a") as index:
        index.writelines(TOC.format(caption=caption, entries=entries) for caption, entries in tocs
                         if any(SRC.glob(entries.split()[0] + "*")))
    return problems


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strict", action="store_true", default=bool(os.environ.get("CI")),
                        help="fail when a lecture has no passing execution from `make test` (default under CI)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    problems = stage()
    for problem in problems:
        print(f"site: {problem}", file=sys.stderr)
    if problems and args.strict:
        print("site: not built: every lecture must come from a passing `make test` run", file=sys.stderr)
        return 1
    done = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-q", "-W", "--keep-going",
                           "-c", str(ROOT / "website"), "-d", str(BUILD / "doctrees"), str(SRC), str(HTML)])
    if done.returncode:
        return done.returncode
    print(f"site: {HTML.relative_to(ROOT)}/index.html, {size_mb(HTML):.1f} MB, "
          f"built in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
