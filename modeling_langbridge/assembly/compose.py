"""Assemble an untrained LangBridge VLM from a pretrained vision model and a pretrained causal LM.

Both parts keep their pretrained weights; only the projector is new. The result is a folder that the
Auto classes and `pipeline("image-text-to-text")` load, with the LLM's tokenizer (image token added), the
vision model's image processor and a chat template in the LLM's dialect.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as transformers_logging

from ..errors import LangBridgeUsageError, loading
from ..files import atomic_folder, check_free_space, check_output_folder, require_source
from ..model.configuration_langbridge import LangBridgeConfig, check_setting
from ..model.modeling_langbridge import LangBridgeForConditionalGeneration, LangBridgeProjector, hub_kernels_wanted
from ..model.processing_langbridge import LangBridgeProcessor, fixed_output_size
from ..model.tiling_langbridge import check_tiling, check_untiled, grid_pinpoints
from ..notices import DropKnownNotice
from .chat_templates import ChatFormat, chat_format_for
from .vocab import SharedVocabulary, VocabularyMapping, check_size

IMAGE_TOKEN = "<image>"
DEFAULT_MIN_COVERAGE = 0.8


@dataclass
class Composed:
    model: LangBridgeForConditionalGeneration
    processor: LangBridgeProcessor
    mapping: VocabularyMapping | None
    notes: list[str] = field(default_factory=list)

    def save(self, out: str | Path) -> Path:
        """Model, processor, tokenizer and remote code in one folder, written whole or not at all. A disk without
        room for the weights is refused before the first byte; one that fills up while writing is said as that."""
        check_output_folder(out)
        check_free_space(out, weights_bytes(self.model), "the model's weights")
        with atomic_folder(out) as scratch:
            self.model.save_pretrained(scratch)
            self.processor.save_pretrained(scratch)
        return Path(out)


def weights_bytes(model) -> int:
    """The bytes a model's saved weights take at least: its parameters and saved buffers, shared ones once."""
    seen, total = set(), 0
    for tensor in [*model.parameters(), *model.buffers()]:
        key = (tensor.device, tensor.data_ptr())
        if key in seen or tensor.device.type == "meta":
            continue
        seen.add(key)
        total += tensor.numel() * tensor.element_size()
    return total


DTYPES = ("auto", "float32", "bfloat16", "float16")


def check_dtype(dtype) -> None:
    """`dtype` is "auto", the name of a floating-point dtype or a torch.dtype."""
    if isinstance(dtype, torch.dtype) or dtype in DTYPES:
        return
    raise LangBridgeUsageError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)} (or a torch.dtype).")


def check_language_model(name_or_path: str):
    """The LLM's config, refused before its weights load when it is not a causal language model."""
    with loading("language model", name_or_path):
        config = AutoConfig.from_pretrained(name_or_path)
    if type(config) not in AutoModelForCausalLM._model_mapping:
        raise LangBridgeUsageError(
            f"{name_or_path} is a {config.model_type!r} model, not a causal language model; give an LLM such as "
            "Qwen2 or Llama as the language model."
        )
    return config


def vision_config_of(name_or_path: str):
    """The vision part's config, also for dual-encoder checkpoints (CLIP, SigLIP repos hold text + vision); a model
    that is not a vision tower (no image size or patch size) is refused."""
    with loading("vision model", name_or_path):
        config = AutoConfig.from_pretrained(name_or_path)
    vision = getattr(config, "vision_config", None) or config
    if (
        not (hasattr(vision, "image_size") and hasattr(vision, "patch_size"))
        or type(vision) not in AutoModel._model_mapping
    ):
        raise LangBridgeUsageError(
            f"{name_or_path} is a {config.model_type!r} model, not a vision tower with patches; give a vision model "
            "such as CLIP or SigLIP as the vision model."
        )
    return vision


def load_vision_tower(name_or_path: str, dtype=None, use_kernels: bool | None = None):
    """The vision model alone. The text tower's weights of a dual encoder go unused; a missing vision weight
    is an error."""
    vision_class = AutoModel._model_mapping[type(vision_config_of(name_or_path))]
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        with loading("vision model", name_or_path):
            vision_tower, info = vision_class.from_pretrained(
                name_or_path, dtype=dtype, output_loading_info=True, use_kernels=hub_kernels_wanted(use_kernels)
            )
    finally:
        transformers_logging.set_verbosity(verbosity)
    if info["missing_keys"]:
        raise LangBridgeUsageError(
            f"{name_or_path} lacks {len(info['missing_keys'])} weights of its vision tower "
            f"(e.g. {sorted(info['missing_keys'])[:3]}): it is not a {vision_class.__name__} checkpoint."
        )
    return vision_tower


