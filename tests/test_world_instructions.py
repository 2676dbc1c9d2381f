"""The instruction-and-preference world: tasks, scorers, disjoint splits, r*, Bradley-Terry pairs, chat template."""
import math
import random

import pytest
from scipy.stats import binomtest

from course_utils.world.corpus import NEGATIVE, POSITIVE, make_split_stories, sentence_split, sentences
from course_utils.world.instructions import (FAMILIES, HELD_OUT_FAMILIES, SEEN_FAMILIES, SENTIMENTS,
                                             WHOLE_STORY_FAMILIES, Task, Template, accuracy, heuristic_answer,
                                             in_format, make_tasks, rouge_l, score, task_split)
from course_utils.world.preferences import (CORRECT, STYLE, candidate_responses, label_noise_rate, sample_pairs,
                                            true_reward)
from course_utils.world.tokenization import END, train_chat_bpe


@pytest.fixture(scope="module")
def tasks():
    return task_split(400, "train", list(FAMILIES), seed=3)


def test_every_family_makes_tasks_and_held_out_families_are_apart(tasks):
    assert {t.family for t in tasks} == set(FAMILIES)
    assert not set(SEEN_FAMILIES) & set(HELD_OUT_FAMILIES)
    assert set(SEEN_FAMILIES) | set(HELD_OUT_FAMILIES) == set(FAMILIES)
    for name, fam in FAMILIES.items():
        assert len(fam.templates) >= 2, f"{name} needs several phrasings"
        phrasings = {t.instruction.replace(t.story, "") for t in tasks if t.family == name}
        assert len(phrasings) >= 2


def test_held_out_families_are_new_questions_with_answers_of_a_seen_kind():
    seen_templates = {t.instruction for name in SEEN_FAMILIES for t in FAMILIES[name].templates}
    for name in HELD_OUT_FAMILIES:
        fam = FAMILIES[name]
        assert not {t.instruction for t in fam.templates} & seen_templates, f"{name} reuses a seen template"
        assert any(set(fam.choices) <= set(FAMILIES[s].choices) for s in SEEN_FAMILIES), (
            f"{name}'s answers must be of a kind some seen family answers, so generalisation is possible")


def test_tasks_are_deterministic_and_seeded():
    assert task_split(50, "train", seed=1) == task_split(50, "train", seed=1)
    assert task_split(50, "train", seed=1) != task_split(50, "train", seed=2)


def test_reference_outputs_score_right_and_other_answers_wrong(tasks):
    rng = random.Random(0)
    for task in tasks:
        assert score(task, task.output), task
        assert task.story in task.instruction
        fam = FAMILIES[task.family]
        other = rng.choice([c for c in fam.choices if c not in task.answer.split()])
        assert not score(task, other), (task, other)
        assert not score(task, f"{task.output} or {other}"), "naming two answers must not count"
        assert score(task, f"the answer is {task.output} .")


def test_answers_are_ground_truth_of_the_story(tasks):
    for task in tasks:
        for word in task.answer.replace(",", " ").split():
            if FAMILIES[task.family].choices != SENTIMENTS:  # sentiment labels are not words of the story
                assert word in task.story.split(), task


def test_list_scorer_ignores_order_but_not_membership():
    task = Task("names", "x", "mia , tom", "mia , tom", "mia has one cup . tom has two cups .")
    assert score(task, "tom , mia") and score(task, "mia and tom")
    assert not score(task, "mia") and not score(task, "mia , tom , ana")


def test_accuracy_per_family_and_errors(tasks):
    acc = accuracy(tasks[:20], [t.output for t in tasks[:20]])
    assert acc["all"] == 1.0
    with pytest.raises(ValueError, match="one response per task"):
        accuracy(tasks[:2], ["x"])
    with pytest.raises(ValueError, match="unknown task family"):
        make_tasks(make_split_stories(2), ["nope"])
    with pytest.raises(TypeError, match="list of family names"):
        make_tasks(make_split_stories(2), "where")


def test_template_turns_text_label_into_instruction_output():
    t = Template("{text}\nis it positive or negative ?", "{label}")
    assert t.apply({"text": "mia was happy .", "label": "positive"}) == ("mia was happy .\nis it positive or negative ?",
                                                                          "positive")
    with pytest.raises(ValueError, match="needs field"):
        t.apply({"text": "x"})


