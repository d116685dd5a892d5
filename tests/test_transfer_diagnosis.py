"""The study's measures of why a transfer works or not, on tables and coefficients whose answer is known."""

import pytest
import torch

from langbridge_training.demo.transfer_diagnosis import (
    coefficient_statistics,
    held_out_fit,
    readable_words,
    similarity_agreement,
    token_scale,
)


def test_two_tables_related_by_a_rotation_agree_and_unrelated_ones_do_not():
    generator = torch.Generator().manual_seed(0)
    e1 = torch.randn(200, 16, generator=generator)
    rotation, _ = torch.linalg.qr(torch.randn(16, 16, generator=generator))
    e2 = 3 * e1 @ rotation  # another basis and scale, the same geometry
    unrelated = torch.randn(200, 24, generator=generator)
    assert similarity_agreement(e1, e2) == pytest.approx(1, abs=1e-6)
    assert abs(similarity_agreement(e1, unrelated)) < 0.1
    for orthogonal in (True, False):
        assert held_out_fit(e1, e2, orthogonal) == pytest.approx(1, abs=1e-6)
        assert held_out_fit(e1, unrelated, orthogonal) < 0.1
    # Fewer tokens than dimensions (the demo's case): the fit cannot tell a rotation, the agreement still can.
    few = torch.randn(48, 64, generator=generator)
    wide_rotation, _ = torch.linalg.qr(torch.randn(64, 64, generator=generator))
    assert held_out_fit(few, few @ wide_rotation, orthogonal=True) < 0.9
    assert similarity_agreement(few, few @ wide_rotation) == pytest.approx(1, abs=1e-6)


def test_coefficient_statistics_and_token_scale():
    e = torch.eye(4, 6) * 2  # four words of norm 2
    one_hot = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1.0]])
    spread = torch.full((1, 4), 0.25)
    assert coefficient_statistics(one_hot, e, e)["effective_tokens"] == pytest.approx(1)
    assert coefficient_statistics(spread, e, e)["effective_tokens"] == pytest.approx(4)
    assert coefficient_statistics(spread, e, e)["invisible_share_of_c"] == pytest.approx(0, abs=1e-9)
    assert token_scale(one_hot, e) == pytest.approx(1)  # a word is as large as the words
    assert token_scale(one_hot, 5 * e) == pytest.approx(1)  # whatever the LLM's scale
    assert token_scale(spread, e) == pytest.approx(0.5)  # a mean of four orthogonal words is half as large


def test_readable_words_finds_the_true_word_in_the_objects_column():
    tokens = [" red", " green", " blue", " yellow", " circle", " square", " triangle", " one", " two", " three"]
    captions = ["two green squares on the right.", "one red circle on the left."]
    coefficients = torch.zeros(2, 3, 3, len(tokens))
    coefficients[0, :, 2, tokens.index(" green")] = 1  # image 0: its right column says green, square, two
    coefficients[0, :, 2, tokens.index(" square")] = 1
    coefficients[0, :, 2, tokens.index(" two")] = 1
    coefficients[0, :, 0, tokens.index(" red")] = 5  # another column's words do not count
    coefficients[1, :, 0, tokens.index(" blue")] = 1  # image 1: its left column says blue, triangle, three (wrong)
    coefficients[1, :, 0, tokens.index(" triangle")] = 1
    coefficients[1, :, 0, tokens.index(" three")] = 1
    read = readable_words(coefficients.reshape(18, -1), tokens, captions)
    assert read["readable_colour"] == 0.5 and read["readable_shape"] == 0.5 and read["readable_count"] == 0.5
