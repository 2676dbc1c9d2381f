"""The course's offline world: seeded text with known ground truth (corpus, instructions, preferences, reasoning)
and tokenizers trained on it. Data only: the models trained on it live in ``course_utils.models``. No network."""
