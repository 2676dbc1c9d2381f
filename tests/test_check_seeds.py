"""The grader draws the hidden tests' inputs when it grades (a secret shift of every check's seed): the
solutions of labs 01-03 must pass every check cell, hidden tests included, whatever the draw."""
from pathlib import Path

import pytest

from course_utils.checks import SEED_SHIFT
from course_utils.instructor import checkproc, remote
from course_utils.instructor.grading import check_cells
from course_utils.instructor.notebooks import nbgrader_meta, read_notebook

ROOT = Path(__file__).resolve().parents[1]
LABS = ["01_attention", "02_bert_mlm", "03_gpt_pretraining"]
SHIFTS = [1, 977, checkproc.SEED_SHIFTS - 1]  # small, odd, the largest the grader draws


@pytest.fixture(scope="module", params=LABS)
def lab(request):
    """(solution namespace: the grader's trusted names plus every solution cell, the lab's check cells)."""
    solution = read_notebook(ROOT / "solutions" / f"{request.param}.ipynb")
    namespace = remote.trusted_namespace(solution, request.param, "ci")
    for cell in solution.cells:
        if cell.cell_type == "code" and nbgrader_meta(cell).get("solution"):
            exec(cell.source, namespace)
    return namespace, check_cells(solution)


@pytest.mark.parametrize("shift", SHIFTS)
def test_the_solution_passes_every_check_with_any_drawn_seed(lab, shift, capsys):
    namespace, checks = lab
    token = SEED_SHIFT.set(shift)
    try:
        for cell in checks.values():
            exec(cell.source, dict(namespace))
    finally:
        SEED_SHIFT.reset(token)
    assert "all checks passed" in capsys.readouterr().out


def test_the_grader_draws_a_new_shift_for_each_submission(tmp_path):
    shifts = {checkproc.CheckProcess(ROOT / "solutions" / "01_attention.ipynb", "ci", tmp_path, 10).args[5]
              for _ in range(5)}
    assert len(shifts) > 1 and all(0 <= s < checkproc.SEED_SHIFTS for s in shifts)


def _lab_04_solution(grade_id: str, name: str):
    """The function ``name`` that lab 04's solution cell ``grade_id`` defines."""
    cell = next(c for c in read_notebook(ROOT / "solutions" / "04_instruction_tuning.ipynb").cells
                if nbgrader_meta(c).get("grade_id") == grade_id)
    namespace = {}
    exec(cell.source, namespace)
    return namespace[name]


def _with_shift(shift: int, check, *args, **kwargs) -> None:
    token = SEED_SHIFT.set(shift)
    try:
        check(*args, **kwargs)
    finally:
        SEED_SHIFT.reset(token)


@pytest.mark.parametrize("shift", SHIFTS)
def test_lab_04s_template_check_passes_the_solution_with_any_drawn_seed(shift, capsys):
    from course_utils.checks import sft

    _with_shift(shift, sft.check_template, _lab_04_solution("template_impl", "happy_template"))
    assert "all checks passed" in capsys.readouterr().out


def _beam_search(next_logits, input_ids, num_beams, max_new_tokens, logprobs=True, accumulate=True):
    """A beam search written as a student would: right, on raw logits, or forgetting the beams' scores so far."""
    import torch

    beams, scores = input_ids, torch.zeros(1, dtype=torch.float64)
    for _ in range(max_new_tokens):
        step = next_logits(beams).double()
        step = torch.log_softmax(step, -1) if logprobs else step
        total = scores[:, None] + step if accumulate else step
        scores, flat = total.flatten().topk(num_beams)
        beams = torch.cat([beams[flat // total.size(-1)], (flat % total.size(-1))[:, None]], 1)
    return beams[:1]


@pytest.mark.parametrize("shift", range(0, checkproc.SEED_SHIFTS, checkproc.SEED_SHIFTS // 12))
def test_beam_search_mistakes_fail_on_every_draw(shift, capsys):
    """The beam check's logits have a different log-normaliser per row: a search on raw logits fails on each draw."""
    import functools

    from course_utils.checks import CheckError, gpt

    _with_shift(shift, gpt.check_beam_search, _beam_search)
    for kwargs, words in (({"logprobs": False}, "LOG-probabilities"), ({"accumulate": False}, "score so far")):
        with pytest.raises(CheckError, match=words):
            _with_shift(shift, gpt.check_beam_search, functools.partial(_beam_search, **kwargs))
    assert "all checks passed" in capsys.readouterr().out


@pytest.mark.parametrize("shift", SHIFTS)
def test_lab_04s_chat_check_passes_the_solution_and_draws_new_chats(shift, capsys):
    """The hidden chats are drawn per submission: other chats on other draws, the solution right on each."""
    from course_utils.checks import sft

    _with_shift(shift, sft.check_encode_chat, _lab_04_solution("encode_impl", "encode_chat"), "tiny-gpt")
    assert "all checks passed" in capsys.readouterr().out
    assert sft.drawn_chats(5 + shift) != sft.drawn_chats(5)
