"""The benchmarks' measuring machinery on a small case: fresh processes, alternated timing, the gradient count."""

from benchmarks.measure import compare
from benchmarks.projection import D, T


def test_compare_measures_each_side_and_counts_the_gradients_both_return():
    tokens, hidden = 64, 16
    options = {"activation": "none", "tokens": tokens, "hidden": hidden, "embeddings": "trained"}
    results = compare("benchmarks.projection", "projection", {side: {"path": side, **options} for side in ("naive", "new")},
                      repeats=3)

    gradient_mb = 4 * (tokens * hidden + T * hidden + T + T * D) / 2**20  # dh, dW, db, dE in float32
    for side in ("naive", "new"):
        result = results[side]
        assert len(result["times"]) == 3 and all(t > 0 for t in result["times"])
        assert result["seconds"] == sorted(result["times"])[1]
        assert abs(result["gradients_mb"] - gradient_mb) < 1e-9
        assert result["peak_mb"] > 0.9 * gradient_mb  # the step's peak holds at least the gradients it returns
