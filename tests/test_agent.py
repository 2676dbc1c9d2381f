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


def seen_while(fn, modules) -> list[str]:
    seen = []
    with agent._WatchCalls(modules, seen):
        fn()
    return seen


def test_library_oracles_are_seen_python_and_compiled():
    param = torch.nn.Parameter(torch.ones(3))
    param.grad = torch.ones(3)
    assert seen_while(lambda: torch.optim.AdamW([param]).step(), ("torch.optim",))[0].startswith("torch.optim: ")
    clip = seen_while(lambda: torch.nn.utils.clip_grad_norm_([param], 1.0), ("torch.nn.utils.clip_grad",))
    assert clip and clip[0].startswith("torch.nn.utils.clip_grad: ")
    # tokenizers' trainer is Rust: its methods are C calls, matched by the module their type names
    from tokenizers import Tokenizer, models, trainers

    def train_library_bpe():
        Tokenizer(models.BPE()).train_from_iterator(["a b a b"], trainers.BpeTrainer(show_progress=False))

    assert seen_while(train_library_bpe, ("tokenizers",))[0].startswith("tokenizers: ")
    # the student's own torch code runs C functions of torch, never of the forbidden modules
    assert seen_while(lambda: honest(torch.randn(3), torch.randn(3)).backward, ("torch.optim", "tokenizers")) == []


def test_a_fused_kernel_escapes_the_module_trace_but_not_the_operator_trace():
    p, g, m, v = (torch.zeros(4) for _ in range(4))

    def fused_adamw():
        torch._fused_adamw_([p], [g + 1], [m], [v], [], [torch.tensor(1.0)], lr=0.1, beta1=0.9, beta2=0.999,
                            weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False)

    assert seen_while(fused_adamw, ("torch.optim",)) == []  # a C operator of torch itself: no module to match
    seen = []
    with agent._Watch(("_fused_adam",), seen), agent._WatchOps(("_fused_adam",), seen):
        fused_adamw()
    assert seen and "_fused_adam" in seen[0]


def test_bitsandbytes_quantization_is_seen():
    import bitsandbytes.functional as bf

    absmax = torch.rand(512) + 0.5
    seen = seen_while(lambda: bf.quantize_blockwise(absmax - absmax.mean(), blocksize=256), ("bitsandbytes",))
    assert seen and seen[0].startswith("bitsandbytes: ")
    assert seen_while(lambda: bf.quantize_4bit(torch.randn(64, 64), blocksize=64, quant_type="nf4"),
                      ("bitsandbytes",))[0].startswith("bitsandbytes: ")


# Escapes from the forbidden-call trace (issue 24 §2): each route to the oracle is seen.
X = torch.randn(1, 2, 4, 8)


def ops_seen(fn, forbidden=("scaled_dot_product",)) -> list[str]:
    """What the kernel's watches report while ``fn`` runs as the student's code of a check that forbids ops."""
    seen = []
    with agent._Watch(forbidden, seen), agent._WatchOps(forbidden, seen), agent._WatchAllThreads(forbidden, seen):
        fn()
    return seen


def test_honest_attention_is_not_flagged():
    assert ops_seen(lambda: torch.softmax(X @ X.transpose(-2, -1) / 8 ** 0.5, dim=-1) @ X) == []


def test_the_oracle_on_a_worker_thread_started_before_the_check_is_seen():
    import queue
    import threading

    inbox, outbox = queue.Queue(), queue.Queue()

    def worker():
        for x in iter(inbox.get, None):
            outbox.put(torch.nn.functional.scaled_dot_product_attention(x, x, x))

    thread = threading.Thread(target=worker, name="helper", daemon=True)
    thread.start()
    try:
        seen = ops_seen(lambda: (inbox.put(X), outbox.get()))
        assert any("scaled_dot_product" in s for s in seen), seen
        assert any("helper" in s for s in agent.other_threads())
    finally:
        inbox.put(None)
        thread.join()
    assert agent.other_threads() == []


def test_the_oracle_with_torch_function_disabled_and_the_modes_popped_is_seen():
    def hidden():
        from torch.overrides import _pop_mode_temporarily

        with _pop_mode_temporarily(), torch._C.DisableTorchFunction():
            torch.nn.functional.scaled_dot_product_attention(X, X, X)

    assert any("scaled_dot_product" in s for s in ops_seen(hidden))


def test_a_custom_operator_wrapping_the_oracle_is_seen():
    @torch.library.custom_op("course_attack::attend", mutates_args=())
    def attend(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.scaled_dot_product_attention(x, x, x)

    seen = ops_seen(lambda: attend(X))
    assert any("course_attack::attend" in s and "custom operator" in s for s in seen), seen
    assert any("scaled_dot_product" in s for s in seen), seen


def test_stopping_the_profiler_is_seen():
    assert any("stopped by the student" in s for s in ops_seen(torch.autograd._disable_profiler))


def toggled(a, b):
    hook = sys.getprofile()
    sys.setprofile(None)  # off around the answer, then back on: the hook is in place at the end
    try:
        return ANSWER(a, b, torch.zeros_like(a), torch.zeros_like(b), 1.0)[0]
    finally:
        sys.setprofile(hook)


def test_switching_the_module_trace_off_and_on_around_the_answer_is_seen():
    seen = traced(toggled)
    assert seen and seen[0].startswith("sys.setprofile"), seen