def prepare_tokenizer(tokenizer, chat: ChatFormat | None = None) -> tuple[ChatFormat, list[str]]:
    """Add the image token and a pad token, make the end-of-turn token the EOS, set the chat template."""
    notes = []
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
        notes.append(f"added {IMAGE_TOKEN} to the tokenizer as id {tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)}")
    chat = chat or chat_format_for(tokenizer)
    if chat.end_of_turn_token and tokenizer.eos_token != chat.end_of_turn_token:
        notes.append(f"EOS is now the end-of-turn token {chat.end_of_turn_token} (was {tokenizer.eos_token})")
        tokenizer.eos_token = chat.end_of_turn_token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
        notes.append(f"pad token set to {tokenizer.pad_token}")
    tokenizer.chat_template = chat.template
    # Saved for generation, as llava-hf's checkpoints are: batched generation continues from the right edge (the
    # pipeline of transformers 5.24 keeps whatever the tokenizer says). The training collator pads right itself.
    # save_pretrained writes the init arguments, not the attribute.
    tokenizer.padding_side = tokenizer.init_kwargs["padding_side"] = "left"
    notes.append(f"chat template: {chat.name}")
    return chat, notes


def fit_embeddings(llm, tokenizer) -> list[str]:
    """Grow the LLM's embedding table only when the tokenizer outgrew it (Qwen's has spare rows)."""
    if len(tokenizer) <= llm.get_input_embeddings().num_embeddings:
        return []
    # New rows start from the old rows' mean and covariance (mean_resizing), chosen here on purpose; transformers'
    # notice that it does so restates that choice, so it is dropped for this call.
    modeling_logger = logging.getLogger("transformers.modeling_utils")
    notice = DropKnownNotice(
        (
            "The new embeddings will be initialized from a multivariate normal distribution",
            "The new lm_head weights will be initialized from a multivariate normal distribution",
        )
    )
    modeling_logger.addFilter(notice)
    try:
        llm.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    finally:
        modeling_logger.removeFilter(notice)
    return [f"grew the LLM's embeddings to {len(tokenizer)} rows"]


