"""What the installed transformers offers, detected rather than assumed, so a saved folder runs on every transformers
from 5.16.1 (the oldest that current vLLM releases install) to the newest.

transformers 5.24 renamed the KV cache argument and output field (`past_key_values` -> `cache`), added multimodal
output classes (`image_outputs`), `SubConfigSpec` for composite configs and `slice_logits_to_keep`. An inference
engine loads this folder with the transformers it pins, so each of these is looked up here once, and the model files
use the answer. Features are detected, never version numbers.

This file travels with checkpoints as remote code: it imports only torch and transformers.
"""

import functools
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling, ModelOutput

# The name under which models take and return the KV cache: `cache` since 5.24, `past_key_values` before.
CACHE_ARGUMENT = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"

try:  # composite configs declare their sub-configs' defaults this way since 5.24
    from transformers.configuration_utils import SubConfigSpec
except ImportError:
    SubConfigSpec = None

try:
    from transformers.modeling_outputs import MultimodalBaseModelOutputWithPast, MultimodalCausalLMOutputWithPast
except ImportError:

    @dataclass
    class MultimodalBaseModelOutputWithPast(ModelOutput):
        """The base model's outputs on a transformers without multimodal output classes (before 5.24)."""

        last_hidden_state: torch.FloatTensor | None = None
        past_key_values: Cache | None = None
        hidden_states: tuple[torch.FloatTensor, ...] | None = None
        attentions: tuple[torch.FloatTensor, ...] | None = None
        image_outputs: BaseModelOutputWithPooling | None = None

    @dataclass
    class MultimodalCausalLMOutputWithPast(ModelOutput):
        """The causal LM's outputs on a transformers without multimodal output classes (before 5.24)."""

        loss: torch.FloatTensor | None = None
        logits: torch.FloatTensor | None = None
        past_key_values: Cache | None = None
        hidden_states: tuple[torch.FloatTensor, ...] | None = None
        attentions: tuple[torch.FloatTensor, ...] | None = None
        image_outputs: BaseModelOutputWithPooling | None = None


try:
    from transformers.modeling_utils import slice_logits_to_keep
except ImportError:

    def slice_logits_to_keep(hidden_states: torch.Tensor, logits_to_keep: int | torch.Tensor) -> torch.Tensor:
        """The positions whose logits are wanted: the last `logits_to_keep` (0: all), or the given indices."""
        indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        return hidden_states[:, indices, :]


def accepts_cache_argument(forward):
    """Let `forward(..., cache=...)` be called with either name of the KV cache: the current one quietly, and on a
    transformers that knows `cache`, the old `past_key_values` with transformers' own deprecation warning."""
    if CACHE_ARGUMENT == "cache":
        from transformers.utils.deprecation import deprecate_kwarg

        return deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")(forward)

    @functools.wraps(forward)
    def renamed(self, *args, **kwargs):
        if "past_key_values" in kwargs:
            kwargs["cache"] = kwargs.pop("past_key_values")
        return forward(self, *args, **kwargs)

    return renamed


def cache_of(outputs) -> Cache | None:
    """The KV cache an LLM's outputs return, under either name."""
    return getattr(outputs, CACHE_ARGUMENT, None)


__all__ = [
    "CACHE_ARGUMENT",
    "SubConfigSpec",
    "MultimodalBaseModelOutputWithPast",
    "MultimodalCausalLMOutputWithPast",
    "slice_logits_to_keep",
    "accepts_cache_argument",
    "cache_of",
]