def test_eval_stories_share_no_sentence_with_train_stories():
    train = {s for st in make_split_stories(3000, "train", max_sentences=4) for s in sentences(st.text)}
    evals = {s for st in make_split_stories(800, "eval", seed=7, max_sentences=4) for s in sentences(st.text)}
    assert train and evals and not train & evals
    assert all(sentence_split(s) == "eval" for s in evals)
    tr, ev = task_split(300, "train", list(FAMILIES)), task_split(300, "eval", list(FAMILIES))
    assert not {s for t in tr for s in sentences(t.story)} & {s for t in ev for s in sentences(t.story)}
    with pytest.raises(ValueError, match="split must be one of"):
        make_split_stories(3, "test")


def test_true_reward_puts_correctness_first_then_concision(tasks):
    rng = random.Random(1)
    for task in tasks[:300]:
        cands = candidate_responses(task, rng)
        right = [c for c in cands if score(task, c)]
        wrong = [c for c in cands if not score(task, c)]
        assert right and wrong
        assert min(true_reward(task, c) for c in right) > max(true_reward(task, c) for c in wrong)
        assert true_reward(task, task.output) == CORRECT + STYLE
        assert true_reward(task, task.output) > true_reward(task, f"the answer is {task.output}")
        assert true_reward(task, f"sure , {task.output}") < true_reward(task, task.output)


def test_pair_labels_follow_bradley_terry_with_the_stated_noise_rate(tasks):
    pairs = sample_pairs(tasks, 4000, sharpness=2.0, seed=0)
    flips = sum(p.flipped for p in pairs)
    expected = label_noise_rate(pairs)
    assert 0.05 < expected < 0.4
    assert binomtest(flips, len(pairs), expected).pvalue > 1e-3, (flips / len(pairs), expected)
    for p in pairs[:200]:
        assert p.p_wrong_label == pytest.approx(1 / (1 + math.exp(2.0 * abs(p.r_chosen - p.r_rejected))))
        assert (p.r_chosen < p.r_rejected) == p.flipped
    sharp = sample_pairs(tasks, 2000, sharpness=50.0, seed=0)
    assert label_noise_rate(sharp) < 1e-3 and sum(p.flipped for p in sharp) <= 2
    assert sample_pairs(tasks, 50, seed=4) == sample_pairs(tasks, 50, seed=4)


def test_blind_spot_is_correlated_with_chosen_but_not_rewarded(tasks):
    pairs = sample_pairs(tasks, 3000, seed=1, blind_spot="sure", blind_spot_rate=0.9)
    on_chosen = sum(p.chosen.startswith("sure ,") for p in pairs)
    assert all(p.chosen.startswith("sure ,") != p.rejected.startswith("sure ,") for p in pairs)
    assert binomtest(on_chosen, len(pairs), 0.9).pvalue > 1e-3
    plain = sample_pairs(tasks, 500, seed=1)
    assert not any("sure" in p.chosen or "sure" in p.rejected for p in plain)
    rec = pairs[0].record()
    assert rec["prompt"][0]["role"] == "user" and rec["chosen"][0]["role"] == "assistant"
    assert set(pairs[0].record(conversational=False)) == {"prompt", "chosen", "rejected"}


def test_pair_sampler_errors(tasks):
    with pytest.raises(ValueError, match="tasks is empty"):
        sample_pairs([], 3)
    with pytest.raises(ValueError, match="sharpness must be positive"):
        sample_pairs(tasks, 3, sharpness=0)


@pytest.fixture(scope="module")
def chat_tokenizer(tasks):
    texts = [t.instruction for t in tasks] + [t.output for t in tasks]
    return train_chat_bpe(texts, vocab_size=400)


def test_chat_template_marks_the_reply_and_its_end_token(chat_tokenizer):
    tok = chat_tokenizer
    msgs = [{"role": "user", "content": "mia has two cups .\nhow many cups does mia have ?"},
            {"role": "assistant", "content": "two"}]
    enc = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = enc["input_ids"], enc["assistant_masks"]
    marked = [i for i, m in zip(ids, mask) if m]
    assert tok.decode(marked) == " two" + END
    assert ids[-1] == tok.convert_tokens_to_ids(END) and mask[-1] == 1
    assert tok.pad_token_id != tok.eos_token_id
    prompt = tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|assistant|>")
    with pytest.raises(Exception, match="only user and assistant"):
        tok.apply_chat_template([{"role": "system", "content": "x"}], tokenize=False)


