"""Assemble an untrained LangBridge VLM from a pretrained vision model and a pretrained causal LM.

Both parts keep their pretrained weights; only the projector is new. The result is a folder that the
Auto classes and `pipeline("image-text-to-text")` load, with the LLM's tokenizer (image token added), the
vision model's image processor and a chat template in the LLM's dialect.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as transformers_logging

from .chat_templates import chat_format_for
from .configuration_langbridge import LangBridgeConfig
from .modeling_langbridge import LangBridgeForConditionalGeneration, LangBridgeProjector
from .processing_langbridge import LangBridgeProcessor
from .vocab import SharedVocabulary

IMAGE_TOKEN = "<image>"


@dataclass
class Composed:
    model: LangBridgeForConditionalGeneration
    processor: LangBridgeProcessor
    notes: list[str]


def load_vision_tower(name_or_path: str, dtype=None):
    """The vision model alone, also from a dual-encoder checkpoint (CLIP, SigLIP repos hold text + vision).

    The text tower's weights are expected to go unused; a vision weight missing from the checkpoint is not.
    """
    config = AutoConfig.from_pretrained(name_or_path)
    vision_config = getattr(config, "vision_config", None) or config
    vision_class = AutoModel._model_mapping[type(vision_config)]
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        vision_tower, info = vision_class.from_pretrained(name_or_path, dtype=dtype, output_loading_info=True)
    finally:
        transformers_logging.set_verbosity(verbosity)
    if info["missing_keys"]:
        raise ValueError(
            f"{name_or_path} lacks {len(info['missing_keys'])} weights of its vision tower "
            f"(e.g. {sorted(info['missing_keys'])[:3]}): it is not a {vision_class.__name__} checkpoint."
        )
    return vision_tower


def prepare_tokenizer(tokenizer, llm) -> tuple:
    """Add the image token (growing the LLM's embeddings only if needed), a pad token, and the chat format."""
    notes = []
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
        notes.append(f"added {IMAGE_TOKEN} to the tokenizer as id {tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)}")
    if len(tokenizer) > llm.get_input_embeddings().num_embeddings:
        llm.resize_token_embeddings(len(tokenizer), mean_resizing=True)
        notes.append(f"grew the LLM's embeddings to {len(tokenizer)} rows")
    chat = chat_format_for(tokenizer)
    if chat.end_of_turn_token and tokenizer.eos_token != chat.end_of_turn_token:
        notes.append(f"EOS is now the end-of-turn token {chat.end_of_turn_token} (was {tokenizer.eos_token})")
        tokenizer.eos_token = chat.end_of_turn_token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
        notes.append(f"pad token set to {tokenizer.pad_token}")
    tokenizer.chat_template = chat.template
    notes.append(f"chat template: {chat.name}")
    return chat, notes


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


def compose(
    vision_model: str,
    language_model: str,
    *,
    projector_hidden_size: int = 5120,
    vocab_size: int = 19200,
    vocab: str | Path | SharedVocabulary | None = None,
    coefficients: str = "none",
    vision_feature_layer: int = -2,
    dtype: str | torch.dtype = "auto",
) -> Composed:
    """Load both parts, choose the shared vocabulary, and build the LangBridge model around them."""
    llm = AutoModelForCausalLM.from_pretrained(language_model, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(language_model)
    vision_tower = load_vision_tower(vision_model, dtype=llm.dtype)
    image_processor = AutoImageProcessor.from_pretrained(vision_model)

    chat, notes = prepare_tokenizer(tokenizer, llm)
    patch_size, extra_tokens, patches = vision_token_layout(vision_tower, image_processor)
    strategy = "default" if extra_tokens == 1 else "full"
    if extra_tokens not in (0, 1):
        raise ValueError(f"{vision_model} adds {extra_tokens} tokens to its patches; only none or one CLS token is supported.")

    if vocab is None:
        shared = SharedVocabulary.from_tokenizer(tokenizer, vocab_size)
        notes.append(f"shared vocabulary: {shared.source['chosen_as']}")
    else:
        shared = vocab if isinstance(vocab, SharedVocabulary) else SharedVocabulary.load(vocab)
        notes.append(f"shared vocabulary: {len(shared)} tokens from {vocab if not isinstance(vocab, SharedVocabulary) else 'the given vocabulary'}")
    mapping = shared.map_onto(tokenizer)
    if mapping.missing:
        raise ValueError(
            f"{len(mapping.missing)} of {len(shared)} shared-vocabulary tokens are not in {language_model}'s tokenizer "
            f"(e.g. {mapping.missing[:5]}). Use `langbridge transfer`, which composes missing tokens from sub-tokens."
        )

    config = LangBridgeConfig(
        vision_config=vision_tower.config,
        text_config=llm.config,
        projector_hidden_size=projector_hidden_size,
        vocab_token_ids=mapping.entries,
        coefficient_activation=coefficients,
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy=strategy,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=patches + (extra_tokens if strategy == "full" else 0),
        vision_model_name_or_path=str(vision_model),
        language_model_name_or_path=str(language_model),
    )
    model = assemble(config, vision_tower, llm)
    end_of_turn = tokenizer.eos_token_id
    model.generation_config.eos_token_id = sorted({end_of_turn, *_as_list(llm.generation_config.eos_token_id)})
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.suppress_tokens = [config.image_token_id]  # never generate a placeholder

    processor = LangBridgeProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=chat.template,
        image_token=IMAGE_TOKEN,
        patch_size=patch_size,
        vision_feature_select_strategy=strategy,
        num_additional_image_tokens=extra_tokens,
    )
    notes.append(
        f"{config.image_seq_length} visual tokens per image ({'CLS dropped' if strategy == 'default' else 'no CLS'}); "
        f"projector {sum(p.numel() for p in model.model.multi_modal_projector.parameters()):,} parameters"
    )
    return Composed(model, processor, notes)


def assemble(config: LangBridgeConfig, vision_tower, llm) -> LangBridgeForConditionalGeneration:
    """The LangBridge model around already-loaded parts: they are moved in, not copied or re-initialised."""
    with torch.device("meta"):
        model = LangBridgeForConditionalGeneration(config)
    model.model.vision_tower = vision_tower
    model.model.language_model = llm.base_model
    model.lm_head = llm.get_output_embeddings()
    projector = LangBridgeProjector(config).to(llm.dtype)
    projector.apply(model._init_weights)
    model.model.multi_modal_projector = projector
    model.generation_config = llm.generation_config
    model.config.dtype = llm.dtype
    return model.eval()


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
