"""Reading visual tokens of an ordinary connector (the paper's Figure 1), VQA scoring, and the harness runner."""

import numpy as np
import pytest
import torch

from langbridge_training.demo.llava_baseline import compose_llava
from modeling_langbridge.analysis.alignment import expand_checkpoints, measure, read_nearest
from modeling_langbridge.analysis.evaluation import exact_match, normalize_answer, summarize, vqa_accuracy
from modeling_langbridge.analysis.harness import HarnessRunner
from modeling_langbridge.analysis.harness.runner import cut_at_stops, greedy_settings
from modeling_langbridge.assembly.tiny import random_shapes_image


@pytest.fixture(scope="module")
def llava(parts):
    torch.manual_seed(0)
    composed = compose_llava(str(parts["clip"]), str(parts["qwen2"]))
    return composed.model.eval(), composed.processor


def test_nearest_words_of_a_llava_connector_match_an_independent_computation(llava):
    model, processor = llava
    image = random_shapes_image(0)
    reading = read_nearest(model, processor, image, top_k=4)

    # Independently: the vision tower's layer -2 patches through LLaVA's own projector, then cosine similarity
    # to every ordinary token's input embedding, in numpy.
    pixels = processor.image_processor(image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-2][0, 1:]
        visual = model.model.multi_modal_projector(hidden).double().numpy()
    embeddings = model.get_input_embeddings().weight.detach().double().numpy()
    tokenizer = processor.tokenizer
    excluded = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    vocab = {i: t for t, i in tokenizer.get_vocab().items()}
    readable = lambda i: tokenizer.decode([i]).strip() and "\ufffd" not in tokenizer.decode([i])  # noqa: E731
    ordinary = np.array(sorted(i for i in vocab if i not in excluded and readable(i)))
    keys = embeddings[ordinary] / np.linalg.norm(embeddings[ordinary], axis=1, keepdims=True)
    similarity = (visual / np.linalg.norm(visual, axis=1, keepdims=True)) @ keys.T
    order = np.argsort(-similarity, axis=1)[:, :4]

    side = int(len(visual) ** 0.5)
    assert reading.grid == (side, side) and len(reading.tokens) == len(visual)
    assert reading.token_ids == ordinary[order].tolist()
    np.testing.assert_allclose(reading.weights, np.take_along_axis(similarity, order, axis=1), rtol=1e-5, atol=1e-6)
    assert reading.tokens[0][0] == tokenizer.decode([reading.token_ids[0][0]])


def test_grounded_share_counts_patches_whose_nearest_word_is_in_the_caption(llava):
    model, processor = llava
    image = random_shapes_image(1)
    words = [row[0].strip().lower() for row in read_nearest(model, processor, image, top_k=1).tokens]
    named = sorted({w for w in words if w.isalpha() and len(w) > 2})[:1]
    caption = f"a picture of {named[0]}" if named else "nothing named"
    point = measure(model, processor, [image], [caption])
    assert point.patches == len(words)
    assert point.grounded_share == pytest.approx(sum(w in named for w in words) / len(words))
    assert 0 < point.mean_top1_cosine <= 1


def test_expand_checkpoints_orders_a_training_folder_by_step(tmp_path):
    run = tmp_path / "run"
    for step in (300, 20, 100):
        (run / f"checkpoint-{step}").mkdir(parents=True)
        (run / f"checkpoint-{step}" / "config.json").write_text("{}")
    (run / "config.json").write_text("{}")
    other = tmp_path / "other"
    assert expand_checkpoints([other, run]) == [other, *(run / f"checkpoint-{s}" for s in (20, 100, 300)), run]


