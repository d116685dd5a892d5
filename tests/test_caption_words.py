"""The optional stage-1 losses on the coefficients (caption words, spread): what they compute, that the recipe adds
them, and where they are refused."""

import math
import re

import pytest
import torch
from test_training import run_recipe, write_config
from transformers import AutoModelForImageTextToText, TrainerCallback

from langbridge_training import pretrain
from langbridge_training.caption_words import LOSSES, CaptionWordLoss, coefficient_spread
from langbridge_training.demo.transfer_diagnosis import coefficient_statistics


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


def test_the_spread_loss_is_the_log_of_how_many_words_each_token_mixes_and_its_gradient_lowers_it():
    tokens = 48
    one_word = torch.zeros(2, 3, tokens)
    one_word[..., 5] = torch.tensor([1.0, -7.0, 30.0])  # any scale or sign: one word's embedding times a number
    assert coefficient_spread(one_word).item() == pytest.approx(0.0, abs=1e-6)
    even = torch.full((1, 4, tokens), 0.3) * torch.tensor([1.0, -1.0]).repeat(tokens // 2)  # signs do not matter
    assert coefficient_spread(even).item() == pytest.approx(math.log(tokens), rel=1e-5)
    two_words = torch.zeros(1, 1, tokens)
    two_words[..., [1, 9]] = 4.0
    assert coefficient_spread(two_words).item() == pytest.approx(math.log(2), rel=1e-5)

    # the same count as transfer_diagnosis's effective_tokens, which the study reports
    mixed = torch.randn(3, 9, tokens)
    effective = coefficient_statistics(mixed.reshape(-1, tokens), torch.eye(tokens), torch.eye(tokens))
    per_token = torch.exp(torch.stack([coefficient_spread(row.reshape(1, 1, -1)) for row in mixed.reshape(-1, tokens)]))
    assert per_token.mean().item() == pytest.approx(effective["effective_tokens"], rel=1e-5)

    mixed.requires_grad_(True)
    coefficient_spread(mixed).backward()
    with torch.no_grad():
        assert coefficient_spread(mixed - 0.5 * mixed.grad) < coefficient_spread(mixed)


@pytest.mark.parametrize("setting", LOSSES)
def test_stage_one_with_a_coefficient_loss_logs_it_and_trains_the_projector(setting, world_model_dir, world, tmp_path):
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
            **{setting: weight},
            seed=0,
        )
        return run_recipe(pretrain, config, callbacks=[Logs()])

    stage_one(1.0, "with")
    losses = [entry[setting] for entry in logged if setting in entry]
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    # the coefficients learn to name the captions' words, or to mix fewer words
    assert losses[-1] < losses[0]
    assert not [entry for entry in logged if (set(LOSSES) - {setting}) & set(entry)]  # only the one asked for
    assert (tmp_path / "with" / "adapter").is_dir()

    logged.clear()
    stage_one(0.0, "plain")
    assert not [entry for entry in logged if set(LOSSES) & set(entry)]  # off by default: the paper's stage 1


@pytest.mark.parametrize("setting", LOSSES)
def test_a_coefficient_loss_is_refused_for_llava_below_zero_and_in_sft(
    setting, parts, world, world_model_dir, tmp_path
):
    from langbridge_training import sft
    from langbridge_training.demo.llava_baseline import compose_llava

    llava = compose_llava(str(parts["clip"]), str(parts["qwen2"])).save(tmp_path / "llava")
    for recipe, model, weight, message in (
        (pretrain, llava, 1.0, f"{setting} is for LangBridge models"),
        (pretrain, world_model_dir, -1.0, f"{setting} is -1.0; give 0 (off)"),
        (sft, world_model_dir, 1.0, f"{setting} is a stage-1 setting"),
    ):
        config = write_config(
            tmp_path / "c.yaml",
            model_name_or_path=str(model),
            dataset=str(world["captions"]),
            image_folder=str(world["images"]),
            output_dir=str(tmp_path / "out"),
            max_steps=1,
            **{setting: weight},
        )
        with pytest.raises(ValueError, match=re.escape(message)):
            run_recipe(recipe, config)
        assert not (tmp_path / "out").exists()  # refused before any work


def test_demo_folders_made_before_the_losses_stay_valid_and_runs_with_them_get_their_own_stages():
    from dataclasses import replace

    from langbridge_training.demo.experiment import PAPER_STAGE1, DemoSettings, langbridge_label

    plain = replace(DemoSettings(), **PAPER_STAGE1)  # the demo's default before the remedy
    assert not set(LOSSES) & set(plain.recorded())  # at 0 they are left out: older caches keep their fingerprints
    spread = replace(plain, caption_word_loss=0.1, coefficient_spread_loss=1.0)
    assert {"caption_word_loss": 0.1, "coefficient_spread_loss": 1.0}.items() <= spread.recorded().items()
    assert spread.fingerprint("seed") == plain.fingerprint("seed")  # the world, LLMs and LLaVA runs are shared
    assert spread.fingerprint() != plain.fingerprint()
    assert langbridge_label(spread) == "none-words0.1-spread1" and langbridge_label(plain) == "none"
