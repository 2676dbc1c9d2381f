"""Lab 03's BPE-trainer check: the library's tie rule as the lab states it reproduces tokenizers' merges,
the solution passes, and plausible mistakes fail with a message naming them."""
import json
import random
from collections import Counter
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from course_utils.checks import CheckError
from course_utils.checks import bpe as checks
from notebook_helpers import solution_namespace

SOLUTION = Path(__file__).resolve().parents[1] / "solutions" / "03_gpt_pretraining.ipynb"


@pytest.fixture(scope="module")
def sol():
    return solution_namespace(SOLUTION, "checks import gpt")


def test_solution_passes(sol):
    checks.check_bpe_trainer(sol["train_bpe"])


def test_byte_rank_is_the_librarys_own_numbering():
    """BYTE_RANK[b] is the id the library gives byte b's character when the alphabet is all 256 bytes."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["x"], trainers.BpeTrainer(vocab_size=256, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    vocab = json.loads(tok.to_str())["model"]["vocab"]
    assert {checks.BYTE_OF_CHAR[c]: i for c, i in vocab.items()} == dict(enumerate(checks.BYTE_RANK))


def _texts():
    rng = random.Random(0)
    lexicon = ["".join(rng.choice("aab") for _ in range(rng.randint(1, 6))) for _ in range(30)]
    return [checks.check_texts(3)[0], checks.check_texts(4)[1], " ".join(rng.choice(lexicon) for _ in range(300)),
            "aaaa aaa aa abab ababab bbbb aabb aaaa, é café naïve!\n\tdone ünïcödé"]


@pytest.mark.parametrize("text", _texts())
def test_textbook_bpe_with_the_stated_tie_rule_equals_the_library(text):
    merges = checks.reference_merges(checks.byte_words(text), 80)
    assert checks._as_bytes(merges, "reference") == checks.library_merges(text, 80)


def test_ties_do_occur_on_the_check_texts():
    """Without the tie rule the merges differ: the rule is needed, not decoration."""
    words = checks.byte_words(checks.check_texts(0)[0])
    assert checks.reference_merges(words, 40, ties="ids") != checks.reference_merges(words, 40)


def stop_at_count_one(words, n):
    """A merge loop that stops when the most frequent pair occurs only once (a common early stop)."""
    counts = Counter(tuple(w) for w in words)
    merges = checks.reference_merges(words, n)
    for i, pair in enumerate(merges):
        seqs = {w: list(w) for w in counts}
        for j, done in enumerate(merges[:i]):
            seqs = {w: checks._merge(s, done, 256 + j) for w, s in seqs.items()}
        if sum(c for w, c in counts.items() for p in zip(seqs[w], seqs[w][1:]) if p == pair) < 2:
            return merges[:i]
    return merges


def test_the_third_check_text_runs_out_of_pairs_seen_twice():
    words = checks.byte_words(checks.check_texts(0)[2])
    assert len(stop_at_count_one(words, 40)) < len(checks.reference_merges(words, 40))


def _mistake(**kwargs):
    return lambda words, n: checks.reference_merges(words, n, **kwargs)


@pytest.mark.parametrize("fn, words", [
    (_mistake(across_words=True), "across word boundaries"),
    (_mistake(weighted=False), "counted once"),
    (_mistake(recount=False), "count the pairs again"),
    (_mistake(ties=None), "first one found"),
    (_mistake(ties="ids"), "not by their ids"),
    (lambda words, n: [(a - 256, b - 256) if a >= 256 else (a, b) for a, b in checks.reference_merges(words, n)],
     "merge 2 is|does not exist yet|merge"),
    (lambda words, n: checks.reference_merges(words, n)[:-1], "merges returned"),
    (lambda words, n: stop_at_count_one(words, n), "stopped early; keep merging while any adjacent pair is left"),
    (lambda words, n: checks.reference_merges(words, n) + [(97, 97)] * (n - len(checks.reference_merges(words, n))),
     "merges returned, expected"),
    (lambda words, n: {"merges": checks.reference_merges(words, n)}, "return a list"),
])
def test_bpe_mistakes_are_named(fn, words):
    with pytest.raises(CheckError, match=words):
        checks.check_bpe_trainer(fn)
