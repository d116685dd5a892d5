"""LangBridge configuration: a vision tower, a causal LLM and the vocabulary bridge between them.

This file travels with checkpoints as remote code: it imports only `transformers` and its siblings.
"""

from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig

from .compatibility_langbridge import SubConfigSpec
from .tiling_langbridge import check_tiling

# CLIP ViT-L/14-336, the vision tower of LLaVA-1.5 and of the LangBridge paper.
CLIP_VIT_L_336 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": 336,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}

# Qwen2-0.5B-Instruct, the LLM the paper pretrains its adapter with.
QWEN2_0_5B = {
    "vocab_size": 151936,
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
}


# Each sub-config: the model type assumed when a dict names none, and the defaults when none is given.
SUB_CONFIG_DEFAULTS = {
    "vision_config": ("clip_vision_model", CLIP_VIT_L_336),
    "text_config": ("qwen2", QWEN2_0_5B),
}


def built_sub_config(value: dict | PreTrainedConfig | None, model_type: str, defaults: dict) -> PreTrainedConfig:
    """A sub-config from what was given, as `SubConfigSpec` builds it on transformers that have it (>= 5.24)."""
    if isinstance(value, PreTrainedConfig):
        return value
    from transformers import CONFIG_MAPPING

    value = dict(defaults) if value is None else dict(value)
    return CONFIG_MAPPING[value.get("model_type", model_type)](**value)


def vocabulary_entry_ids(entry: int | list[int]) -> list[int]:
    """The LLM token ids behind one shared-vocabulary entry: one id, or the sub-tokens it is composed of."""
    return [entry] if isinstance(entry, int) else list(entry)