def vision_token_layout(vision_tower, image_processor) -> tuple[int, int, int]:
    """(patch_size, extra tokens such as CLS, patches) of the tower, measured on a blank processed image."""
    from PIL import Image

    pixel_values = image_processor(Image.new("RGB", (64, 64)), return_tensors="pt")["pixel_values"]
    pixel_values = pixel_values.to(vision_tower.device, vision_tower.dtype)
    patch_size = vision_tower.config.patch_size
    patches = (pixel_values.shape[-2] // patch_size) * (pixel_values.shape[-1] // patch_size)
    with torch.no_grad():
        sequence = vision_tower(pixel_values).last_hidden_state.shape[1]
    return patch_size, sequence - patches, patches


def check_vision_features(vision_config, layer: int | list[int], expected_size: int | None, name: str) -> None:
    """An adapter's first layer takes vision features of one width; refuse a tower that gives another."""
    size = vision_config.hidden_size * (1 if isinstance(layer, int) else len(layer))
    if expected_size is not None and size != expected_size:
        raise LangBridgeUsageError(
            f"The adapter takes {expected_size}-wide vision features but {name} gives {size} "
            f"(hidden_size {vision_config.hidden_size}). Use the vision model the adapter was trained with "
            "(--vision-model), or train a new adapter for this one."
        )


# compose's arguments that 0.1 named otherwise: the config's names are the only ones now.
RENAMED_ARGUMENTS = {"vocab_size": "shared_vocab_size", "coefficients": "coefficient_activation"}


def renamed_arguments(function):
    """Accept the old names of RENAMED_ARGUMENTS, with a FutureWarning naming the new one."""
    import functools
    import warnings

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        for old, new in RENAMED_ARGUMENTS.items():
            if old in kwargs:
                warnings.warn(f"{function.__name__}({old}=...) is now {new}=...", FutureWarning, stacklevel=2)
                kwargs[new] = kwargs.pop(old)
        return function(*args, **kwargs)

    return wrapper


@renamed_arguments
def compose(
    vision_model: str,
    language_model: str,
    *,
    projector_hidden_size: int = 5120,
    shared_vocab_size: int = 19200,
    vocab: str | Path | SharedVocabulary | None = None,
    coefficient_activation: str = "none",
    combine_in_float32: bool = True,
    projector_hidden_act: str = "gelu",
    vision_feature_layer: int | list[int] = -2,
    vision_feature_select_strategy: str | None = None,
    expected_vision_feature_size: int | None = None,
    min_coverage: float = DEFAULT_MIN_COVERAGE,
    force: bool = False,
    dtype: str | torch.dtype = "auto",
    use_kernels: bool | None = None,
    image_grid_pinpoints: list[list[int]] | str | None = None,
    vision_aspect_ratio: str = "anyres",
    patch_merge_type: str = "spatial_unpad",
) -> Composed:
    """Load both parts, place the shared vocabulary on the LLM's tokenizer, and build the model around them.

    Everything that can be checked from configs and the tokenizer is checked before any weights load.
    `use_kernels`: transformers' Hub kernels for both parts (default: only when the Hub may be reached).
    `image_grid_pinpoints` turns tiling on (LLaVA-NeXT anyres): [height, width] pairs in pixels, or grids in tiles
    (`"llava-next"`, `"1x2,2x1,2x2"`, `"(1x1),...,(3x3)"`; see `tiling_langbridge.grid_pinpoints`).
    """
    require_source(vision_model, "vision model")
    require_source(language_model, "language model")
    check_size(shared_vocab_size, "shared vocabulary size (shared_vocab_size)")
    check_size(projector_hidden_size, "projector hidden size")
    check_dtype(dtype)
    for name, value in (
        ("projector_hidden_act", projector_hidden_act),
        ("coefficient_activation", coefficient_activation),
        ("combine_in_float32", combine_in_float32),
        ("vision_feature_layer", vision_feature_layer),
    ):
        check_setting(name, value)
    if image_grid_pinpoints is None:
        check_untiled(vision_aspect_ratio, patch_merge_type)
    check_language_model(language_model)
    with loading("tokenizer of the language model", language_model):
        tokenizer = AutoTokenizer.from_pretrained(language_model)
    chat, notes = prepare_tokenizer(tokenizer)
    vision_config = vision_config_of(vision_model)
    check_vision_features(vision_config, vision_feature_layer, expected_vision_feature_size, vision_model)
    if image_grid_pinpoints is not None:  # tiling settings are checked before any weights load
        if isinstance(image_grid_pinpoints, str):
            image_grid_pinpoints = grid_pinpoints(image_grid_pinpoints, vision_config.image_size)
        check_tiling(image_grid_pinpoints, vision_config.image_size, vision_aspect_ratio, patch_merge_type)

    if vocab is None:
        shared = SharedVocabulary.from_tokenizer(tokenizer, shared_vocab_size)
        notes.append(f"shared vocabulary: {shared.source['chosen_as']}")
    else:
        shared = vocab if isinstance(vocab, SharedVocabulary) else SharedVocabulary.load(vocab)
        notes.append(f"shared vocabulary: {len(shared)} tokens")
    mapping = shared.map_onto(tokenizer)
    mapping.require(min_coverage, force)

    with loading("language model", language_model):
        llm = AutoModelForCausalLM.from_pretrained(
            language_model, dtype=dtype, use_kernels=hub_kernels_wanted(use_kernels)
        )
    notes += fit_embeddings(llm, tokenizer)
    vision_tower = load_vision_tower(vision_model, dtype=llm.dtype, use_kernels=use_kernels)
    with loading("image processor of the vision model", vision_model):
        image_processor = AutoImageProcessor.from_pretrained(vision_model)
    patch_size, extra_tokens, patches = vision_token_layout(vision_tower, image_processor)
    if extra_tokens not in (0, 1):
        raise LangBridgeUsageError(
            f"{vision_model} adds {extra_tokens} tokens to its patches; only none or one CLS token is supported."
        )
    strategy = vision_feature_select_strategy or ("default" if extra_tokens == 1 else "full")
    if strategy == "default" and extra_tokens == 0:
        raise LangBridgeUsageError(
            f"The projector expects a CLS token to drop (vision_feature_select_strategy='default') but {vision_model} "
            "has none; use 'full' for towers without CLS (e.g. SigLIP)."
        )
    if image_grid_pinpoints is not None:
        if strategy == "full" and extra_tokens:
            raise LangBridgeUsageError(
                "Tiling lays each view's tokens out as a square grid of patches, so the CLS token must be "
                "dropped (vision_feature_select_strategy='default')."
            )
        image_grid_pinpoints, image_processor = tiled_image_processor(
            image_processor, image_grid_pinpoints, vision_tower.config.image_size, vision_aspect_ratio, patch_merge_type
        )

    config = LangBridgeConfig(
        vision_config=vision_tower.config,
        text_config=llm.config,
        projector_hidden_size=projector_hidden_size,
        projector_hidden_act=projector_hidden_act,
        vocab_token_ids=mapping.entries,
        coefficient_activation=coefficient_activation,
        combine_in_float32=combine_in_float32,
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy=strategy,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=patches + (extra_tokens if strategy == "full" else 0),
        vision_model_name_or_path=str(vision_model),
        language_model_name_or_path=str(language_model),
        image_grid_pinpoints=image_grid_pinpoints,
        vision_aspect_ratio=vision_aspect_ratio,
        patch_merge_type=patch_merge_type,
    )
    model = assemble(config, vision_tower, llm, tokenizer)
    processor = LangBridgeProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=chat.template,
        image_token=IMAGE_TOKEN,
        patch_size=patch_size,
        vision_feature_select_strategy=strategy,
        num_additional_image_tokens=extra_tokens,
        **tiling_settings(config),
    )
    notes.append(
        f"{config.image_seq_length} visual tokens per {'view' if config.tiling else 'image'} "
        f"({'CLS dropped' if strategy == 'default' else 'all tokens kept'}); "
        f"projector {sum(p.numel() for p in model.model.multi_modal_projector.parameters()):,} parameters"
    )
    if config.tiling:
        notes.append(
            f"tiling: {vision_aspect_ratio}, {patch_merge_type}, grids (height x width) "
            + ", ".join(f"{h}x{w}" for h, w in config.image_grid_pinpoints)
            + "; an image takes the base view plus its tiles, its size decides how many"
        )
    return Composed(model, processor, mapping, notes)


