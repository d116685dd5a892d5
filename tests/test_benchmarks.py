"""The benchmarks' measuring machinery on a small case: fresh processes, alternated timing, the gradient count."""

import json

import pytest

from benchmarks.measure import compare
from benchmarks.projection import D, T


@pytest.mark.slow
def test_compare_measures_each_side_and_counts_the_gradients_both_return():
    tokens, hidden = 64, 16
    options = {"activation": "none", "tokens": tokens, "hidden": hidden, "embeddings": "trained"}
    results = compare(
        "benchmarks.projection", "projection", {side: {"path": side, **options} for side in ("naive", "new")}, repeats=3
    )

    gradient_mb = 4 * (tokens * hidden + T * hidden + T + T * D) / 2**20  # dh, dW, db, dE in float32
    for side in ("naive", "new"):
        result = results[side]
        assert len(result["times"]) == 3 and all(t > 0 for t in result["times"])
        assert result["seconds"] == sorted(result["times"])[1]
        assert abs(result["gradients_mb"] - gradient_mb) < 1e-9
        assert result["peak_mb"] > 0.9 * gradient_mb  # the step's peak holds at least the gradients it returns


@pytest.mark.slow
def test_gpu_benchmark_runs_at_toy_sizes_and_writes_every_ratio(tmp_path):
    """`benchmarks.gpu` at `--small` sizes (what it falls back to without CUDA): every section runs in one process
    and the results file holds the ratios the closing notes quote."""
    from benchmarks.gpu import TRAINING_SIDES, main

    results = main(["--small", "--steps", "1", "--alternate", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "gpu_results.json").read_text())
    assert saved["device"] == results["device"] and saved["sizes"]["batch"] == 2
    assert len(saved["projection"]) == 8 and all(row["time_ratio"] > 0 for row in saved["projection"])
    for stage in ("sft", "stage1"):
        assert set(saved["training"][stage]) == {f"{kind}/{loss}" for kind, loss in TRAINING_SIDES}
        assert saved["training"][stage]["llava/model"]["time_ratio"] == 1.0
    assert [row["batch"] for row in saved["generation"]] == [1, 2]
    assert all(row["speed_ratio"] > 0 for row in saved["generation"])
    for kind in ("llava", "langbridge-none"):  # the compiled decode step gives eager's tokens, for both models
        assert saved["decode"][kind]["same_tokens"] is True and saved["decode"][kind]["compiled_speedup"] > 0
    assert saved["decode"]["compiled_speed_ratio"] > 0


@pytest.mark.slow
def test_packing_benchmark_runs_at_tiny_size_and_reports_every_layout(tmp_path):
    """`benchmarks.packing` on a few samples of the long-tailed mix with a one-layer LLM: each layout trains through
    the same tokens, the padding shares are what its batches hold, and the ratios are to the padded layout."""
    from benchmarks.packing import LAYOUTS, main

    results = main(
        ["--data", "mix", "--samples", "12", "--batch", "4", "--hidden", "32", "--layers", "1", "--max-length", "256"]
        + ["--repeats", "1", "--out", str(tmp_path)]
    )
    saved = json.loads((tmp_path / "packing_results.json").read_text())
    assert saved["data"].keys() == {"mix"} and saved["settings"]["samples"] == 12
    layouts = results["data"]["mix"]["layouts"]
    assert list(layouts) == list(LAYOUTS)
    assert len({row["tokens"] for row in layouts.values()}) == 1  # the same samples, whatever the layout
    padded = layouts["padded"]
    assert padded["time_ratio"] == 1.0 and padded["padding_share"] > 0
    assert layouts["packed"]["slots"] < padded["slots"]  # less padding to compute
    for row in layouts.values():
        assert row["tokens_per_s"] > 0 and row["epoch_s"] > 0 and row["peak_mb"] >= 0
        assert row["padding_share"] == pytest.approx(1 - row["tokens"] / row["slots"])
