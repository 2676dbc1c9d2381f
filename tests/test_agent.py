"""The kernel side of remote checks: the call tracing that makes a check's forbidden modules forbidden."""
import sys

import torch

import course_utils.dpo
from course_utils.checks import FORBIDDEN_MODULES, forbids_modules
from course_utils.instructor import agent

ANSWER = course_utils.dpo.dpo_loss  # a reference captured before the check, as a cheat would


def honest(a, b):
    return -torch.nn.functional.logsigmoid(a - b).mean()


def cheat(a, b):
    return ANSWER(a, b, torch.zeros_like(a), torch.zeros_like(b), 1.0)[0]


def sneaky(a, b):
    sys.setprofile(None)  # the tracing off, then the answer
    return cheat(a, b)


def traced(fn, modules=("course_utils.dpo", "trl")) -> list[str]:
    seen = []
    a, b = torch.randn(3), torch.randn(3)
    with agent._WatchCalls(modules, seen):
        fn(a, b)
    return seen


def test_calls_into_a_forbidden_module_are_seen_by_any_route():
    before = sys.getprofile()
    assert traced(honest) == []
    assert traced(cheat) == ["course_utils.dpo: dpo_loss (the course's own answer or the check's oracle)"]
    assert traced(sneaky)[-1].startswith("sys.setprofile")
    assert traced(cheat, modules=("course_utils.sft",)) == []
    assert sys.getprofile() is before


def test_a_package_covers_its_modules():
    paths = agent.module_paths(["course_utils.checks", "no_such_module_here"])
    assert set(paths.values()) == {"course_utils.checks"} and all(p.endswith(("/", "\\")) for p in paths)


def test_forbids_modules_sets_the_modules_while_the_check_runs():
    @forbids_modules("course_utils.dpo")
    def check():
        return FORBIDDEN_MODULES.get()

    assert check() == ("course_utils.dpo",) and FORBIDDEN_MODULES.get() == ()
    assert check.forbidden_modules == ("course_utils.dpo",)
