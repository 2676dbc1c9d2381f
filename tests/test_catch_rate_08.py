"""Lab 08 plausible wrong submissions (issue 24 §6): each loses its exercise's check; correct variants pass."""
import re
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

from course_utils.checks import prompting as checks
from course_utils.world import reasoning as R
from catch_rate import catch_rate_tests, solution_functions

SOLUTION = Path(__file__).resolve().parents[1] / "solutions" / "08_prompting_cot.ipynb"
SOL = solution_functions(SOLUTION, {"torch": torch, "R": R})


def check_label_scores(fn):
    """The visible and the hidden label-score checks."""
    checks.check_label_scores(fn)
    checks.check_label_scores(fn, hidden=True)


def _gathered(logprobs, ids):
    return logprobs.gather(-1, ids[:, 1:, None]).squeeze(-1)


def scores_mask_shifted_in_place(logits, ids, mask):
    mask[:, :-1] = mask[:, 1:].clone()
    return (_gathered(logits[:, :-1].log_softmax(-1), ids) * mask[:, :-1]).sum(1)


def _prompt(query_line, instruction_kept=lambda i: bool(i)):
    """A build_prompt whose query line is ``query_line(template, query)`` and that keeps an instruction when told."""
    def build_prompt(demos, query, template, delimiter="\n", instruction=None):
        lines = [instruction] if instruction_kept(instruction) else []
        return delimiter.join(lines + [template.format(x=x, y=y) for x, y in demos] + [query_line(template, query)])
    return build_prompt


def _ensemble(probs_of, tie_key_of=None):
    """An ensemble averaging ``probs_of(logprobs)`` whose vote ties go to the highest ``tie_key_of(logprobs)``."""
    def ensemble(logprobs):
        probs = probs_of(logprobs)
        key = probs if tie_key_of is None else tie_key_of(logprobs)
        votes = F.one_hot(logprobs.argmax(-1), logprobs.size(-1)).sum(0)
        tied = votes == votes.max(-1, keepdim=True).values
        return probs.argmax(-1), torch.where(tied, key, torch.full_like(key, -1e30)).argmax(-1)
    return ensemble


def ensemble_normalised_in_place(logprobs):
    logprobs -= logprobs.logsumexp(-1, keepdim=True)
    return SOL["ensemble"](logprobs)


def _extract(word_is_answer=lambda w: w == "answer", split=str.split, strip=lambda w: w.rstrip(".") or None, last=False):
    """An extract_answer with the rule's pieces swapped for a neighbour's."""
    def extract_answer(text):
        words, found = split(text), []
        for i in range(len(words) - 2):
            if word_is_answer(words[i]) and words[i + 1] == ":":
                found.append(strip(words[i + 2]))
        return (found[-1] if last else found[0]) if found else None
    return extract_answer


def extract_by_regex(text):
    match = re.search(r"answer\s*:\s*(\w+)", text)
    return match.group(1) if match else None


def _vote(pick, read=lambda c: SOL["extract_answer"](c), drop_none=True):
    """A self_consistency that reads the chains with ``read`` and picks with ``pick(answers)``."""
    def self_consistency(chains):
        answers = [a for a in map(read, chains) if a is not None or not drop_none]
        return pick(answers) if answers else None
    return self_consistency


def _first_most_common(answers):
    return next(a for a in answers if answers.count(a) == max(map(answers.count, answers)))


def _ape(best_of, ordered=lambda s: s):
    """An ape_select that scores each distinct candidate on dev and keeps ``best_of(dev_scores, score, test)``."""
    def ape_select(candidates, score, dev, test):
        scores = ordered({c: score(c, dev) for c in dict.fromkeys(candidates)})
        best = best_of(scores, score, test)
        return {"best": best, "dev": scores[best], "test": score(best, test), "dev_scores": scores}
    return ape_select


def _last_max(scores, *_):
    return [c for c in scores if scores[c] == max(scores.values())][-1]


