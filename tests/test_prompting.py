"""The prompting helpers of module 08 on a small random GPT-2 (no course model needed)."""
from types import SimpleNamespace

import pytest
import torch

from course_utils import prompting as P
from course_utils.pretrain import build_gpt2
from course_utils.world import reasoning as R
from course_utils.world.tokenization import train_chat_bpe
from course_utils.models import load_pretrained


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    tokenizer = train_chat_bpe(R.make_mixture(300), vocab_size=300, model_max_length=192)
    model = build_gpt2(len(tokenizer), n_layer=1, n_head=2, n_embd=16, block_size=192,
                       eos_token_id=tokenizer.eos_token_id).eval()
    model.config.pad_token_id = model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def test_label_logprobs_match_the_models_own_loss_for_multi_token_labels(lm):
    model, tokenizer = lm
    prompts = ["review : mia was happy . label :", "mia was sad . =>"]
    labels = ["terrible", "wonderful", "no"]
    assert max(len(P.label_token_ids(tokenizer, prompts[0], w)[1]) for w in labels) > 1
    got = P.label_logprobs(model, tokenizer, prompts, labels)
    for i, prompt in enumerate(prompts):
        for j, word in enumerate(labels):
            p, w = P.label_token_ids(tokenizer, prompt, word)
            ids = torch.tensor([p + w])
            with torch.no_grad():
                loss = model(input_ids=ids, labels=torch.tensor([[-100] * len(p) + w])).loss
            assert abs(got[i, j] + loss * len(w)) < 1e-4


def test_build_prompt_is_exact():
    demos = [("mia was happy .", "good"), ("tom was sad .", "bad")]
    assert P.build_prompt(demos, "ana was glad .", "review") == (
        "review : mia was happy . label : good\nreview : tom was sad . label : bad\nreview : ana was glad . label :")
    assert P.build_prompt([], "x .", "cloze", instruction="rule : a .") == "rule : a .\nx . so it was"


def test_ensemble_normalises_templates_and_breaks_vote_ties_by_average_probability():
    lp = torch.tensor([[[0.0, -0.1]], [[-3.0, 0.0]]])  # template votes 0 and 1: a tie
    avg, vote = P.ensemble(lp)
    probs = lp.softmax(-1).mean(0)
    assert avg.tolist() == vote.tolist() == [int(probs.argmax())] == [1]
    scaled = torch.tensor([[[-30.0, -20.0]], [[0.0, -2.0]], [[0.0, -2.0]]])
    assert P.ensemble(scaled)[0].tolist() == [0]  # raw log-prob averaging would say 1
    with pytest.raises(ValueError, match="templates, examples, labels"):
        P.ensemble(torch.zeros(2, 3))


def test_vote_and_answer_extraction():
    assert P.extract_answer("x : two cups . answer : three . answer : four .") == "three"
    assert P.extract_answer("no answer") is None
    cases = {"answer : four.": "four", "answer : four .": "four", "the answer : six ...": "six", "answer :": None,
             "answer : .": None, "answer: four": None, "answer :four": None, "day one : two . answer : two cups": "two"}
    assert {t: P.extract_answer(t) for t in cases} == cases
    assert P.read_answer("x answer : one .\nmia has two cups . how many ? answer :", "three .") == "three"
    assert P.vote(["b", None, "a", "a", "b"]) == "b"  # tie: the earliest
    assert P.vote([None, None]) is None


def test_ape_selects_on_dev_and_reports_test():
    table = {"a": {"dev": 0.9, "test": 0.5}, "b": {"dev": 0.6, "test": 0.95}, "c": {"dev": 0.9, "test": 0.1}}
    calls = []
    result = P.ape_select(["b", "a", "b", "c"], lambda c, ex: calls.append(c) or table[c][ex[0]], ["dev"], ["test"])
    assert (result["best"], result["dev"], result["test"]) == ("a", 0.9, 0.5)  # the earlier of the tied a and c
    assert result["dev_scores"] == {"b": 0.6, "a": 0.9, "c": 0.9} and calls == ["b", "a", "c", "a"]


def test_cot_prompts_match_their_demonstrations_and_cloze_continuations():
    p, d = R.make_problems(2, (2, 3), "eval", seed=0)
    assert P.cot_prompt(p, "direct") == f"{p.text} {p.question} answer :"
    assert P.cot_prompt(p, "trigger") == f"{p.text} {p.question} {R.TRIGGER}"
    assert P.cot_prompt(p, "steps", [d]) == d.cot() + R.DELIMITER + f"{p.text} {p.question}"
    assert P.cot_prompt(p, "direct", [d]).startswith(d.direct() + R.DELIMITER)
    with pytest.raises(ValueError, match="style"):
        P.cot_prompt(p, "cot")
    assert P.continuations("cloze", ["foo", "bar"]) == ["foo .", "bar ."]
    assert P.continuations("review", ["foo"]) == ["foo"]


