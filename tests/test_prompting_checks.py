"""Lab 08's checks accept the reference and reject each plausible mistake with a message that names it."""
from collections import Counter

import pytest
import torch

from course_utils import prompting as P
from course_utils.checks import CheckError
from course_utils.checks import prompting as checks
from course_utils.world import reasoning as R
from course_utils.world.reasoning import fill


# Exercise 1: label scores
def first_token_only(logits, input_ids, label_mask):
    lp = logits[:, :-1].log_softmax(-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    mask = label_mask[:, 1:].float()
    return (lp * mask * (mask.cumsum(1) == 1)).sum(1)


def per_token_mean(logits, input_ids, label_mask):
    lp = logits[:, :-1].log_softmax(-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    mask = label_mask[:, 1:].float()
    return (lp * mask).sum(1) / mask.sum(1)


def no_shift(logits, input_ids, label_mask):
    return (logits.log_softmax(-1).gather(-1, input_ids[:, :, None]).squeeze(-1) * label_mask).sum(1)


def test_label_scores_check():
    checks.check_label_scores(P.sequence_scores)
    checks.check_label_scores(P.sequence_scores, hidden=True)
    for wrong, words in [(first_token_only, "first token"), (per_token_mean, "mean"), (no_shift, "shift")]:
        for hidden in (False, True):
            with pytest.raises(CheckError, match=words):
                checks.check_label_scores(wrong, hidden=hidden)


# Exercise 2: prompt building
def trailing_space(demos, query, template, delimiter, instruction=None):
    return P.build_prompt(demos, query, template, delimiter, instruction=instruction) + " "


def query_with_suffix(demos, query, template, delimiter, instruction=None):
    lines = [instruction] * bool(instruction) + [fill(template, x, y) for x, y in demos]
    return delimiter.join(lines + [template.replace("{y}", "").format(x=query)])


def trailing_delimiter(demos, query, template, delimiter, instruction=None):
    return "".join(fill(template, x, y) + delimiter for x, y in demos) + fill(template, query) + delimiter


def empty_instruction_line(demos, query, template, delimiter, instruction=None):
    lines = [instruction or ""] + [fill(template, x, y) for x, y in demos] + [fill(template, query)]
    return delimiter.join(lines)


def test_build_prompt_check():
    checks.check_build_prompt(lambda d, q, t, s, i: P.build_prompt(d, q, t, s, instruction=i))
    with pytest.raises(CheckError, match="whitespace"):
        checks.check_build_prompt(trailing_space)
    with pytest.raises(CheckError, match="stop where its label goes"):
        checks.check_build_prompt(query_with_suffix)
    with pytest.raises(CheckError):
        checks.check_build_prompt(trailing_delimiter)
    with pytest.raises(CheckError, match="order"):
        checks.check_build_prompt(lambda d, q, t, s, i: P.build_prompt(d[::-1], q, t, s, instruction=i))
    with pytest.raises(CheckError, match="instruction comes first"):
        checks.check_build_prompt(lambda d, q, t, s, i: P.build_prompt(d, q, t, s))
    with pytest.raises(CheckError, match="no instruction"):
        checks.check_build_prompt(empty_instruction_line)


# Exercise 3: ensembling
def raw_logprob_average(lp):
    return lp.mean(0).argmax(-1), P.ensemble(lp)[1]


def lowest_index_ties(lp):
    votes = torch.nn.functional.one_hot(lp.argmax(-1), lp.size(-1)).sum(0)
    return P.ensemble(lp)[0], votes.argmax(-1)


def test_ensemble_check():
    checks.check_ensemble(P.ensemble)
    with pytest.raises(CheckError, match="raw log-probs"):
        checks.check_ensemble(raw_logprob_average)
    with pytest.raises(CheckError, match="ties"):
        checks.check_ensemble(lowest_index_ties)


# Exercise 4: self-consistency
def reference_vote(chains):
    return P.vote([P.extract_answer(c) for c in chains])


def alphabetical_ties(chains):
    answers = [a for a in (P.extract_answer(c) for c in chains) if a]
    if not answers:
        return None
    counts = Counter(answers)
    return min(a for a in counts if counts[a] == max(counts.values()))


def last_answer(chains):
    import re
    answers = [(re.findall(r"answer : (\w+)", c) or [None])[-1] for c in chains]
    return P.vote(answers)


def regex_vote(chains):  # the old rule: a regex that needs a space before the word and keeps letters only
    import re
    return P.vote([(m.group(1) if (m := re.search(r"answer : (\w+)", c)) else None) for c in chains])


def test_self_consistency_check():
    checks.check_self_consistency(reference_vote)
    with pytest.raises(CheckError, match="ties"):
        checks.check_self_consistency(alphabetical_ties)
    with pytest.raises(CheckError):
        checks.check_self_consistency(last_answer)


# Exercise 4: chain-of-thought prompts and the answer rule
def regex_answer(text):
    import re
    return m.group(1) if (m := re.search(r"answer : (\w+)", text)) else None


def keeps_periods(text):
    words = text.split()
    return next((words[i + 2] for i in range(len(words) - 2) if words[i:i + 2] == ["answer", ":"]), None)


def last_rule_answer(text):
    return P.extract_answer(text[text.rindex("answer :"):]) if "answer :" in text else P.extract_answer(text)


def test_extract_answer_check():
    checks.check_extract_answer(P.extract_answer)
    with pytest.raises(CheckError, match="split on whitespace"):
        checks.check_extract_answer(regex_answer)  # the regex misses 'answer\t:\nzero'
    with pytest.raises(CheckError, match="trailing periods"):
        checks.check_extract_answer(keeps_periods)
    with pytest.raises(CheckError, match="first 'answer :' counts"):
        checks.check_extract_answer(last_rule_answer)


def direct_without_slot(problem, style, demos):
    return P.cot_prompt(problem, style, demos).removesuffix(" answer :")


def unmatched_demos(problem, style, demos):
    return R.DELIMITER.join([d.direct() for d in demos] + [P.cot_prompt(problem, style)])


def test_cot_prompt_check():
    checks.check_cot_prompt(P.cot_prompt)
    with pytest.raises(CheckError, match="answer :"):
        checks.check_cot_prompt(direct_without_slot)
    with pytest.raises(CheckError, match="query's style"):
        checks.check_cot_prompt(unmatched_demos)
    with pytest.raises(CheckError, match="trigger"):
        checks.check_cot_prompt(lambda p, s, d: P.cot_prompt(p, "steps" if s == "trigger" else s, d))


# Exercise 5: APE
def select_on_test(candidates, score, dev, test):
    scores = [score(c, test) for c in candidates]
    best = max(range(len(candidates)), key=scores.__getitem__)
    return {"best": candidates[best], "dev": score(candidates[best], dev), "test": scores[best]}


def scores_every_proposal(candidates, score, dev, test):
    result = P.ape_select(candidates, score, dev, test)
    return {**result, "dev_scores": [score(c, dev) for c in candidates]}


def last_of_ties(candidates, score, dev, test):
    scores = {c: score(c, dev) for c in dict.fromkeys(candidates)}
    best = max(reversed(list(scores)), key=scores.get)
    return {"best": best, "dev": scores[best], "test": score(best, test), "dev_scores": scores}


def reports_dev_as_test(candidates, score, dev, test):
    result = P.ape_select(candidates, score, dev, test)
    return {**result, "test": result["dev"]}


def test_ape_check():
    checks.check_ape(P.ape_select)
    with pytest.raises(CheckError, match="test set"):
        checks.check_ape(select_on_test)
    with pytest.raises(CheckError, match="dev score"):
        checks.check_ape(reports_dev_as_test)
    with pytest.raises(CheckError, match="each distinct candidate, once"):
        checks.check_ape(scores_every_proposal)
    with pytest.raises(CheckError, match="proposed first"):
        checks.check_ape(last_of_ties)
