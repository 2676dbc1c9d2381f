"""Sphinx configuration of the course website; website/build.py stages the sources and runs Sphinx with it."""
import re
from pathlib import Path

from sphinx.search.en import SearchEnglish

import course_utils

project = "LLM course"
author = "The LLM course authors"
copyright = "2026, The LLM course authors (MIT License)"
release = course_utils.__version__
extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.mathjax"]

# Notebooks are rendered with the outputs `make test` produced (build/executed/); nothing runs here.
nb_execution_mode = "off"
nb_merge_streams = True
exclude_patterns = ["download/**"]  # the notebooks offered for download, not pages
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 4  # GitHub-style anchors, as README's links use them
# Notebooks number their sections "## 1 · ..." under one "# ..."; a code block Pygments cannot lex is still shown.
suppress_warnings = ["myst.header", "misc.highlighting_failure"]

# Offline: MathJax 3 ships in the build (tex-svg.js from the django-static-mathjax package, copied to static/ by
# build.py): it draws formulas as SVG, so no web fonts are fetched; no CDN.
html_static_path = [str(Path(__file__).resolve().parents[1] / "build" / "site" / "static")]
mathjax_path = "mathjax/tex-svg.js"
html_theme = "furo"
html_title = f"LLM course {release}"
html_show_sourcelink = False
html_copy_source = False  # the notebooks are offered for download on their pages instead
# Search runs in the browser from searchindex.js; its result snippets would fetch each page, which browsers refuse
# for a site opened from disk (file://), so results show titles only and the site works the same offline.
html_show_search_summary = False
html_last_updated_fmt = None
autodoc_member_order = "bysource"
autodoc_typehints = "description"


def docstring_as_rst(app, what, name, obj, options, lines):
    """The library's docstrings are written for help(): chat tokens such as <|user|> are text (not reST
    substitutions) and a list may start right under its sentence (reST needs a blank line there)."""
    fixed = []
    for line in lines:
        if re.match(r"\s*[-*] ", line) and fixed and fixed[-1].strip() and not re.match(r"\s*[-*] ", fixed[-1]):
            fixed.append("")
        fixed.append(line.replace("<|", "<\\|"))
    lines[:] = fixed


class SearchWithCompounds(SearchEnglish):
    """English search that also indexes hyphenated terms whole (80-10-10, Bradley-Terry): Sphinx's own splits
    them into words and never indexes numbers, so "80-10-10" would find nothing."""

    js_splitter_code = r"""
function splitQuery(query) {
  return query.match(/[\p{Letter}\p{Number}_]+(?:-[\p{Letter}\p{Number}_]+)*/gu) || [];
}"""

    def split(self, text):
        return super().split(text) + re.findall(r"\w+(?:-\w+)+", text)


def setup(app):
    app.connect("autodoc-process-docstring", docstring_as_rst)
    app.add_search_language(SearchWithCompounds)