WRONG = {
    "scores log(softmax)": (check_label_scores, lambda lg, ids, m: (_gathered(
        torch.log(lg[:, :-1].softmax(-1)), ids) * m[:, 1:]).sum(1), "underflows to log.0."),
    "scores logsumexp without the max": (check_label_scores, lambda lg, ids, m: (_gathered(
        lg[:, :-1] - lg[:, :-1].exp().sum(-1, keepdim=True).log(), ids) * m[:, 1:]).sum(1), "exp.x. overflows"),
    "scores mask shifted in place": (check_label_scores, scores_mask_shifted_in_place, "changed label_mask in place"),
    "scores first token only": (check_label_scores, lambda lg, ids, m: _gathered(lg[:, :-1].log_softmax(-1), ids)[
        torch.arange(len(ids)), m[:, 1:].argmax(1)], "only the first token"),
    "scores mean": (check_label_scores, lambda lg, ids, m: (_gathered(lg[:, :-1].log_softmax(-1), ids) * m[:, 1:]).sum(
        1) / m[:, 1:].sum(1), "mean log-prob per label token"),
    "scores mask unshifted": (check_label_scores, lambda lg, ids, m: (_gathered(
        lg[:, :-1].log_softmax(-1), ids) * m[:, :-1]).sum(1), "scores differ"),
    "prompt ends with a space": (checks.check_build_prompt, _prompt(lambda t, q: t[:t.index("{y}")].format(x=q)),
                                 "ends with whitespace"),
    "prompt keeps an empty instruction": (checks.check_build_prompt, _prompt(
        lambda t, q: t[:t.index("{y}")].format(x=q).rstrip(), lambda i: i is not None), "starts with the first demo"),
    "prompt formats an empty label": (checks.check_build_prompt, _prompt(lambda t, q: t.format(x=q, y="").rstrip()),
                                      "nothing after the slot"),
    "ensemble exp without the max": (checks.check_ensemble, _ensemble(
        lambda lp: (lp.exp() / lp.exp().sum(-1, keepdim=True)).mean(0)), "underflows to 0"),
    "ensemble raw log-probs averaged": (checks.check_ensemble, _ensemble(lambda lp: lp.mean(0)), "averaged raw log-probs"),
    "ensemble ties by raw log-probs": (checks.check_ensemble, _ensemble(
        lambda lp: lp.softmax(-1).mean(0), lambda lp: lp.mean(0)), "ties are broken another way"),
    "ensemble ties by the first template": (checks.check_ensemble, _ensemble(
        lambda lp: lp.softmax(-1).mean(0), lambda lp: lp[0].softmax(-1)), "ties are broken another way"),
    "ensemble ties to the lowest label": (checks.check_ensemble, lambda lp: (
        lp.softmax(-1).mean(0).argmax(-1), F.one_hot(lp.argmax(-1), lp.size(-1)).sum(0).argmax(-1)),
        "ties are broken another way"),
    "ensemble normalised in place": (checks.check_ensemble, ensemble_normalised_in_place, "changed logprobs in place"),
    "cot demos always with steps": (checks.check_cot_prompt, lambda p, style, demos=(): R.DELIMITER.join(
        [d.cot() for d in demos] + [SOL["cot_prompt"](p, style)]), "in the query's style"),
    "answer by regex": (checks.check_extract_answer, extract_by_regex, "has no answer by the rule"),
    "answer split on spaces": (checks.check_extract_answer, _extract(split=lambda t: t.split(" ")), "answers 'zero'"),
    "answer word as a substring": (checks.check_extract_answer, _extract(word_is_answer=lambda w: "answer" in w),
                                   "'my answers : six .' has no answer"),
    "answer lower-cased": (checks.check_extract_answer, lambda t: SOL["extract_answer"](t.lower()),
                           "'Answer : Four .' has no answer"),
    "answer periods stripped both sides": (checks.check_extract_answer, _extract(strip=lambda w: w.strip(".") or None),
                                           "answers '.four'"),
    "answer '' for a lone period": (checks.check_extract_answer, _extract(strip=lambda w: w.rstrip(".")),
                                    "return None, got ''"),
    "answer the last one": (checks.check_extract_answer, _extract(last=True), "the first 'answer :' counts"),
    "vote counts missing answers": (checks.check_self_consistency, _vote(_first_most_common, drop_none=False),
                                    "chains without an answer do not vote"),
    "vote over a set": (checks.check_self_consistency, _vote(lambda a: max(sorted(set(a)), key=a.count)),
                        "ties are broken another way"),
    "vote ties to the last": (checks.check_self_consistency, _vote(
        lambda a: [x for x in a if a.count(x) == max(map(a.count, a))][-1]), "ties are broken another way"),
    "vote reads chains by regex": (checks.check_self_consistency, _vote(_first_most_common, read=extract_by_regex),
                                   "not an answer of these chains"),
    "ape selects on test": (checks.check_ape, _ape(lambda s, score, test: max(s, key=lambda c: score(c, test))),
                            "selected the instruction on the test set"),
    "ape ties to the last": (checks.check_ape, _ape(_last_max), "a tie on dev goes to the candidate proposed first"),
    "ape dev scores sorted": (checks.check_ape, _ape(lambda s, *_: next(iter(s)),
                                                     lambda s: dict(sorted(s.items(), key=lambda kv: -kv[1]))),
                              "in the order first proposed"),
}


