"""Helpers for the LLM course: profiles, the offline world (corpus, tokenizers, model zoo),
training loops, attention views, exercise checks and the instructor's `course` command."""
from .profiles import Profile, setup

__version__ = "0.1.0"
# The course's public home, defined once: notebooks' Colab badges and setup cells are checked
# against it (tests/test_notebooks_format.py).
REPO_URL = "https://github.com/llm-course/llm-course"

__all__ = ["Profile", "setup", "REPO_URL", "__version__"]
