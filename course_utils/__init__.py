"""Helpers for the LLM course: profiles, the offline world (corpus, tokenizers, model zoo),
training loops, attention views, exercise checks and the instructor's `course` command."""
import logging

# bitsandbytes (imported by transformers and peft) logs "Failed to load CPU gemm_4bit_forward from
# kernels-community" on CPUs with AVX512-BF16: an optional hub kernel it may not fetch offline. It is
# harmless (bitsandbytes falls back to its own kernel) and must not look like an error in every cell.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

__version__ = "0.1.0"
# The course's public home, defined once: notebooks' Colab badges and setup cells are generated
# from it (course_utils.instructor.notebooks) and tests/test_notebooks_format.py checks every notebook.
REPO_URL = "https://github.com/llm-course/llm-course"

__all__ = ["Profile", "setup", "REPO_URL", "__version__"]


def __getattr__(name: str):
    """Import torch-heavy helpers on first use, so `course --help` and the grader start fast."""
    if name in ("Profile", "setup"):
        from . import profiles

        return getattr(profiles, name)
    raise AttributeError(f"module 'course_utils' has no attribute {name!r}")