def scores_loop(logits, ids, mask):
    rows = []
    for row in range(len(ids)):
        positions = [t for t in range(1, ids.shape[1]) if mask[row, t]]
        rows.append(sum(logits[row, t - 1].log_softmax(-1)[ids[row, t]] for t in positions))
    return torch.stack(rows)


def ensemble_loop(logprobs):
    averaged, voted = [], []
    for example in range(logprobs.size(1)):
        probs = logprobs[:, example].softmax(-1).mean(0)
        votes = Counter(logprobs[:, example].argmax(-1).tolist())
        top = max(votes.values())
        averaged.append(int(probs.argmax()))
        voted.append(max((label for label in votes if votes[label] == top), key=lambda label: probs[label]))
    return torch.tensor(averaged), torch.tensor(voted)


def extract_with_zip(text):
    words = text.split()
    for first, second, third in zip(words, words[1:], words[2:] + [""]):
        if (first, second) == ("answer", ":"):
            return third.rstrip(".") or None
    return None


RIGHT = {
    "solution scores": (check_label_scores, SOL["label_scores"]),
    "scores loop": (check_label_scores, scores_loop),
    "scores by cross-entropy": (check_label_scores, lambda lg, ids, m: -(F.cross_entropy(
        lg[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none") * m[:, 1:]).sum(1)),
    "solution prompt": (checks.check_build_prompt, SOL["build_prompt"]),
    "prompt split at the slot": (checks.check_build_prompt, _prompt(
        lambda t, q: t.split("{y}")[0].format(x=q).rstrip())),
    "solution ensemble": (checks.check_ensemble, SOL["ensemble"]),
    "ensemble loop": (checks.check_ensemble, ensemble_loop),
    "solution cot prompt": (checks.check_cot_prompt, SOL["cot_prompt"]),
    "solution answer": (checks.check_extract_answer, SOL["extract_answer"]),
    "answer with zip": (checks.check_extract_answer, extract_with_zip),
    "solution vote": (checks.check_self_consistency, SOL["self_consistency"]),
    "vote with Counter.most_common": (checks.check_self_consistency, _vote(lambda a: Counter(a).most_common(1)[0][0])),
    "solution ape": (checks.check_ape, SOL["ape_select"]),
    "ape with max over the dict": (checks.check_ape, _ape(lambda s, *_: max(s, key=s.get))),
}


test_a_plausible_wrong_version_loses_its_check, test_a_correct_version_passes = catch_rate_tests(WRONG, RIGHT)
