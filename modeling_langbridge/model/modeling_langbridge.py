"""LangBridge: visual tokens built from the LLM's own vocabulary embeddings.

    pixel_values -> vision tower -> selected layer (CLS dropped where the tower has one)
                 -> LangBridgeProjector: MLP -> coefficients over T shared-vocabulary tokens -> coefficients @ E
                 -> scattered into the <image> placeholder positions -> causal LLM

`E` is never stored: the projector keeps the T token ids and calls the LLM's input-embedding module on
them at every forward, so it stays right when that module is sharded (ZeRO-3, FSDP), trained, wrapped by
PEFT, or swapped for another LLM's (transfer = new ids). Module names follow LLaVA
(`model.vision_tower`, `model.multi_modal_projector`, `model.language_model`, `lm_head`) so PEFT target
regexes, TRL and quantization skip lists work unchanged.

This file travels with checkpoints as remote code: it imports only `transformers` and its siblings.
"""

import math
import re
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub
import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.processing_utils import Unpack
from transformers.utils.generic import TransformersKwargs, can_return_tuple

from .compatibility_langbridge import (
    CACHE_ARGUMENT,
    MultimodalBaseModelOutputWithPast,
    MultimodalCausalLMOutputWithPast,
    accepts_cache_argument,
    cache_of,
    slice_logits_to_keep,
)
from .configuration_langbridge import LangBridgeConfig, vocabulary_entry_ids
from .errors_langbridge import LangBridgeInputError
from .projection_langbridge import (
    FoldedCache,
    autocast_off,
    combination_dtype,
    folded_matrices,
    folding_pays,
    linear_combination,
    naive_combination,
    softmax_combination,
    tf32_products,
)
from .tiling_langbridge import tiled_layout