@strict
class LangBridgeConfig(PreTrainedConfig):
    r"""
    Configuration of a LangBridge vision-language model (Liao et al., ICCV 2025, arXiv 2503.19404).

    Each visual token is `coefficients @ E`, where the coefficients come from an MLP over the vision
    features and `E` is the LLM's own input embeddings of a shared vocabulary of `shared_vocab_size`
    tokens. The defaults describe CLIP ViT-L/14-336 + Qwen2-0.5B with the paper's T = 19,200, H = 5,120.

    Args:
        vision_config: config of any transformers vision model (CLIP, SigLIP, ...).
        text_config: config of any transformers causal LM (Qwen2, Llama, ...).
        projector_hidden_size: H, the width of the projector MLP.
        projector_hidden_act: activation between the first two projector layers.
        shared_vocab_size: T, the number of shared-vocabulary tokens (taken from `vocab_token_ids` when given).
        vocab_token_ids: for each shared-vocabulary token, its id in the LLM's tokenizer, or a list of
            sub-token ids when the LLM lacks the token and its embedding is composed from its pieces.
        coefficient_activation: `"none"` mixes embeddings with the raw logits (the official code, and the
            numerics of its released checkpoints); `"softmax"` turns them into a distribution (the paper's text).
        combine_in_float32: outside mixed precision, compute `coefficients @ E` in float32 whatever the model dtype
            (the official numerics; TF32 on CUDA). Under autocast the products run in the step's compute dtype with
            float32 accumulation, like every other layer (see projection_langbridge.py).
        frozen_vocab_embeddings: keep a stored copy of `E` instead of reading the LLM's embeddings. Only for
            converted official checkpoints whose SFT moved the LLM's embeddings away from the frozen matrix
            the official code mixed visual tokens with; everything else reads `E` live.
        vision_feature_layer: hidden-state index (or indices, concatenated) of the vision tower to use.
        vision_feature_select_strategy: `"default"` drops the first token (CLIP's CLS); `"full"` keeps all.
        image_token_id: id of the `<image>` placeholder token in the LLM's tokenizer.
        image_seq_length: visual tokens per image, or per view when tiled (informative: the processor counts them
            from the image).
        image_grid_pinpoints: tiling (LLaVA-NeXT "anyres"): the [height, width] grid resolutions in pixels (multiples
            of the tower's input size) an image is fitted to and cut into tiles of, after a base view of the whole
            image. None (the default) is a single view, as before tiling existed.
        vision_aspect_ratio: with tiling, `"anyres"` or `"anyres_max_N"` (shrink the tiled map to about N tiles).
        patch_merge_type: with tiling, how tiles become tokens: `"spatial_unpad"` (LLaVA-NeXT: padding cut away, a
            learned `image_newline` after every row), `"spatial"` or `"flat"` (see tiling_langbridge.py).
        vision_model_name_or_path / language_model_name_or_path: where the two parts came from.
    """

    model_type = "langbridge"
    if SubConfigSpec is not None:
        sub_configs_defaults = {
            key: SubConfigSpec(config_class=AutoConfig, model_type=model_type, init_kwargs=defaults)
            for key, (model_type, defaults) in SUB_CONFIG_DEFAULTS.items()
        }
    else:  # transformers < 5.24: declared by class, built in `__post_init__`
        sub_configs = dict.fromkeys(SUB_CONFIG_DEFAULTS, AutoConfig)

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    projector_hidden_size: int = 5120
    projector_hidden_act: str = "gelu"
    shared_vocab_size: int | None = None
    vocab_token_ids: list[int | list[int]] | None = None
    coefficient_activation: Literal["none", "softmax"] = "none"
    combine_in_float32: bool = True
    frozen_vocab_embeddings: bool = False
    vision_feature_layer: int | list[int] = -2
    vision_feature_select_strategy: Literal["default", "full"] = "default"
    image_token_id: int = 151646
    image_seq_length: int = 576
    image_grid_pinpoints: list[list[int]] | None = None
    vision_aspect_ratio: str = "anyres"
    patch_merge_type: Literal["spatial_unpad", "spatial", "flat"] = "spatial_unpad"
    tie_word_embeddings: bool = False
    vision_model_name_or_path: str | None = None
    language_model_name_or_path: str | None = None

    def __post_init__(self, **kwargs):
        if SubConfigSpec is None:
            for key, (model_type, defaults) in SUB_CONFIG_DEFAULTS.items():
                setattr(self, key, built_sub_config(getattr(self, key), model_type, defaults))
        super().__post_init__(**kwargs)
        # Like LLaVA: the LLM decides whether its output head shares the input embeddings.
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True
        if self.shared_vocab_size is None:
            self.shared_vocab_size = 19200 if self.vocab_token_ids is None else len(self.vocab_token_ids)
        self.check_settings()
        if not 0 <= self.image_token_id < self.text_config.vocab_size:
            raise ValueError(
                f"image_token_id {self.image_token_id} is outside the LLM's vocabulary (text_config.vocab_size = "
                f"{self.text_config.vocab_size}). Add the image token to the tokenizer, resize the LLM's embeddings "
                "if needed, and pass its id (with langbridge-hf installed, `langbridge compose` does all three)."
            )
        self.check_vocab_token_ids(self.vocab_token_ids)

    def check_settings(self) -> None:
        """Refuse sizes and layers the model cannot be built or run with, when they are given rather than at forward."""
        for name in ("shared_vocab_size", "projector_hidden_size", "image_seq_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number of at least 1, not {value!r}.")
        num_layers = getattr(self.vision_config, "num_hidden_layers", None)
        layers = (
            [self.vision_feature_layer]
            if isinstance(self.vision_feature_layer, int)
            else list(self.vision_feature_layer)
        )
        if not layers:
            raise ValueError("vision_feature_layer is an empty list; give a layer index such as -2.")
        if num_layers is not None:
            outside = [layer for layer in layers if not -(num_layers + 1) <= layer <= num_layers]
            if outside:
                raise ValueError(
                    f"vision_feature_layer {outside[0]} does not exist: the vision tower has {num_layers} layers, so "
                    f"hidden-state indices run from {-(num_layers + 1)} to {num_layers} (-2 is the paper's)."
                )
        if self.tiling:
            check_tiling(
                self.image_grid_pinpoints,
                self.vision_config.image_size,
                self.vision_aspect_ratio,
                self.patch_merge_type,
            )

    @property
    def tiling(self) -> bool:
        """Whether images are tiled (LLaVA-NeXT anyres) rather than seen as one view."""
        return self.image_grid_pinpoints is not None

    @property
    def uses_image_newline(self) -> bool:
        """Whether the model has the learned `image_newline` row embedding (tiling with `spatial_unpad`)."""
        return self.tiling and self.patch_merge_type == "spatial_unpad"

    def check_vocab_token_ids(self, vocab_token_ids: list[int | list[int]] | None) -> None:
        """Refuse shared-vocabulary ids that this LLM cannot embed, naming the offenders and the fix."""
        if vocab_token_ids is None:
            return
        if len(vocab_token_ids) != self.shared_vocab_size:
            raise ValueError(
                f"vocab_token_ids has {len(vocab_token_ids)} entries but shared_vocab_size is "
                f"{self.shared_vocab_size}: the projector's output layer must have one row per token. "
                "Pass matching values (or leave shared_vocab_size unset to take it from the ids)."
            )
        llm_vocab_size = self.text_config.vocab_size
        outside, empty = [], []
        for position, entry in enumerate(vocab_token_ids):
            ids = vocabulary_entry_ids(entry)
            if not ids:
                empty.append(position)
            outside.extend((position, i) for i in ids if not 0 <= i < llm_vocab_size)
        if empty:
            raise ValueError(
                f"Shared-vocabulary entries {empty[:5]} are empty lists; a composed token needs at least one sub-token id."
            )
        if outside:
            shown = ", ".join(f"entry {p}: id {i}" for p, i in outside[:5])
            raise ValueError(
                f"{len(outside)} shared-vocabulary token ids are outside the LLM's vocabulary "
                f"(text_config.vocab_size = {llm_vocab_size}): {shown}. These ids belong to another tokenizer; "
                "map the vocabulary onto this LLM's tokenizer (its ids for the same token strings) instead of copying "
                "ids between LLMs; with langbridge-hf installed, `langbridge transfer` or `langbridge compose --vocab` "
                "do it."
            )
        if any(self.image_token_id in vocabulary_entry_ids(e) for e in vocab_token_ids):
            raise ValueError(
                f"The image placeholder id {self.image_token_id} is in the shared vocabulary; placeholders are "
                "replaced by visual tokens and have no meaningful embedding. Remove it from the vocabulary."
            )


__all__ = ["LangBridgeConfig"]
