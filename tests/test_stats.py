"""course_utils.stats: the bootstrap CI covers the true mean as often as it claims, and clusters widen it."""
import numpy as np
import pytest

from course_utils.stats import mean_ci


def test_the_interval_covers_a_known_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    hits = 0
    for trial in range(300):
        values = (rng.random(150) < 0.7).astype(float)
        est = mean_ci(values, resamples=500, seed=trial)
        hits += est.low <= 0.7 <= est.high
    assert 0.91 <= hits / 300 <= 0.98


def test_resampling_by_cluster_widens_the_interval_when_items_of_a_cluster_agree():
    values = np.repeat(np.random.default_rng(1).random(50) < 0.6, 4).astype(float)  # 4 identical items per story
    clusters = np.repeat(np.arange(50), 4)
    naive, by_story = mean_ci(values), mean_ci(values, clusters)
    assert naive.mean == by_story.mean
    assert (by_story.high - by_story.low) > 1.5 * (naive.high - naive.low)


def test_the_interval_matches_the_normal_approximation_on_a_large_sample():
    values = (np.random.default_rng(2).random(2000) < 0.3).astype(float)
    est = mean_ci(values)
    half = 1.96 * np.sqrt(est.mean * (1 - est.mean) / len(values))
    assert est.low == pytest.approx(est.mean - half, abs=0.005)
    assert est.high == pytest.approx(est.mean + half, abs=0.005)


@pytest.mark.parametrize("values, clusters, message", [
    ([1.0], None, "at least 2 values"),
    ([1.0, 0.0, 1.0], ["a", "b"], "one cluster label per value"),
    ([1.0, 0.0], ["a", "a"], "at least 2 clusters"),
])
def test_bad_input_says_what_is_wrong(values, clusters, message):
    with pytest.raises(ValueError, match=message):
        mean_ci(values, clusters)