def vocabulary_buffers(
    vocab_token_ids: list | None, vocab_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tensors for the shared vocabulary: one id per token, plus the rows composed from several sub-tokens.

    Returns `(token_ids [T], composed_rows [C], composed_token_ids [C, K] padded with -1)`. For a composed
    row, `token_ids` holds its first sub-token only; `vocab_embeddings` overwrites that row with the mean.
    """
    if vocab_token_ids is None:
        return (
            torch.zeros(vocab_size, dtype=torch.long),
            torch.zeros(0, dtype=torch.long),
            torch.zeros(0, 1, dtype=torch.long),
        )
    token_ids = torch.tensor([vocabulary_entry_ids(e)[0] for e in vocab_token_ids], dtype=torch.long)
    composed = [(row, e) for row, e in enumerate(vocab_token_ids) if not isinstance(e, int) and len(e) > 1]
    width = max((len(ids) for _, ids in composed), default=1)
    composed_ids = torch.full((len(composed), width), -1, dtype=torch.long)
    for n, (_, ids) in enumerate(composed):
        composed_ids[n, : len(ids)] = torch.tensor(ids)
    composed_rows = torch.tensor([row for row, _ in composed], dtype=torch.long)
    return token_ids, composed_rows, composed_ids


def hub_kernels_wanted(use_kernels: bool | None = None) -> bool:
    """transformers' `use_kernels` for a load: as asked, and by default only when the Hub may be reached.

    transformers >= 5.25 fetches Hub kernels (e.g. `kernels-community/rotary`) on CUDA unless told otherwise, which
    fails every load on an offline GPU machine (`HF_HUB_OFFLINE=1`) whose cache lacks them. Asked for explicitly
    (`True`), they come from the local cache when offline. `USE_HUB_KERNELS=0` still turns them off everywhere.
    """
    if use_kernels is not None:
        return bool(use_kernels)
    return not huggingface_hub.is_offline_mode()


def prefill_without_images_check(cache: Cache | None) -> bool:
    """Whether to look for `<image>` placeholders that no image fills: at prefill (an empty cache), in eager mode.
    A decode step may generate the placeholder's id, and a compiled step cannot branch on tensor data, so neither
    looks (that keeps the decode step one graph, as transformers' static-cache and compiled generation need)."""
    if torch.compiler.is_compiling():
        return False
    return cache is None or cache.get_seq_length() == 0


class LangBridgeProjector(nn.Module):
    """Vision features -> coefficients over the shared vocabulary -> the same mix of the LLM's embeddings.

    `h = Linear(Dv, H) -> act -> Linear(H, H) -> Linear(H, T)`; coefficients are `h` (official code) or
    `softmax(h)` (the paper's text); the visual token is `coefficients @ E`. The forward pass computes that
    without [tokens x T] tensors (see projection_langbridge.py); `coefficients` gives them when asked.
    """

    softmax_chunk_tokens: int | None = None  # None: as many tokens as the device's memory budget holds

    def __init__(self, config: LangBridgeConfig):
        super().__init__()
        num_feature_layers = 1 if isinstance(config.vision_feature_layer, int) else len(config.vision_feature_layer)
        hidden = config.projector_hidden_size
        self.linear_1 = nn.Linear(config.vision_config.hidden_size * num_feature_layers, hidden)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(hidden, hidden)
        self.vocab_proj = nn.Linear(hidden, config.shared_vocab_size)
        self.coefficient_activation = config.coefficient_activation
        self.combine_in_float32 = config.combine_in_float32
        self.has_vocabulary = config.vocab_token_ids is not None
        token_ids, composed_rows, composed_token_ids = vocabulary_buffers(
            config.vocab_token_ids, config.shared_vocab_size
        )
        self.register_buffer("vocab_token_ids", token_ids, persistent=False)
        self.register_buffer("composed_rows", composed_rows, persistent=False)
        self.register_buffer("composed_token_ids", composed_token_ids, persistent=False)
        # Official-checkpoint fidelity only (see `LangBridgeConfig.frozen_vocab_embeddings`): a saved copy of E.
        frozen = (
            torch.zeros(config.shared_vocab_size, config.text_config.hidden_size)
            if config.frozen_vocab_embeddings
            else None
        )
        self.register_buffer("frozen_embeddings", frozen, persistent=True)
        self.embedding_width = config.text_config.hidden_size
        self.folded_cache = FoldedCache()

    def train(self, mode: bool = True):
        self.folded_cache.clear()  # training changes W, b and E: the inference cache starts afresh afterwards
        return super().train(mode)

    def hidden_states(self, image_features: torch.Tensor) -> torch.Tensor:
        """`Linear(Dv, H) -> act -> Linear(H, H)`: the [..., H] input of the vocabulary layer."""
        # The projector may be kept in another dtype than the tower (e.g. float32 in a bf16 QLoRA run).
        if reads_parameters(self.linear_1):
            image_features = image_features.to(self.linear_1.weight.dtype)
        return self.linear_2(self.act(self.linear_1(image_features)))

    def coefficients(self, image_features: torch.Tensor) -> torch.Tensor:
        """Per visual token, the weight of each shared-vocabulary token: [..., T]. Computed only when asked
        (interpretation); the forward pass never forms them."""
        return self.activated(self.vocab_proj(self.hidden_states(image_features)))

    def activated(self, logits: torch.Tensor) -> torch.Tensor:
        """The coefficients from the vocabulary layer's logits (float32 when `combine_in_float32`)."""
        if self.combine_in_float32:
            logits = logits.float()
        return logits.softmax(dim=-1) if self.coefficient_activation == "softmax" else logits

    def vocab_embeddings(self, embed_tokens: nn.Module) -> torch.Tensor:
        """E [T, D], fetched through the LLM's embedding module; composed tokens are their sub-tokens' mean."""
        if self.frozen_embeddings is not None:
            return self.frozen_embeddings
        if not self.has_vocabulary:
            raise LangBridgeInputError(
                "This LangBridge model has no shared-vocabulary token ids (config.vocab_token_ids is None), so its "
                "visual tokens cannot be formed. Build it with its LLM (with langbridge-hf installed: `langbridge "
                "compose` or `langbridge transfer`), or set config.vocab_token_ids to the LLM's ids of the shared "
                "vocabulary."
            )
        embeddings = embed_tokens(self.vocab_token_ids)
        if self.composed_rows.numel():
            present = self.composed_token_ids >= 0
            pieces = embed_tokens(self.composed_token_ids.clamp(min=0)) * present.unsqueeze(-1).to(embeddings.dtype)
            means = pieces.sum(dim=1) / present.sum(dim=1, keepdim=True).to(embeddings.dtype)
            embeddings = embeddings.index_copy(0, self.composed_rows, means)
        return embeddings

    def forward(self, image_features: torch.Tensor, embed_tokens: nn.Module) -> torch.Tensor:
        """Visual tokens `coefficients @ E` [..., D], in the embeddings' dtype. The products run in the step's
        compute dtype (`combination_dtype`: the autocast dtype under mixed precision; float32, TF32 on CUDA, when
        `combine_in_float32`), with float32 accumulation and float32 softmax statistics."""
        hidden = self.hidden_states(image_features)
        dtype = combination_dtype(hidden, self.combine_in_float32)
        with autocast_off(hidden), tf32_products(hidden.device, dtype):
            return self.combine(hidden, embed_tokens, dtype)

    def combine(self, hidden: torch.Tensor, embed_tokens: nn.Module, dtype: torch.dtype) -> torch.Tensor:
        """`coefficients(hidden) @ E` computed in `dtype`, without forming the coefficients where the vocabulary
        layer's parameters can be read; by calling the layer where they cannot (`reads_parameters`)."""
        if not reads_parameters(self.vocab_proj):
            return self.combine_by_calling(hidden, embed_tokens, dtype)
        weight, bias = self.vocab_proj.weight.to(dtype), self.vocab_proj.bias.to(dtype)
        if self.coefficient_activation == "softmax":
            embeddings = self.vocab_embeddings(embed_tokens)
            visual_tokens = softmax_combination(
                hidden.to(dtype), weight, bias, embeddings.to(dtype), self.softmax_chunk_tokens
            )
            return visual_tokens.to(embeddings.dtype)

        sources = [
            self.vocab_proj.weight,
            self.vocab_proj.bias,
            self.vocab_token_ids,
            self.composed_token_ids,
            *([self.frozen_embeddings] if self.frozen_embeddings is not None else embed_tokens.parameters()),
        ]
        cacheable = not self.training and FoldedCache.usable(*sources)
        training = torch.is_grad_enabled() and any(t.requires_grad for t in sources)
        embeddings_trained = training and any(t.requires_grad for t in sources[4:])
        tokens = hidden.numel() // hidden.shape[-1]
        if not cacheable and not folding_pays(
            tokens, *self.vocab_proj.weight.shape, self.embedding_width, training, embeddings_trained
        ):
            embeddings = self.vocab_embeddings(embed_tokens)  # few tokens: the literal product is cheaper than folding
            return naive_combination(hidden.to(dtype), weight, bias, embeddings.to(dtype), "none").to(embeddings.dtype)

        def fold():
            embeddings = self.vocab_embeddings(embed_tokens)
            return (*folded_matrices(weight, bias, embeddings.to(dtype)), embeddings.dtype)

        mixed, shift, embeddings_dtype = self.folded_cache.get(sources, fold) if cacheable else fold()
        return linear_combination(hidden.to(dtype), mixed, shift).to(embeddings_dtype)

    def combine_by_calling(self, hidden: torch.Tensor, embed_tokens: nn.Module, dtype: torch.dtype) -> torch.Tensor:
        """The literal `activation(vocab_proj(hidden)) @ E`, calling the layer: for layers whose parameters are held
        in another form (an inference engine's, quantized, sharded), at the cost of [tokens x T] coefficients."""
        embeddings = self.vocab_embeddings(embed_tokens)
        coefficients = self.activated(self.vocab_proj(hidden))
        return (coefficients.to(dtype) @ embeddings.to(dtype)).to(embeddings.dtype)


def reads_parameters(layer: nn.Module) -> bool:
    """Whether a forward may read this layer's `weight` and `bias` directly instead of calling it: only for a plain
    `nn.Linear` whose weight has its full shape. An inference engine replaces linear layers with its own (vLLM's CPU
    build packs the weight for oneDNN and leaves `weight` empty), quantized layers hold packed weights, and ZeRO-3
    keeps a layer's weight empty until the layer itself runs: all of these must be called."""
    if type(layer) is not nn.Linear:
        return False
    weight = layer.weight
    return tuple(weight.shape) == (layer.out_features, layer.in_features) and weight.device.type != "meta"


class VisualTokensMixin:
    """`image_hidden_states`: the visual tokens given to the LLM, all images concatenated [tokens, D]. The same
    tensors, per image, are `image_outputs.pooler_output` (transformers' name since 5.24)."""

    @property
    def image_hidden_states(self) -> torch.Tensor | None:
        if self.image_outputs is None:
            return None
        return torch.cat(list(self.image_outputs.pooler_output), dim=0)


@dataclass
class LangBridgeModelOutputWithPast(VisualTokensMixin, MultimodalBaseModelOutputWithPast):
    """Base-model outputs: the LLM's, plus `image_outputs` (vision features and, as `pooler_output`, the visual
    tokens per image)."""


@dataclass
class LangBridgeCausalLMOutputWithPast(VisualTokensMixin, MultimodalCausalLMOutputWithPast):
    """Causal-LM outputs: loss, logits, cache, plus `image_outputs` as in the base model's."""


class LangBridgePreTrainedModel(PreTrainedModel):
    config_class = LangBridgeConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = [CACHE_ARGUMENT]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True  # the decode step is one graph (see `prefill_without_images_check`)

    @classmethod
    def is_custom_code(cls) -> bool:
        """False, though these classes live outside transformers: transformers skips the initialisation of modules
        without parameters of their own in custom code (it cannot know whether such code initialised them), and
        that skips the vision tower's own scheme (CLIP sets its attention and MLP weights from those modules), so
        weights missing from a checkpoint would get the generic one. LangBridge initialises only through
        `transformers.initialization`, as transformers' own models do."""
        return False

    @classmethod
    def from_pretrained(cls, *args, use_kernels: bool | None = None, **kwargs):
        """`PreTrainedModel.from_pretrained`, with Hub kernels only when asked or reachable (`hub_kernels_wanted`):
        the Auto classes and `pipeline` load through here too."""
        return super().from_pretrained(*args, use_kernels=hub_kernels_wanted(use_kernels), **kwargs)

    def post_init(self):
        super().post_init()
        # Sub-models declare layers of classes they may not contain (a CLIP vision tower inherits CLIP's text
        # embeddings); keep the present ones so FSDP auto-wrap and device_map="auto" find every class they name.
        present = {type(module).__name__ for module in self.modules()}
        self._no_split_modules = {name for name in self._no_split_modules if name in present}

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, LangBridgeProjector):
            # Non-persistent buffers are not in the checkpoint: rebuild them from the config on every load.
            buffers = vocabulary_buffers(self.config.vocab_token_ids, self.config.shared_vocab_size)
            init.copy_(module.vocab_token_ids, buffers[0])
            init.copy_(module.composed_rows, buffers[1])
            init.copy_(module.composed_token_ids, buffers[2])
        if isinstance(module, LangBridgeModel) and module.image_newline is not None:
            init.normal_(module.image_newline, mean=0.0, std=1 / math.sqrt(self.config.text_config.hidden_size))


class LangBridgeModel(LangBridgePreTrainedModel):
    """Vision tower, LangBridge projector and LLM backbone, without the LM head (what TRL trains through)."""

    def __init__(self, config: LangBridgeConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = LangBridgeProjector(config)
        # Tiling with `spatial_unpad` only (LLaVA-NeXT's learned row end); single-view models have no such weight.
        self.image_newline = (
            nn.Parameter(torch.empty(config.text_config.hidden_size)) if config.uses_image_newline else None
        )
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_vision_features(
        self,
        pixel_values: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """The vision tower's features that feed the projector: [images, patches, Dv * layers]."""
        return self.encode_images(pixel_values, vision_feature_layer, vision_feature_select_strategy, **kwargs)[0]

    def encode_images(
        self,
        pixel_values: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, BaseModelOutputWithPooling]:
        """The projector's input features and the tower's own outputs (with every hidden state: the selected layers
        are among them)."""
        layer = self.config.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
        strategy = vision_feature_select_strategy or self.config.vision_feature_select_strategy
        layers = [layer] if isinstance(layer, int) else list(layer)
        kwargs = {k: v for k, v in kwargs.items() if k not in ("return_dict", "output_hidden_states")}
        outputs = self.vision_tower(pixel_values, output_hidden_states=True, return_dict=True, **kwargs)
        selected = [outputs.hidden_states[i] for i in layers]
        if strategy == "default":
            selected = [hidden[:, 1:] for hidden in selected]
        return torch.cat(selected, dim=-1), outputs

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor | list | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """Visual tokens per image (`pooler_output`, a list), ready for the placeholder positions, with the vision
        tower's outputs as LLaVA gives them: its `last_hidden_state`, and its `hidden_states` and `attentions` when
        asked (`output_hidden_states`, `output_attentions`); a tuple with `return_dict=False`.

        Tiled models (`config.image_grid_pinpoints`) take `pixel_values` [images, views, C, H, W] (views padded to the
        batch's largest) or [views, C, H, W], and `image_sizes` [images, 2], each image's original (height, width):
        every view goes through tower and projector, then `pack_image_features` lays them out. `generate` reads this
        signature and calls it once before the first step, so `pixel_values` and `image_sizes` stay named.
        """
        if pixel_values.shape[0] == 0:  # text only: the processor's 0-row pixel_values (so pipeline batches can mix)
            return BaseModelOutputWithPooling(last_hidden_state=pixel_values, pooler_output=[])
        self.check_pixel_values(pixel_values)
        layouts = self.tiled_layouts(image_sizes, pixel_values) if self.config.tiling else None
        if layouts is not None:
            views = [layout["views"] for layout in layouts]
            if pixel_values.dim() == 5:  # [images, views padded to the largest, C, H, W]: drop the padding views
                pixel_values = torch.cat([image[:count] for image, count in zip(pixel_values, views)], dim=0)
            elif pixel_values.shape[0] != sum(views):
                raise LangBridgeInputError(
                    f"pixel_values hold {pixel_values.shape[0]} views but the image_sizes give {sum(views)} (base view + "
                    "tiles per image); build both with this model's processor."
                )
        features, tower_outputs = self.encode_images(
            pixel_values, vision_feature_layer, vision_feature_select_strategy, **kwargs
        )
        visual_tokens = self.multi_modal_projector(features, self.get_input_embeddings())
        if layouts is None:
            pooled = list(visual_tokens)
        else:
            pooled = self.pack_image_features(list(visual_tokens.split(views)), layouts)
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        return BaseModelOutputWithPooling(
            last_hidden_state=tower_outputs.last_hidden_state,
            pooler_output=pooled,
            hidden_states=tower_outputs.hidden_states if output_hidden_states else None,
            attentions=tower_outputs.attentions,
        )

    def check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        """Refuse pixel_values the vision tower cannot take, before it fails in its own words: a tensor without the
        images dimension, or with another number of colour channels than the tower's (RGB: 3)."""
        tiled = self.config.tiling
        dims = (4, 5) if tiled else (4,)
        layout = "[images, channels, height, width]" + (" or [images, views, channels, height, width]" if tiled else "")
        if pixel_values.dim() not in dims:
            raise LangBridgeInputError(
                f"pixel_values have shape {tuple(pixel_values.shape)}, not {layout}; build them with the LangBridge "
                "processor (or add the images dimension to a single image's [channels, height, width])."
            )
        channels = getattr(self.config.vision_config, "num_channels", 3)
        if pixel_values.shape[-3] != channels:
            raise LangBridgeInputError(
                f"pixel_values have {pixel_values.shape[-3]} colour channel(s) per pixel but the vision tower takes "
                f"{channels}: build them with the LangBridge processor, which converts every image to RGB (or convert "
                "greyscale and RGBA images to RGB first)."
            )

    def tiled_layouts(self, image_sizes, pixel_values: torch.Tensor) -> list[dict]:
        """Each image's tiling (`tiling_langbridge.tiled_layout`) from its original size."""
        if image_sizes is None:
            raise LangBridgeInputError(
                "This model tiles images (config.image_grid_pinpoints), so it needs image_sizes, each image's original "
                "(height, width), beside pixel_values. Pass the image_sizes the LangBridge processor returns."
            )
        sizes = image_sizes.tolist() if isinstance(image_sizes, torch.Tensor) else [list(s) for s in image_sizes]
        if pixel_values.dim() == 5 and len(sizes) != pixel_values.shape[0]:
            raise LangBridgeInputError(
                f"pixel_values hold {pixel_values.shape[0]} images but image_sizes has {len(sizes)} sizes."
            )
        config = self.config
        side = config.vision_config.image_size // config.vision_config.patch_size
        return [
            tiled_layout(
                size,
                config.image_grid_pinpoints,
                config.vision_config.image_size,
                side,
                config.vision_aspect_ratio,
                config.patch_merge_type,
            )
            for size in sizes
        ]

    def pack_image_features(self, image_features: list[torch.Tensor], layouts: list[dict]) -> list[torch.Tensor]:
        """Per image, its views' visual tokens [views, side * side, D] -> the [tokens, D] sequence the LLM reads: the
        base view, then the tiles as `config.patch_merge_type` lays them out (LLaVA-NeXT's `spatial_unpad`: one map,
        padding cut away, shrunk for `anyres_max_N`, `image_newline` after every row)."""
        merge = self.config.patch_merge_type
        packed = []
        for features, layout in zip(image_features, layouts):
            base, tiles = features[0], features[1:]
            side = math.isqrt(base.shape[0])
            if side * side != base.shape[0]:
                raise LangBridgeInputError(
                    f"A view gives {base.shape[0]} visual tokens, not a square grid of patches: tiling needs the CLS token "
                    "dropped (vision_feature_select_strategy='default' for CLIP) or a tower without one ('full' for SigLIP)."
                )
            if merge == "flat":
                packed.append(features.flatten(0, 1))
                continue
            rows, columns = layout["grid"]
            grid = tiles.reshape(rows, columns, side, side, -1)
            if merge == "spatial":
                packed.append(torch.cat([base, grid.permute(0, 2, 1, 3, 4).flatten(0, 3)], dim=0))
                continue
            feature_map = grid.permute(4, 0, 2, 1, 3).flatten(1, 2).flatten(2, 3)  # [D, rows * side, columns * side]
            top, bottom, left, right = layout["bounds"]
            feature_map = feature_map[:, top:bottom, left:right]
            if tuple(layout["map"]) != tuple(feature_map.shape[1:]):  # anyres_max_N: shrunk to about N tiles
                feature_map = nn.functional.interpolate(feature_map[None], list(layout["map"]), mode="bilinear")[0]
            newline = self.image_newline[:, None, None].to(feature_map.device, feature_map.dtype)
            feature_map = torch.cat([feature_map, newline.expand(-1, feature_map.shape[1], 1)], dim=-1)
            packed.append(torch.cat([base, feature_map.flatten(1, 2).transpose(0, 1)], dim=0))
        return packed

    def get_placeholder_mask(self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """Boolean [batch, seq] mask of the `<image>` placeholder positions."""
        if input_ids is not None:
            return input_ids == self.config.image_token_id
        image_token = torch.tensor(self.config.image_token_id, device=inputs_embeds.device)
        return (inputs_embeds == self.get_input_embeddings()(image_token)).all(-1)

    def check_placeholders(self, placeholder_mask: torch.Tensor, visual_tokens: list[torch.Tensor]) -> None:
        """Refuse inputs whose placeholders and images disagree, saying how to build them instead."""
        n_placeholders = int(placeholder_mask.sum())
        n_images = len(visual_tokens)
        n_visual = sum(tokens.shape[0] for tokens in visual_tokens)
        if n_placeholders == n_visual:
            return
        per_image = visual_tokens[0].shape[0] if visual_tokens else 0
        takes = f"the {per_image} tokens an image takes"
        if n_placeholders == 0:
            problem = f"{n_images} image(s) were given (pixel_values) but input_ids hold no <image> placeholder"
        elif self.config.tiling:  # tiled images differ in size, so in tokens
            takes = "the tokens each image takes (tiled: it depends on the image's size)"
            problem = (
                f"input_ids hold {n_placeholders} <image> placeholder tokens but the {n_images} image(s) given make "
                f"{n_visual} visual tokens ({', '.join(str(t.shape[0]) for t in visual_tokens[:8])})"
            )
        else:
            problem = (
                f"input_ids hold {n_placeholders} <image> placeholder tokens (room for {n_placeholders / per_image:g} "
                f"image(s) of {per_image} tokens) but {n_images} image(s) were given, i.e. {n_visual} visual tokens"
            )
        raise LangBridgeInputError(
            f"{problem}. Put one <image> in the text per image and build the inputs with the LangBridge processor, "
            f"which expands each <image> into {takes} (and refuses a truncation that would cut them)."
        )

    @can_return_tuple
    @accepts_cache_argument
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        image_sizes: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> LangBridgeModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise LangBridgeInputError("Pass exactly one of input_ids or inputs_embeds.")
        if (input_ids if input_ids is not None else inputs_embeds[..., 0]).numel() == 0:
            raise LangBridgeInputError(
                "The prompt is empty (input_ids hold no tokens): give at least one token, e.g. a chat built with the "
                "processor's chat template, which adds the turn markers."
            )
        if pixel_values is not None and mm_encoder_outputs is not None and mm_encoder_outputs.get("image") is not None:
            raise LangBridgeInputError("Pass either pixel_values or precomputed mm_encoder_outputs, not both.")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        image_outputs = (mm_encoder_outputs or {}).get("image")
        if pixel_values is not None and pixel_values.shape[0] == 0:  # text only (the processor's 0-row pixel_values)
            pixel_values = None
        if image_outputs is not None and len(image_outputs.pooler_output) == 0:
            image_outputs = None
        if image_outputs is None and pixel_values is not None:
            image_outputs = self.get_image_features(
                pixel_values,
                image_sizes=image_sizes,
                vision_feature_layer=vision_feature_layer,
                vision_feature_select_strategy=vision_feature_select_strategy,
                return_dict=True,
            )

        placeholder_mask = self.get_placeholder_mask(input_ids, inputs_embeds)
        if image_outputs is not None:
            visual_tokens = image_outputs.pooler_output
            self.check_placeholders(placeholder_mask, visual_tokens)
            image_tokens = torch.cat(list(visual_tokens), dim=0).to(inputs_embeds.device, inputs_embeds.dtype)
            inputs_embeds = inputs_embeds.masked_scatter(placeholder_mask.unsqueeze(-1), image_tokens)
        elif prefill_without_images_check(cache) and placeholder_mask.any():
            raise LangBridgeInputError(
                f"input_ids hold {int(placeholder_mask.sum())} <image> placeholder tokens but no image was given. "
                "Pass pixel_values from the LangBridge processor, or remove the <image> placeholders for text-only input."
            )

        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **{CACHE_ARGUMENT: cache},
            **kwargs,
        )
        return LangBridgeModelOutputWithPast(**outputs, image_outputs=image_outputs)


class LangBridgeForConditionalGeneration(LangBridgePreTrainedModel, GenerationMixin):
    """LangBridge with the LM head: chat, generation with KV cache, and a loss that skips image and padding."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    # Tensor parallel: the LLM's own plan shards its layers and the (often tied) embeddings by vocabulary rows; the head
    # is sharded the same way and its logits gathered, as LLaVA does.
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: LangBridgeConfig):
        super().__init__(config)
        self.model = LangBridgeModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        return self.model.get_image_features(pixel_values, **kwargs)

    @can_return_tuple
    @accepts_cache_argument
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        image_sizes: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> LangBridgeCausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy,
            mm_encoder_outputs=mm_encoder_outputs,
            image_sizes=image_sizes,
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        logits = self.lm_head(hidden_states)

        loss = None
        if labels is not None:
            labels = self.mask_untrainable_labels(labels, attention_mask)
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )

        return LangBridgeCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=outputs.image_outputs,
            **{CACHE_ARGUMENT: cache_of(outputs)},
        )

    def prepare_inputs_for_generation(self, input_ids, is_first_iteration: bool | None = False, **kwargs):
        # As the draft model of assisted decoding, `generate` never flags the first call as the first iteration, so
        # the images would be dropped while the prompt still holds their placeholders. A call on an empty cache is a
        # prefill: it gets the images. (The cache comes as `cache`, or `past_key_values` before transformers 5.24.)
        cache = kwargs.get(CACHE_ARGUMENT)
        prefill = bool(is_first_iteration) or cache is None or cache.get_seq_length() == 0
        return super().prepare_inputs_for_generation(input_ids, is_first_iteration=prefill, **kwargs)

    def mask_untrainable_labels(
        self, labels: torch.LongTensor, attention_mask: torch.Tensor | None
    ) -> torch.LongTensor:
        """Never train on image placeholders or padding, even when labels are a plain copy of input_ids."""
        untrainable = labels == self.config.image_token_id
        if attention_mask is not None and attention_mask.shape == labels.shape:
            untrainable |= attention_mask == 0
        return labels.masked_fill(untrainable, -100)

    def save_pretrained(self, save_directory, *args, **kwargs):
        if self._auto_class is not None:  # remote code: let AutoModel load the backbone from the folder too
            self.config.auto_map = {
                **(getattr(self.config, "auto_map", None) or {}),
                "AutoModel": "modeling_langbridge.LangBridgeModel",
            }
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            write_model_card(self.config, Path(save_directory))


def write_model_card(config: LangBridgeConfig, folder: Path) -> None:
    """A Hub model card (README.md) for a saved folder, unless the folder already has one."""
    card = folder / "README.md"
    if card.exists():
        return
    sources = (config.language_model_name_or_path, config.vision_model_name_or_path)
    base_models = [m for m in sources if m and re.fullmatch(r"[\w.-]+/[\w.-]+", m) and not Path(m).exists()]
    base_model_yaml = "".join(f"\n- {m}" for m in base_models)
    vision = Path(config.vision_model_name_or_path or config.vision_config.model_type).name
    language = Path(config.language_model_name_or_path or config.text_config.model_type).name
    card.write_text(
        f"""---
library_name: transformers
pipeline_tag: image-text-to-text
tags:
- langbridge
- vision-language{chr(10) + "base_model:" + base_model_yaml if base_models else ""}
---

# LangBridge: {vision} + {language}

A [LangBridge](https://arxiv.org/abs/2503.19404) vision-language model: each visual token is a combination
of the LLM's own input embeddings over a shared vocabulary of {config.shared_vocab_size} tokens
(projector hidden size {config.projector_hidden_size}, coefficients: `{config.coefficient_activation}`).

```python
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

model = AutoModelForImageTextToText.from_pretrained("{folder.name}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{folder.name}", trust_remote_code=True)
# or
chat = pipeline("image-text-to-text", model="{folder.name}", trust_remote_code=True)
```

With the `langbridge-hf` package installed (`import modeling_langbridge`), `trust_remote_code` is not needed.
""",
        encoding="utf-8",
    )


__all__ = [
    "hub_kernels_wanted",
    "LangBridgeProjector",
    "LangBridgePreTrainedModel",
    "LangBridgeModel",
    "LangBridgeForConditionalGeneration",
]