def tiling_settings(config: LangBridgeConfig) -> dict:
    """The processor's tiling arguments for a model config (none for single-view models)."""
    if not config.tiling:
        return {}
    return {"vision_aspect_ratio": config.vision_aspect_ratio, "patch_merge_type": config.patch_merge_type}


def tiled_image_processor(
    image_processor,
    image_grid_pinpoints,
    tile_size: int,
    vision_aspect_ratio: str = "anyres",
    patch_merge_type: str = "spatial_unpad",
):
    """`(pinpoints in pixels, a LLaVA-NeXT image processor)` that cuts tiles with the vision model's own settings
    (size, crop, resampling, normalisation); its base view and tiles are what the single-view processor makes of a
    `tile_size` square."""
    from transformers import LlavaNextImageProcessor

    if isinstance(image_grid_pinpoints, str):
        image_grid_pinpoints = grid_pinpoints(image_grid_pinpoints, tile_size)
    image_grid_pinpoints = [list(pair) if isinstance(pair, (list, tuple)) else pair for pair in image_grid_pinpoints]
    check_tiling(image_grid_pinpoints, tile_size, vision_aspect_ratio, patch_merge_type)
    if fixed_output_size(image_processor) != (tile_size, tile_size):
        raise LangBridgeUsageError(
            f"Tiling needs an image processor that makes {tile_size} x {tile_size} views (the tower's input size); "
            f"{type(image_processor).__name__} makes {fixed_output_size(image_processor) or 'images of varying size'}."
        )
    settings = {
        k: v
        for k, v in image_processor.to_dict().items()
        if k
        in (
            "do_resize",
            "size",
            "resample",
            "do_rescale",
            "rescale_factor",
            "do_normalize",
            "image_mean",
            "image_std",
            "do_convert_rgb",
        )
    }
    crop = {"height": tile_size, "width": tile_size}
    tiled = LlavaNextImageProcessor(
        **settings,
        do_center_crop=bool(getattr(image_processor, "do_center_crop", False)),
        crop_size=crop,
        image_grid_pinpoints=image_grid_pinpoints,
        do_pad=True,
    )
    return image_grid_pinpoints, tiled


def assemble(
    config,
    vision_tower,
    llm,
    tokenizer,
    model_class=LangBridgeForConditionalGeneration,
    projector_class=LangBridgeProjector,
):
    """The VLM around already-loaded parts: they are moved in, not copied or re-initialised; only the projector
    is new. The classes default to LangBridge's; LLaVA's make the MLP-connector baseline of the same parts."""
    with torch.device("meta"):
        model = model_class(config)
    model.model.vision_tower = vision_tower
    model.model.language_model = llm.base_model
    model.lm_head = llm.get_output_embeddings()
    projector = projector_class(config).to(llm.dtype)
    projector.apply(model._init_weights)
    model.model.multi_modal_projector = projector
    if getattr(config, "uses_image_newline", False):  # tiling's row-end embedding, new like the projector
        width = config.text_config.hidden_size
        model.model.image_newline = torch.nn.Parameter(torch.randn(width, dtype=llm.dtype) / width**0.5)
    model.config.dtype = llm.dtype

    # The config's EOS is the tokenizer's (the end-of-turn token), as the Trainer would otherwise align it, with a notice.
    model.config.get_text_config().eos_token_id = tokenizer.eos_token_id
    generation = llm.generation_config
    generation.eos_token_id = sorted({tokenizer.eos_token_id, *_as_list(generation.eos_token_id)})
    generation.pad_token_id = tokenizer.pad_token_id
    generation.suppress_tokens = [config.image_token_id]  # never generate a placeholder
    model.generation_config = generation
    return model.eval()


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
