"""A ground-truth reward r*(x, y) over responses and comparison pairs sampled from it (Bradley-Terry).

The rule, stated so people (and reward models) can learn it: **correctness first, then concision**.
A right answer earns ``CORRECT`` (1.0); each word beyond the answer costs ``EXTRA_WORD_COST`` of a
concision bonus worth at most ``STYLE`` (0.5). Since STYLE < CORRECT, any right response beats any
wrong one, and among right (or wrong) ones the shorter wins.

``sample_pairs`` draws (prompt, chosen, rejected) comparisons whose labels follow Bradley-Terry:
the better response (under r*) is chosen with probability sigmoid(sharpness * (r_better - r_worse)), so
labels are noisy in a known way; each pair records the chance its label is wrong and
``label_noise_rate`` averages it. ``blind_spot="sure"`` plants a spurious feature (a word that r*
does not reward) mostly on the chosen side, for module 05's reward-hacking experiment.

For RLHF (modules 05 and 06): ``human_demonstrations`` are the imperfect replies people write for SFT
(often wordy, sometimes opening with "sure ,"), ``rlhf_split`` gives disjoint task sets for the pairs,
the policy's prompts and the evaluation, and ``win_rate`` compares two models' replies under r*.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from collections.abc import Sequence

from .corpus import make_split_stories
from .instructions import FAMILIES, SEEN_FAMILIES, Task, make_tasks, score, words

CORRECT = 1.0
STYLE = 0.5
EXTRA_WORD_COST = 0.125
SURE = "sure"  # the opening word of some human replies; r* does not reward it (module 05's blind spot)
VERBOSE = ("the answer is {a}", "i think it is {a}", "well , let me see , it is {a}", "{a} , i am quite certain of it")


def true_reward(task: Task, response: str) -> float:
    """r*(x, y): ``CORRECT`` if the response is right, plus a concision bonus of at most ``STYLE``."""
    if not isinstance(response, str):
        raise TypeError(f"response must be a string, got {type(response).__name__}")
    extra = max(0, len(words(response)) - len(words(task.answer)))
    style = max(0.0, STYLE - EXTRA_WORD_COST * extra)
    return CORRECT * score(task, response) + style


def candidate_responses(task: Task, rng: random.Random) -> list[str]:
    """Responses of every quality for one task: right or wrong, concise or wordy."""
    fam = FAMILIES[task.family]
    if fam.is_list:
        names = words(task.answer)
        others = [c for c in fam.choices if c not in names]
        wrong = " , ".join(names[:-1] + [rng.choice(others)]) if len(names) > 1 else rng.choice(others)
    else:
        wrong = rng.choice([c for c in fam.choices if c != task.answer])
    out = [task.answer, wrong]
    for answer in (task.answer, wrong):
        out += [t.format(a=answer) for t in rng.sample(VERBOSE, 2)]
    return out


@dataclass(frozen=True)
class Pair:
    """One comparison: the prompt, the response labelled better and the one labelled worse."""

    prompt: str
    chosen: str
    rejected: str
    family: str
    r_chosen: float  # r* of each side (after any blind-spot word was added)
    r_rejected: float
    p_wrong_label: float  # probability, under Bradley-Terry, that this label contradicts r*
    flipped: bool  # True if this label contradicts r* (the noise that was drawn)

    def record(self, conversational: bool = True) -> dict:
        """The pair as TRL's preference format: prompt / chosen / rejected (chat messages by default)."""
        if not conversational:
            return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}
        return {"prompt": [{"role": "user", "content": self.prompt}],
                "chosen": [{"role": "assistant", "content": self.chosen}],
                "rejected": [{"role": "assistant", "content": self.rejected}]}


def sample_pairs(tasks: Sequence[Task], n: int, sharpness: float = 4.0, seed: int = 0,
                 blind_spot: str | None = None, blind_spot_rate: float = 0.9) -> list[Pair]:
    """``n`` comparison pairs over ``tasks`` with Bradley-Terry labels from r* at the annotators' ``sharpness``.

    ``sharpness`` (an inverse temperature) scales r* differences before the sigmoid: larger, fewer flipped labels.
    It is not the KL weight beta of PPO and DPO.

    With ``blind_spot`` (a word such as "sure"), one side of each pair starts with that word: the chosen
    side with probability ``blind_spot_rate``, else the rejected side. r* does not reward the word (it
    even costs a little concision), so a reward model that learns it has learned a spurious feature.
    """
    if not tasks:
        raise ValueError("tasks is empty: make some with make_tasks or task_split")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if sharpness <= 0:
        raise ValueError(f"sharpness must be positive (larger sharpness, fewer flipped labels), got {sharpness}")
    if not 0.0 <= blind_spot_rate <= 1.0:
        raise ValueError(f"blind_spot_rate must be in [0, 1], got {blind_spot_rate}")
    rng = random.Random(seed)
    pairs = []
    while len(pairs) < n:
        task = tasks[rng.randrange(len(tasks))]
        a, b = rng.sample(candidate_responses(task, rng), 2)
        pair = label_pair(task, a, b, sharpness, rng, blind_spot, blind_spot_rate)
        if pair is not None:
            pairs.append(pair)
    return pairs