def test_vqa_accuracy_on_a_hand_built_case():
    """The official metric: min(1, humans who agree / 3), averaged over the ten leave-one-out subsets."""
    ten = ["two"] * 2 + ["three"] * 8
    assert vqa_accuracy("2", ten) == pytest.approx(0.6)  # 2 of 10 -> (2 * 1/3 + 8 * 2/3) / 10
    assert vqa_accuracy("Three.", ten) == 1.0
    assert vqa_accuracy("four", ten) == 0.0
    assert vqa_accuracy("yes", ["yes"] * 3 + ["no"] * 7) == pytest.approx(0.9)  # 3 -> (3 * 2/3 + 7 * 1) / 10
    assert normalize_answer("The Red  circle!") == "red circle" and normalize_answer("3.5") == "3.5"
    assert exact_match("A circle", ["square", "circle"]) == 1.0

    predictions = [
        {"prediction": "2", "answers": ten, "kind": "count"},
        {"prediction": "red", "answers": ["red"], "kind": "colour"},
        {"prediction": "blue", "answers": ["red"], "kind": "colour"},
    ]
    for p in predictions:
        p["vqa_accuracy"], p["exact_match"] = (
            vqa_accuracy(p["prediction"], p["answers"]),
            exact_match(p["prediction"], p["answers"]),
        )
    result = summarize(predictions)
    assert result.overall.vqa_accuracy == pytest.approx((0.6 + 1 + 0) / 3)
    assert result.overall.exact_match == pytest.approx(2 / 3)
    assert result.by_kind["colour"].vqa_accuracy == 0.5 and result.by_kind["count"].count == 1
    assert "| count | 1 | 60.0 | 100.0 |" in result.table()


def test_harness_settings_and_stops():
    assert greedy_settings({"max_new_tokens": 8, "temperature": 0}) == {"max_new_tokens": 8, "do_sample": False}
    sampled = greedy_settings({"temperature": 0.7, "top_p": 0.9, "num_beams": 1})
    assert sampled["do_sample"] and sampled["temperature"] == 0.7 and sampled["top_p"] == 0.9
    assert cut_at_stops("red circle\n\nUSER: more", ["\n\n", "USER:"]) == "red circle"


def test_harness_runner_generates_in_batches_and_scores_continuations(qwen_clip_dir):
    runner = HarnessRunner(str(qwen_clip_dir), device="cpu", dtype="float32")
    images = [random_shapes_image(0), random_shapes_image(1)]
    torch.manual_seed(0)
    batched = runner.generate(
        ["<image>\nWhat colour is the square?", "How many shapes?"],
        [[images[0]], [images[1]]],
        {"max_new_tokens": 5, "temperature": 0},
    )
    alone = runner.generate(["How many shapes?"], [[images[1]]], {"max_new_tokens": 5})
    assert len(batched) == 2 and batched[1] == alone[0]  # left padding: batching does not change an answer

    total, greedy = runner.loglikelihood("What colour is the square?", " red", [images[0]])
    prompt = runner.prompt("What colour is the square?", 1)
    inputs = runner.inputs([prompt + " red"], [images[0]])
    start = runner.inputs([prompt], [images[0]])["input_ids"].shape[1]
    with torch.no_grad():
        log_probs = torch.log_softmax(runner.model(**inputs).logits[0].float(), -1)
    expected = sum(
        log_probs[position - 1, inputs["input_ids"][0, position]].item()
        for position in range(start, inputs["input_ids"].shape[1])
    )
    assert total == pytest.approx(expected, rel=1e-5) and total < 0 and isinstance(greedy, bool)


@pytest.mark.parametrize("setting", [True, "True", "false"])
def test_harness_runner_takes_the_kernels_setting_as_a_harness_passes_it(qwen_clip_dir, kernel_requests, setting):
    HarnessRunner(str(qwen_clip_dir), device="cpu", dtype="float32", use_kernels=setting)
    assert kernel_requests == [("LangBridgeForConditionalGeneration", str(setting).lower() == "true")]


def test_harness_runner_refuses_a_kernels_setting_it_cannot_read(qwen_clip_dir):
    with pytest.raises(ValueError, match="use_kernels='maybe': give True or False"):
        HarnessRunner(str(qwen_clip_dir), device="cpu", use_kernels="maybe")
