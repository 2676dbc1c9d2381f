import pytest

from course_utils.world.corpus import make_corpus, make_stories, read_text_file, vocabulary


def test_stories_are_deterministic_and_seed_dependent():
    assert make_corpus(50, seed=1) == make_corpus(50, seed=1)
    assert make_corpus(50, seed=1) != make_corpus(50, seed=2)


def test_every_word_is_in_the_closed_vocabulary():
    vocab = set(vocabulary())
    words = {w for text in make_corpus(500) for w in text.split()}
    assert words <= vocab, words - vocab


def test_facts_are_ground_truth_of_the_text():
    for story in make_stories(300, seed=5):
        for fact in story.facts:
            assert fact["subject"] in story.text
            if fact["kind"] == "count":
                from course_utils.world.corpus import NUMBERS
                assert f"{fact['subject']} has {NUMBERS[fact['count'] - 1]} {fact['object']}" in story.text
            if fact["kind"] == "feeling":
                assert ("played with" in story.text) if fact["sentiment"] else ("ran away from" in story.text)


def test_sentence_counts_respected():
    for story in make_stories(100, min_sentences=2, max_sentences=3):
        assert 2 <= story.text.count(" .") <= 3 and len(story.facts) == story.text.count(" .")


@pytest.mark.parametrize("n", [0, -1, 1.5])
def test_bad_n(n):
    with pytest.raises(ValueError, match="positive int"):
        make_stories(n)


def test_read_text_file_errors(tmp_path):
    with pytest.raises(ValueError, match="not a file"):
        read_text_file(tmp_path / "missing.txt")
    short = tmp_path / "short.txt"
    short.write_text("hi")
    with pytest.raises(ValueError, match="at least"):
        read_text_file(short)
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00" * 100)
    with pytest.raises(ValueError, match="UTF-8"):
        read_text_file(binary)
    ok = tmp_path / "ok.txt"
    ok.write_text("some words " * 20)
    assert read_text_file(ok).startswith("some words")


def test_plurals_are_english():
    from course_utils.world.corpus import plural

    assert [plural(w) for w in ("box", "cup", "bus", "dish")] == ["boxes", "cups", "buses", "dishes"]
    texts = " ".join(make_corpus(2000, seed=5))
    assert " boxes " in texts and "boxs" not in texts


def test_the_course_models_key_follows_the_world_text(monkeypatch):
    """A change to the generated text (not only a bumped version number) makes the shipped weights stale."""
    from course_utils.models import recipes

    before = recipes.recipe_key("tiny-bert")
    monkeypatch.setattr(recipes, "make_corpus", lambda n, seed=0: make_corpus(n, seed) + ["a new sentence ."])
    recipes.world_fingerprint.cache_clear()
    try:
        assert recipes.recipe_key("tiny-bert") != before, "a changed world must not reuse models trained on the old one"
    finally:
        recipes.world_fingerprint.cache_clear()