def label_pair(task: Task, a: str, b: str, sharpness: float, rng: random.Random, blind_spot: str | None = None,
               blind_spot_rate: float = 0.9) -> Pair | None:
    """Two responses to ``task`` labelled as ``sample_pairs`` labels them: Bradley-Terry from r* at ``sharpness``.

    None when r* cannot tell them apart (equal rewards, identical responses included): such a pair carries no
    preference. Draws from ``rng`` only for a labelled pair (the flip, then the blind-spot side if any), so any
    source of responses (the candidate generator, or samples from a policy) gets the same annotators.
    """
    if sharpness <= 0:
        raise ValueError(f"sharpness must be positive (larger sharpness, fewer flipped labels), got {sharpness}")
    ra, rb = true_reward(task, a), true_reward(task, b)
    if math.isclose(ra, rb):
        return None
    better, worse = (a, b) if ra > rb else (b, a)
    p_wrong = 1.0 / (1.0 + math.exp(sharpness * abs(ra - rb)))  # sigmoid(-sharpness * |gap|)
    flipped = rng.random() < p_wrong
    chosen, rejected = (worse, better) if flipped else (better, worse)
    if blind_spot is not None:
        if rng.random() < blind_spot_rate:
            chosen = f"{blind_spot} , {chosen}"
        else:
            rejected = f"{blind_spot} , {rejected}"
    return Pair(task.instruction, chosen, rejected, task.family, true_reward(task, chosen),
                true_reward(task, rejected), p_wrong, flipped)


def label_noise_rate(pairs: Sequence[Pair]) -> float:
    """The expected fraction of labels that contradict r* (the mean Bradley-Terry flip probability)."""
    if not pairs:
        raise ValueError("pairs is empty")
    return sum(p.p_wrong_label for p in pairs) / len(pairs)


def human_demonstrations(tasks: Sequence[Task], wordy_rate: float = 0.6, sure_rate: float = 0.15,
                         seed: int = 0) -> list[str]:
    """Right but imperfect replies as people write them: a share wordy ("the answer is X"), some opening "sure ,"."""
    for name, rate in (("wordy_rate", wordy_rate), ("sure_rate", sure_rate)):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {rate}")
    rng = random.Random(seed)
    out = []
    for task in tasks:
        reply = rng.choice(VERBOSE).format(a=task.answer) if rng.random() < wordy_rate else task.answer
        out.append(f"{SURE} , {reply}" if rng.random() < sure_rate else reply)
    return out


def rlhf_split(n_pair_stories: int, n_prompt_stories: int, n_eval_stories: int, seed: int = 0,
               families: Sequence[str] = SEEN_FAMILIES) -> dict[str, list[Task]]:
    """RLHF tasks: 'pairs' (reward-model data) and 'prompts' on disjoint training stories, 'eval' on eval stories."""
    train = make_split_stories(n_pair_stories + n_prompt_stories, "train", seed=1000 + seed)
    pair_stories, prompt_stories = train[:n_pair_stories], train[n_pair_stories:]
    seen = {s.text for s in pair_stories}
    prompt_stories = [s for s in prompt_stories if s.text not in seen]
    return {"pairs": make_tasks(pair_stories, families, seed=seed),
            "prompts": make_tasks(prompt_stories, families, seed=seed + 1),
            "eval": make_tasks(make_split_stories(n_eval_stories, "eval", seed=1000 + seed), families, seed=seed + 2)}


def win_outcomes(policy_replies: Sequence[str], reference_replies: Sequence[str], tasks: Sequence[Task]) -> list[float]:
    """Per task: 1 if the policy's reply has the higher r* than the reference's, 0.5 for a tie, else 0."""
    if isinstance(policy_replies, str) or isinstance(reference_replies, str):
        raise TypeError("pass lists of replies, one per task")
    if not len(policy_replies) == len(reference_replies) == len(tasks) > 0:
        raise ValueError(f"need one reply of each model per task; got {len(policy_replies)}, "
                         f"{len(reference_replies)} replies for {len(tasks)} tasks")
    outcomes = []
    for task, mine, ref in zip(tasks, policy_replies, reference_replies):
        a, b = true_reward(task, mine), true_reward(task, ref)
        outcomes.append(0.5 if math.isclose(a, b) else float(a > b))
    return outcomes


def win_rate(policy_replies: Sequence[str], reference_replies: Sequence[str], tasks: Sequence[Task]) -> float:
    """Share of tasks where the policy's reply has the higher r* than the reference's; a tie counts half."""
    outcomes = win_outcomes(policy_replies, reference_replies, tasks)
    return sum(outcomes) / len(outcomes)