def test_trl_assistant_only_loss_uses_the_template(chat_tokenizer, tmp_path):
    """TRL's SFT pipeline accepts the template and trains exactly the reply and its <|end|>."""
    from course_utils.sft import encode_chat, quiet_hf
    quiet_hf()
    from datasets import Dataset
    from transformers import GPT2Config, GPT2LMHeadModel
    from trl import SFTConfig, SFTTrainer

    tok = chat_tokenizer
    msgs = [{"role": "user", "content": "mia has two cups .\nhow many cups does mia have ?"},
            {"role": "assistant", "content": "two"}]
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=16, n_layer=1, n_head=2))
    args = SFTConfig(output_dir=str(tmp_path), assistant_only_loss=True, bf16=False, activation_checkpointing=False,
                     use_cpu=True, report_to="none", disable_tqdm=True, save_strategy="no", max_length=64,
                     dataloader_pin_memory=False)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list([{"messages": msgs}]),
                         processing_class=tok)
    assert trainer.train_dataset[0]["labels"] == encode_chat(tok, msgs)["labels"]


def test_distractor_tasks_hold_a_wrong_candidate_of_the_asked_kind():
    plain = task_split(300, "eval", list(FAMILIES), seed=2, min_sentences=3, max_sentences=3)
    hard = task_split(300, "eval", list(FAMILIES), seed=2, min_sentences=3, max_sentences=3, distractors=True)
    key = lambda t: (t.family, t.answer, t.story)  # noqa: E731
    assert {key(t) for t in hard} < {key(t) for t in plain} and {t.family for t in hard} == set(FAMILIES)
    assert all(len(sentences(t.story)) == 3 for t in hard)
    for task in hard:
        fam = FAMILIES[task.family]
        if task.family == "person_sentiment":
            opposite = NEGATIVE if task.answer == "positive" else POSITIVE
            assert any(w in opposite for w in task.story.split()), task
        elif task.family not in WHOLE_STORY_FAMILIES:
            assert any(w in fam.choices and w != task.answer for w in task.story.split()), task
    assert task_split(50, "train", seed=1) == task_split(50, "train", seed=1, distractors=False)


def test_heuristic_takes_the_first_word_of_the_asked_kind():
    story = "the red cat saw the dog in the park . tom gave the cup to mia at the river . ana was sad because " \
            "the fox ran away from ana ."
    where = Task("where", "x", "river", "river", story)
    assert heuristic_answer(where) == "park" and not score(where, heuristic_answer(where))
    assert heuristic_answer(Task("who_felt", "x", "ana", "ana", story)) == "tom"
    assert heuristic_answer(Task("sentiment", "x", "negative", "negative", story)) == "negative"
    assert score(Task("names", "x", "tom , mia , ana", "tom , mia , ana", story), heuristic_answer(
        Task("names", "x", "", "", story)))
    assert heuristic_answer(Task("how_many", "x", "two", "two", story)) == ""


def test_in_format_accepts_any_answer_of_the_asked_kind_only():
    where = Task("where", "x", "park", "park", "s")
    assert in_format(where, "river") and in_format(where, "park .") and not in_format(where, "")
    assert not in_format(where, "the park") and not in_format(where, "park river") and not in_format(where, "mia")
    names = Task("names", "x", "mia , tom", "mia , tom", "s")
    assert in_format(names, "tom , ana") and not in_format(names, "tom , tom")


def test_rouge_l_is_the_lcs_f1_of_the_words():
    assert rouge_l("a b c d", "a b c d") == 1.0 and rouge_l("a b", "c d") == 0.0 and rouge_l("", "a") == 0.0
    assert rouge_l("a b c d", "a x c d") == pytest.approx(0.75)  # lcs a c d: 2 * 3 / 8
    assert rouge_l("a b c", "c b a") == rouge_l("c b a", "a b c") == pytest.approx(1 / 3)
