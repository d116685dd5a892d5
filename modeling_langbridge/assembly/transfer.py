"""Pretraining-free transfer: an adapter trained with one LLM, attached to another.

The adapter's coefficients are over token *strings*; attaching it to a new LLM means finding that LLM's ids
for the same strings (composing the ones its tokenizer lacks from its own sub-tokens). Nothing else changes:
the projector's weights are used as trained, whatever the new LLM's family or hidden size.
"""

from pathlib import Path

import torch

from ..errors import LangBridgeUsageError
from .adapter import LangBridgeAdapter
from .compose import DEFAULT_MIN_COVERAGE, Composed, compose


def transfer(
    adapter: LangBridgeAdapter | str | Path,
    language_model: str,
    vision_model: str | None = None,
    *,
    min_coverage: float = DEFAULT_MIN_COVERAGE,
    force: bool = False,
    dtype: str | torch.dtype = "auto",
    use_kernels: bool | None = None,
) -> Composed:
    """A full LangBridge model: `vision_model` + the adapter's projector + `language_model`."""
    if not isinstance(adapter, LangBridgeAdapter):
        adapter = LangBridgeAdapter.from_pretrained(adapter)
    facts = adapter.facts
    vision_model = vision_model or facts.vision_model_name_or_path
    if not vision_model:
        raise LangBridgeUsageError("The adapter does not record its vision model; pass --vision-model.")
    composed = compose(
        vision_model,
        language_model,
        projector_hidden_size=adapter.projector_hidden_size,
        vocab=adapter.vocabulary,
        coefficient_activation=facts.coefficient_activation,
        combine_in_float32=facts.combine_in_float32,
        projector_hidden_act=facts.projector_hidden_act,
        vision_feature_layer=facts.vision_feature_layer,
        vision_feature_select_strategy=facts.vision_feature_select_strategy,
        expected_vision_feature_size=adapter.vision_feature_size,
        min_coverage=min_coverage,
        force=force,
        dtype=dtype,
        use_kernels=use_kernels,
    )
    projector = composed.model.model.multi_modal_projector
    projector.load_state_dict({k: v.to(projector.linear_1.weight.dtype) for k, v in adapter.weights.items()})
    composed.notes.append(
        f"projector weights from the adapter (trained with {facts.trained_with or 'an unrecorded LLM'}), used unchanged"
    )
    return composed
