"""Which modules each lab's checks forbid the student's code to run (``@forbids_modules``), and that what the
student's code must call inside a checked function (what a check hands it, what the lab gives) lives elsewhere.
The grading tests (tests/test_grading_0N.py) show the tracing end to end: solutions keep full marks, and
submissions that call these modules lose exactly those exercises with `forbidden call`."""
import inspect
import os

import pytest

from course_utils import handed
from course_utils.checks import bpe, dpo, gpt, llama, lora, mlm, optim, prompting, rlhf, sft
from course_utils.instructor.agent import module_paths
from course_utils.lora import in_out_features, is_fan_in_fan_out

CHECKS = "course_utils.checks"
OPTIM = ("transformers", "torch.optim", "torch.nn.utils.clip_grad", "course_utils.training", CHECKS)
EXPECTED = {  # check -> modules whose code the student's code may not run while the check calls it
    mlm.check_mask_selection: ("transformers.data", CHECKS),
    mlm.check_mask_split: ("transformers.data", CHECKS),
    mlm.check_random_tokens: ("transformers.data", CHECKS),
    mlm.check_reproducible: ("transformers.data", CHECKS),
    gpt.check_causal_self_attention: ("transformers", "course_utils.pretrain", CHECKS),
    gpt.check_block: ("transformers", "course_utils.pretrain", CHECKS),
    gpt.check_gpt: ("transformers", "course_utils.pretrain", CHECKS),
    gpt.check_lm_loss: ("transformers", "course_utils.pretrain", CHECKS),
    gpt.check_greedy: ("transformers.generation", CHECKS),
    gpt.check_beam_search: ("transformers.generation", CHECKS),
    gpt.check_temperature: ("transformers", "course_utils.pretrain", CHECKS),
    gpt.check_top_k: ("transformers", "course_utils.pretrain", CHECKS),
    gpt.check_top_p: ("transformers", "course_utils.pretrain", CHECKS),
    gpt.check_sampling: ("transformers", "course_utils.pretrain", CHECKS),
    optim.check_lr_schedule: OPTIM,
    optim.check_clip_grad_norm: OPTIM,
    optim.check_adamw_step: OPTIM,
    llama.check_rms_norm: ("transformers", CHECKS),
    llama.check_rotary: ("transformers", CHECKS),
    llama.check_swiglu: ("transformers", CHECKS),
    llama.check_llama_block: ("transformers", CHECKS),
    bpe.check_bpe_trainer: ("tokenizers", CHECKS),
    sft.check_encode_chat: ("course_utils.sft", "trl"),
    sft.check_sft_loss: ("course_utils.sft", "trl"),
    rlhf.check_reward_loss: ("course_utils.rlhf", CHECKS, "trl", "torchrl"),
    rlhf.check_per_token_rewards: ("course_utils.rlhf", CHECKS, "trl", "torchrl"),
    rlhf.check_gae: ("course_utils.rlhf", CHECKS, "trl", "torchrl"),
    rlhf.check_ppo_losses: ("course_utils.rlhf", CHECKS, "trl", "torchrl"),
    dpo.check_sequence_logps: ("course_utils.dpo", "trl"),
    dpo.check_dpo_loss: ("course_utils.dpo", "trl"),
    dpo.check_optimal_policy: ("course_utils.dpo", "trl"),
    dpo.check_logp_shift: ("course_utils.dpo", "trl", CHECKS),
    lora.check_lora_layer: ("peft", CHECKS),
    lora.check_add_lora: ("peft", CHECKS),
    lora.check_nf4: ("bitsandbytes", CHECKS),
    lora.check_double_quant: ("bitsandbytes", CHECKS),
    lora.check_page_schedule: ("course_utils.paging", CHECKS),
    prompting.check_label_scores: ("course_utils.prompting", CHECKS, "transformers"),
    prompting.check_build_prompt: ("course_utils.prompting", CHECKS),
    prompting.check_ensemble: ("course_utils.prompting", CHECKS),
    prompting.check_self_consistency: ("course_utils.prompting", CHECKS),
    prompting.check_ape: ("course_utils.prompting", CHECKS),
}
OPS = {gpt.check_causal_self_attention: ("scaled_dot_product",), gpt.check_block: ("scaled_dot_product",),
       gpt.check_gpt: ("scaled_dot_product",), optim.check_adamw_step: ("_fused_adam",),
       llama.check_rms_norm: ("rms_norm",)}


@pytest.mark.parametrize("check", list(EXPECTED), ids=lambda c: f"{c.__module__.rsplit('.', 1)[-1]}.{c.__name__}")
def test_each_check_forbids_the_modules_that_hold_its_answer(check):
    assert check.forbidden_modules == EXPECTED[check]
    assert getattr(check, "forbidden_ops", ()) == OPS.get(check, ())
    assert set(module_paths(check.forbidden_modules).values()) == set(check.forbidden_modules)  # all importable


def _forbidden_for(path: str, modules) -> list[str]:
    return [name for place, name in module_paths(modules).items() if os.path.realpath(path).startswith(place)
            or path.startswith(place)]


@pytest.mark.parametrize("obj, checks", [
    (handed.NextLogits, [gpt.check_greedy, gpt.check_beam_search]),  # the decoding exercises call it
    (handed.TableScorer, [prompting.check_ape]),  # ape_select scores the candidates with it
    (handed.tie_key, [bpe.check_bpe_trainer]),  # train_bpe breaks ties with it
    (bpe.tie_key, [bpe.check_bpe_trainer]),  # what the lab imports (from course_utils.checks.bpe) is the same function
    (in_out_features, [lora.check_lora_layer, lora.check_add_lora]),  # LoRALinear's own helpers
    (is_fan_in_fan_out, [lora.check_lora_layer, lora.check_add_lora]),
])
def test_what_the_exercises_call_lives_outside_the_forbidden_modules(obj, checks):
    path = inspect.getfile(obj)
    for check in checks:
        assert _forbidden_for(path, check.forbidden_modules) == [], (obj, check.__name__)
