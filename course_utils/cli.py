"""The `course` command: one subcommand per module, each module owning its own arguments.

The instructor's tools live in ``course_utils.instructor``; ``pretrain`` is the students' own training
command. Each subcommand module exposes ``add_arguments(parser)`` and ``main(args) -> int`` (the exit code).
Modules are imported only when their subcommand runs, so ``course --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "doctor": ("instructor.doctor", "check Python, versions, profile, device, each course model and offline status"),
    "run": ("instructor.runner", "execute notebooks headless into a build folder and print a table of run times"),
    "release": ("instructor.release", "generate labs/ from solutions/ (--check: fail if labs/ is stale; "
                                      "--student-copy DIR: the course without its answers)"),
    "grade": ("instructor.grading", "grade lab submissions into gradebooks (long, per student, Canvas, Moodle) "
                                    "and a feedback page per student"),
    "merge": ("instructor.gradebook", "merge the gradebooks of `course grade --shard i/N` runs into one"),
    "models": ("models.build", "build or check the course models shipped with the package (tiny-bert, tiny-gpt, ...)"),
    "pretrain": ("pretrain", "train a small GPT on your own text file and save a checkpoint"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `course` parser; only ``command``'s module is imported to add its arguments."""
    parser = argparse.ArgumentParser(prog="course", description="Tools for the hands-on LLM course.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(f"course_utils.{module}").add_arguments(sp)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the `course` command line; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    return int(importlib.import_module(f"course_utils.{SUBCOMMANDS[args.command][0]}").main(args) or 0)
