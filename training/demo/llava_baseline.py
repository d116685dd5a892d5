"""Run A's connector: transformers' `LlavaForConditionalGeneration` built from the same parts as LangBridge's runs,
so the demo (and the tests that compare with LLaVA) change one thing only, the connector."""

import torch
from transformers import AutoImageProcessor, AutoModelForCausalLM, AutoTokenizer

from modeling_langbridge.assembly.compose import (
    IMAGE_TOKEN,
    Composed,
    assemble,
    fit_embeddings,
    load_vision_tower,
    prepare_tokenizer,
    vision_token_layout,
)
from modeling_langbridge.model.modeling_langbridge import hub_kernels_wanted


def compose_llava(
    vision_model: str,
    language_model: str,
    *,
    vision_feature_layer: int = -2,
    dtype: str | torch.dtype = "auto",
    use_kernels: bool | None = None,
) -> Composed:
    """The LLaVA baseline of the same parts: transformers' `LlavaForConditionalGeneration`, whose MLP connector
    (Linear -> GELU -> Linear) maps vision features straight into the LLM's embedding space, with the same
    tokenizer preparation, chat template and image processing as `compose`."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    tokenizer = AutoTokenizer.from_pretrained(language_model)
    chat, notes = prepare_tokenizer(tokenizer)
    llm = AutoModelForCausalLM.from_pretrained(language_model, dtype=dtype, use_kernels=hub_kernels_wanted(use_kernels))
    notes += fit_embeddings(llm, tokenizer)
    vision_tower = load_vision_tower(vision_model, dtype=llm.dtype, use_kernels=use_kernels)
    image_processor = AutoImageProcessor.from_pretrained(vision_model)
    patch_size, extra_tokens, patches = vision_token_layout(vision_tower, image_processor)
    strategy = "default" if extra_tokens == 1 else "full"
    config = LlavaConfig(
        vision_config=vision_tower.config,
        text_config=llm.config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=patches + (extra_tokens if strategy == "full" else 0),
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy=strategy,
        projector_hidden_act="gelu",
    )
    model = assemble(config, vision_tower, llm, tokenizer, LlavaForConditionalGeneration, LlavaMultiModalProjector)
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=chat.template,
        patch_size=patch_size,
        vision_feature_select_strategy=strategy,
        num_additional_image_tokens=extra_tokens,
        image_token=IMAGE_TOKEN,
    )
    return Composed(model, processor, None, notes)
