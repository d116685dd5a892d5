"""LangBridge processor: the vision model's image processor + the LLM's tokenizer + a chat template.

Each `<image>` in the text becomes as many placeholder tokens as the image yields visual tokens, so the
model can scatter them in place. This file travels with checkpoints as remote code.
"""

from transformers.image_utils import get_image_size, to_numpy_array
from transformers.processing_utils import MultiModalData, ProcessorMixin
from transformers.utils import logging

logger = logging.get_logger(__name__)


class LangBridgeProcessor(ProcessorMixin):
    r"""
    Args:
        image_processor: the vision model's image processor (e.g. `CLIPImageProcessor`).
        tokenizer: the LLM's tokenizer, with the image token added.
        chat_template: a Jinja template that renders `{"type": "image"}` content items as the image token.
        image_token: the placeholder string in prompts.
        patch_size: the vision tower's patch size.
        vision_feature_select_strategy: `"default"` drops the first vision token (CLS), `"full"` keeps all,
            as in the model config.
        num_additional_image_tokens: tokens the tower adds to the patches (1 for CLIP's CLS, 0 for SigLIP).
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template=None,
        image_token="<image>",
        patch_size=None,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=0,
        **kwargs,
    ):
        self.image_token = getattr(tokenizer, "image_token", None) or image_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token) if tokenizer is not None else None
        if tokenizer is not None and self.image_token_id in (None, tokenizer.unk_token_id):
            raise ValueError(
                f"The tokenizer has no {self.image_token!r} token. Add it as a special token "
                f"(tokenizer.add_special_tokens({{'additional_special_tokens': [{self.image_token!r}]}})) and resize "
                "the LLM's embeddings, or assemble the model with `langbridge compose`, which does both."
            )
        self.patch_size = patch_size
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.num_additional_image_tokens = num_additional_image_tokens
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    def image_seq_length(self, height: int, width: int) -> int:
        """How many visual tokens the model makes of an image of this (processed) size."""
        count = (height // self.patch_size) * (width // self.patch_size) + self.num_additional_image_tokens
        return count - 1 if self.vision_feature_select_strategy == "default" else count

    def processed_image_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) the image processor turns an image of this size into, measured on a blank image:
        exact for any resize/crop policy, and what `replace_image_token` counts from."""
        from PIL import Image

        pixel_values = self.image_processor(Image.new("RGB", (int(width), int(height))), return_tensors="np")["pixel_values"]
        return tuple(pixel_values.shape[-2:])

    def _get_num_multimodal_tokens(self, image_sizes=None, **kwargs) -> MultiModalData:
        """Placeholder tokens per image of the given (height, width) sizes, before any pixels are processed:
        what inference engines (vLLM's Transformers backend) ask to lay out prompts."""
        if image_sizes is None:
            return MultiModalData()
        counts = [self.image_seq_length(*self.processed_image_size(height, width)) for height, width in image_sizes]
        return MultiModalData(num_image_tokens=counts, num_image_patches=[1] * len(counts))

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        height, width = get_image_size(to_numpy_array(image_inputs["pixel_values"][image_idx]))
        return self.image_token * self.image_seq_length(height, width)

    def __call__(self, images=None, text=None, videos=None, audio=None, **kwargs):
        """Images and text in; `input_ids`, `attention_mask`, `pixel_values` out.

        `videos`, `audio` and `audios` are accepted and ignored (evaluation harnesses pass them to every model);
        a truncation that would cut an image's tokens is refused.
        """
        ignored = [name for name, value in (("videos", videos), ("audio", audio), ("audios", kwargs.pop("audios", None))) if value is not None]
        if ignored:
            logger.warning_once(f"LangBridge takes images and text only; ignoring {', '.join(ignored)}.")
        try:
            return super().__call__(images=images, text=text, **kwargs)
        except ValueError as error:
            if "Likely due to `truncation" not in str(error):
                raise
            raise ValueError(
                f"Truncation would cut the {self.image_token} tokens of an image (max_length="
                f"{kwargs.get('max_length')}): the model needs all of an image's tokens or none. Raise max_length, "
                "turn truncation off, or drop the sample."
            ) from error

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "pixel_values"]


__all__ = ["LangBridgeProcessor"]
