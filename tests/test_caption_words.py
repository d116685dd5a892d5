"""The optional stage-1 caption-word loss: what it computes, that the recipe adds it, and where it is refused."""

import math
import re

import pytest
import torch
from test_training import run_recipe, write_config
from transformers import AutoModelForImageTextToText, TrainerCallback

from langbridge_training import pretrain
from langbridge_training.caption_words import CaptionWordLoss


def test_the_loss_is_the_caption_words_negative_log_probability_under_the_mean_coefficients(world_model_dir):
    model = AutoModelForImageTextToText.from_pretrained(world_model_dir).eval()
    projector = model.model.multi_modal_projector
    words = CaptionWordLoss(model)
    features = torch.randn(2, 4, projector.linear_1.in_features)
    ids = projector.vocab_token_ids
    labels = torch.tensor([[-100, ids[3], ids[5], ids[3]], [-100, -100, ids[7], -100]])
    with words.capture():
        projector(features, model.get_input_embeddings())
    loss = words(labels)

    expected = []
    for sample, rows in ((0, [3, 5]), (1, [7])):  # each word once, whatever its count in the caption
        logits = projector.coefficients(features[sample]).mean(dim=0).double()
        expected.append(-sum(logits.log_softmax(-1)[row].item() for row in rows) / len(rows))
    assert math.isclose(loss.item(), sum(expected) / 2, rel_tol=1e-5)
    loss.backward()
    assert projector.linear_1.weight.grad is not None and projector.linear_1.weight.grad.abs().sum() > 0

    labels_without_words = torch.full((2, 3), -100)
    with words.capture():
        projector(features, model.get_input_embeddings())
    assert words(labels_without_words) is None


def test_stage_one_with_the_caption_word_loss_logs_it_and_trains_the_projector(world_model_dir, world, tmp_path):
    logged = []

    class Logs(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            logged.append(logs)

    def stage_one(weight, out):
        config = write_config(
            tmp_path / f"{out}.yaml",
            model_name_or_path=str(world_model_dir),
            dataset=str(world["captions"]),
            image_folder=str(world["images"]),
            output_dir=str(tmp_path / out),
            max_steps=6,
            per_device_train_batch_size=8,
            learning_rate=5e-3,
            logging_steps=1,
            caption_word_loss=weight,
            seed=0,
        )
        return run_recipe(pretrain, config, callbacks=[Logs()])

    stage_one(1.0, "words")
    word_losses = [entry["caption_word_loss"] for entry in logged if "caption_word_loss" in entry]
    assert len(word_losses) == 6 and all(math.isfinite(x) for x in word_losses)
    assert word_losses[-1] < word_losses[0]  # the coefficients learn to name the captions' words
    assert (tmp_path / "words" / "adapter").is_dir()

    logged.clear()
    stage_one(0.0, "plain")
    assert not [entry for entry in logged if "caption_word_loss" in entry]  # off by default: the paper's stage 1


def test_the_caption_word_loss_is_refused_for_llava_below_zero_and_in_sft(parts, world, world_model_dir, tmp_path):
    from langbridge_training import sft
    from langbridge_training.demo.llava_baseline import compose_llava

    llava = compose_llava(str(parts["clip"]), str(parts["qwen2"])).save(tmp_path / "llava")
    for recipe, model, weight, message in (
        (pretrain, llava, 1.0, "for LangBridge models"),
        (pretrain, world_model_dir, -1.0, "give 0 (off)"),
        (sft, world_model_dir, 1.0, "a stage-1 setting"),
    ):
        config = write_config(
            tmp_path / "c.yaml",
            model_name_or_path=str(model),
            dataset=str(world["captions"]),
            image_folder=str(world["images"]),
            output_dir=str(tmp_path / "out"),
            max_steps=1,
            caption_word_loss=weight,
        )
        with pytest.raises(ValueError, match=re.escape(message)):
            run_recipe(recipe, config)
        assert not (tmp_path / "out").exists()  # refused before any work
