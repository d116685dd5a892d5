"""LangBridge configuration: a vision tower, a causal LLM and the vocabulary bridge between them.

Every setting is checked for type and range when it is set, and refused in one sentence naming it and what it
accepts; a saved folder's or Hub repo's config.json is named too (`from_pretrained`, the Auto classes).

This file travels with checkpoints as remote code: it imports only `transformers` and its siblings.
"""

from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.activations import ACT2FN
from transformers.utils import logging

from .compatibility_langbridge import SubConfigSpec
from .errors_langbridge import LangBridgeInputError
from .tiling_langbridge import PATCH_MERGE_TYPES, check_tiling, check_untiled, untiled_settings

logger = logging.get_logger(__name__)

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


def _whole(value, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _layer(value) -> bool:
    return _whole(value, -(10**6)) or (
        isinstance(value, (list, tuple)) and len(value) > 0 and all(_whole(v, -(10**6)) for v in value)
    )


def _vocabulary_ids(value) -> bool:
    """A list of ids or of lists of ids; their range is checked against the LLM (`check_vocab_token_ids`)."""

    def integer(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    return value is None or (
        isinstance(value, (list, tuple))
        and all(integer(e) or (isinstance(e, (list, tuple)) and all(map(integer, e))) for e in value)
    )


def _pinpoints(value) -> bool:
    return value is None or (
        isinstance(value, (list, tuple))
        and all(isinstance(p, (list, tuple)) and len(p) == 2 and all(_whole(n, 1) for n in p) for p in value)
    )


def _flag(value) -> bool:
    return isinstance(value, bool)


def _name(value) -> bool:
    return value is None or isinstance(value, str)


# Each setting's check and what it accepts, in words; applied whenever the setting is set (so also to every value a
# config.json or a hub config holds) before huggingface_hub's own type check, so the refusal is one sentence of ours.
SETTING_RULES = {
    "projector_hidden_size": (lambda v: _whole(v, 1), "a whole number of at least 1, such as 5120"),
    "shared_vocab_size": (
        lambda v: v is None or _whole(v, 1),
        "a whole number of at least 1, such as 19200 (or null: as many as vocab_token_ids)",
    ),
    "image_seq_length": (lambda v: _whole(v, 1), "a whole number of at least 1, such as 576"),
    "image_token_id": (lambda v: _whole(v, 0), "a token id, a whole number of at least 0"),
    "projector_hidden_act": (
        lambda v: isinstance(v, str) and v in ACT2FN,
        "the name of an activation transformers knows, such as 'gelu' or 'silu'",
    ),
    "coefficient_activation": (lambda v: v in ("none", "softmax"), "'none' or 'softmax'"),
    "combine_in_float32": (_flag, "true or false"),
    "frozen_vocab_embeddings": (_flag, "true or false"),
    "tie_word_embeddings": (_flag, "true or false"),
    "vision_feature_layer": (_layer, "a layer index such as -2, or a non-empty list of them"),
    "vision_feature_select_strategy": (lambda v: v in ("default", "full"), "'default' (drop CLS) or 'full'"),
    "vocab_token_ids": (_vocabulary_ids, "null or a list of token ids (whole numbers, or lists of them)"),
    "image_grid_pinpoints": (_pinpoints, "null or a list of [height, width] pairs of whole numbers of pixels"),
    "vision_aspect_ratio": (lambda v: isinstance(v, str), "'anyres' or 'anyres_max_N'"),
    "patch_merge_type": (lambda v: v in PATCH_MERGE_TYPES, " or ".join(map(repr, PATCH_MERGE_TYPES))),
    "vision_model_name_or_path": (_name, "null or a path or Hub id (text)"),
    "language_model_name_or_path": (_name, "null or a path or Hub id (text)"),
}


def check_setting(name: str, value) -> None:
    """Refuse a value of the wrong type or out of range for one of LangBridge's own settings."""
    rule = SETTING_RULES.get(name)
    if rule is not None and not rule[0](value):
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise LangBridgeInputError(f"{name} must be {rule[1]}, not {shown}.")


def config_file_of(name_or_path) -> str | None:
    """How to name where a config came from: the config.json of a folder, a JSON file, or a Hub id's config.json."""
    if name_or_path is None or str(name_or_path) == "":
        return None
    path = Path(str(name_or_path)).expanduser()
    if path.is_dir():
        return str(path / "config.json")
    if path.is_file():
        return str(path)
    return f"{name_or_path} (config.json)"


@contextmanager
def settings_from(where: str | None):
    """A setting refused while a config is read names the file it came from (`where`); huggingface_hub's type errors
    (of the base config's and the sub-configs' settings) become one sentence too."""
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:  # pragma: no cover - older huggingface_hub
        StrictDataclassError = ()
    try:
        yield
    except LangBridgeInputError as error:
        if where is None or str(error).startswith(where):
            raise
        raise LangBridgeInputError(f"{where}: {error}") from error
    except StrictDataclassError as error:
        cause = error.__cause__ or error
        message = " ".join(str(cause).split())
        raise LangBridgeInputError(f"{where}: {message}" if where else message) from error


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
            raise LangBridgeInputError(
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
                raise LangBridgeInputError(f"{name} must be a whole number of at least 1, not {value!r}.")
        num_layers = getattr(self.vision_config, "num_hidden_layers", None)
        layers = (
            [self.vision_feature_layer]
            if isinstance(self.vision_feature_layer, int)
            else list(self.vision_feature_layer)
        )
        if not layers:
            raise LangBridgeInputError("vision_feature_layer is an empty list; give a layer index such as -2.")
        if num_layers is not None:
            outside = [layer for layer in layers if not -(num_layers + 1) <= layer <= num_layers]
            if outside:
                raise LangBridgeInputError(
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
        else:
            check_untiled(self.vision_aspect_ratio, self.patch_merge_type)

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """A config from a loaded config.json (the Auto classes come through here, with the folder as
        `name_or_path`). A refused setting names the file. Tiling settings saved without a grid (older versions
        accepted them; they never did anything) are dropped with a warning, so such folders still load."""
        where = config_file_of(kwargs.get("name_or_path"))
        if config_dict.get("image_grid_pinpoints") is None:
            stray = untiled_settings(config_dict.get("vision_aspect_ratio"), config_dict.get("patch_merge_type"))
            if stray:
                logger.warning(
                    f"{where or 'A LangBridge config'} sets {' and '.join(stray)} without image_grid_pinpoints: "
                    "the model sees one view per image, so they have no effect and are ignored."
                )
                config_dict = {
                    k: v for k, v in config_dict.items() if k not in ("vision_aspect_ratio", "patch_merge_type")
                }
        with settings_from(where):
            return super().from_dict(config_dict, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """`PreTrainedConfig.from_pretrained`; a refused setting names the config.json it came from."""
        with settings_from(config_file_of(pretrained_model_name_or_path)):
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

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
            raise LangBridgeInputError(
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
            raise LangBridgeInputError(
                f"Shared-vocabulary entries {empty[:5]} are empty lists; a composed token needs at least one sub-token id."
            )
        if outside:
            shown = ", ".join(f"entry {p}: id {i}" for p, i in outside[:5])
            raise LangBridgeInputError(
                f"{len(outside)} shared-vocabulary token ids are outside the LLM's vocabulary "
                f"(text_config.vocab_size = {llm_vocab_size}): {shown}. These ids belong to another tokenizer; "
                "map the vocabulary onto this LLM's tokenizer (its ids for the same token strings) instead of copying "
                "ids between LLMs; with langbridge-hf installed, `langbridge transfer` or `langbridge compose --vocab` "
                "do it."
            )
        if any(self.image_token_id in vocabulary_entry_ids(e) for e in vocab_token_ids):
            raise LangBridgeInputError(
                f"The image placeholder id {self.image_token_id} is in the shared vocabulary; placeholders are "
                "replaced by visual tokens and have no meaningful embedding. Remove it from the vocabulary."
            )


_strict_setattr = LangBridgeConfig.__setattr__


def _checked_setattr(self, name, value):
    """Our own check of a setting first (one sentence naming it and what it accepts), then huggingface_hub's."""
    check_setting(name, value)
    _strict_setattr(self, name, value)


LangBridgeConfig.__setattr__ = _checked_setattr


__all__ = ["LangBridgeConfig"]