def test_generation_is_seeded_and_local_folders_load(lm, tmp_path):
    model, tokenizer = lm
    a = P.sample_chains(model, tokenizer, "mia has two cups .", 3, seed=1, max_new_tokens=6)
    assert a == P.sample_chains(model, tokenizer, "mia has two cups .", 3, seed=1, max_new_tokens=6)
    model.save_pretrained(tmp_path)  # the gpu profile's path: a checkpoint folder loaded like a hub id
    tokenizer.save_pretrained(tmp_path)
    loaded, tok = load_pretrained(str(tmp_path))
    assert torch.allclose(P.label_logprobs(loaded, tok, ["mia was happy ."], ["good", "bad"]),
                          P.label_logprobs(model, tokenizer, ["mia was happy ."], ["good", "bad"]), atol=1e-5)
    assert len(P.generate(loaded, tok, ["a", "mia has"], max_new_tokens=4)) == 2


def test_helpers_reject_bad_inputs(lm):
    model, tokenizer = lm
    with pytest.raises(TypeError, match="list"):
        P.label_logprobs(model, tokenizer, "one prompt", ["a"])
    with pytest.raises(ValueError, match="candidates"):
        P.ape_select([], len, [], [])


class FixedAttention(torch.nn.Module):
    """A stand-in model whose one head attends to the token after the current token's first occurrence."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, output_attentions=True):
        ids, n = input_ids[0].tolist(), input_ids.shape[1]
        att = torch.zeros(1, 2, n, n)
        att[0, 1] = torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None]  # head 1: uniform over the past
        for t, token in enumerate(ids):
            first = ids.index(token)
            att[0, 0, t, first + 1 if first + 1 < t else t] = 1.0  # head 0: an ideal induction head
        return SimpleNamespace(attentions=(att,))


class WordTokenizer:
    """Whitespace tokens, each word's id its index in first-seen order."""

    def __call__(self, text, return_tensors="pt", add_special_tokens=False):
        vocab = {}
        return {"input_ids": torch.tensor([[vocab.setdefault(w, len(vocab)) for w in text.split()]])}


def test_prefix_matching_finds_the_induction_head():
    scores = P.prefix_matching(FixedAttention(), WordTokenizer(), ["a b c | a b c .", "x y | x y ."])
    assert scores.shape == (1, 2) and scores[0, 0] == 1.0
    # the uniform head at the 5 repeated positions: 1/5, 1/6, 1/7 in the first text, 1/4, 1/5 in the second
    assert scores[0, 1].item() == pytest.approx((1 / 5 + 1 / 6 + 1 / 7 + 1 / 4 + 1 / 5) / 5)
    with pytest.raises(ValueError, match="repeat"):
        P.prefix_matching(FixedAttention(), WordTokenizer(), ["a b c"])


def test_evolve_keeps_the_best_and_improves():
    target = "rule : sad is foo , happy is bar ."
    score = lambda c, dev: sum(a == b for a, b in zip(c.split(), target.split())) / len(target.split())
    words = ["foo", "bar", "cat", "dog"]

    def mutate(rule, rng):
        parts = rule.split()
        parts[rng.choice([4, 8])] = rng.choice(words)
        return " ".join(parts)

    history = P.evolve(["rule : sad is cat , happy is dog ."], score, [], mutate, generations=30, keep=2)
    assert len(history) == 30 and all(b[1] >= a[1] for a, b in zip(history, history[1:]))
    assert history[-1] == (target, 1.0)
    with pytest.raises(ValueError, match="non-empty"):
        P.evolve([], score, [], mutate, 3)


def test_chain_error_names_the_first_mistake_of_a_chain():
    p = next(q for q in R.make_problems(50, 3, "eval", seed=4) if len({s for s in q.steps}) == 3)
    chain = p.cot().split(p.question)[1]
    assert P.chain_error(p, chain) is None
    steps = chain.strip().split(" . ")
    n = R.NUMBER_WORDS

    def with_step(i, text):
        return " ".join(" . ".join(steps[:i] + [text] + steps[i + 1:]).split())

    day2 = steps[1].split(" , ")[0]  # 'day two he gives three'
    other = day2.rsplit(" ", 3)[0] + " " + p.days[2]  # day two restating day three's event
    assert P.chain_error(p, with_step(1, other + " , " + steps[1].split(" , ")[1])) == "another day's event"
    op, amount = p.steps[1]
    misread = f"{p.days[1].split()[0]} {R.GAIN[0] if op == 'minus' else R.LOSE[0]} {n[amount]}"  # the wrong direction
    if (("plus" if op == "minus" else "minus"), amount) not in p.steps:
        assert P.chain_error(p, with_step(1, day2.rsplit(" ", 3)[0] + " " + misread + " , x")) == "a misread event"
    before, after = p.totals[1], p.totals[2]
    sums = f"{n[before]} {op} {n[amount]} is {n[(after + 1) % 10]}"
    assert P.chain_error(p, with_step(1, f"{day2} , {sums}")) == "wrong arithmetic"
    carried = f"{n[(before + 1) % 10]} {op} {n[amount]} is {n[after]}"
    assert P.chain_error(p, with_step(1, f"{day2} , {carried}")) == "a wrong carried count"
    assert P.chain_error(p, " . ".join(steps[:2]) + f" . answer : {p.answer} .") == "wrong length or answer"
    assert P.chain_error(p, chain.replace(f"answer : {p.answer}", "answer : ten")) == "wrong length or answer"
