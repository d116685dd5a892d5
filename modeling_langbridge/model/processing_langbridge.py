"""LangBridge processor: the vision model's image processor + the LLM's tokenizer + a chat template.

Each `<image>` in the text becomes as many placeholder tokens as the image yields visual tokens, so the
model can scatter them in place. Images come as transformers takes them (`load_image`): a PIL image, a local path,
an http(s) URL, base64 data or a `data:image/...;base64,` URL, and also as bytes or a `{"bytes", "path"}` dict;
each is decoded and checked here (`open_image`). This file travels with checkpoints as remote code.
"""

import base64
import binascii
import io
import os
from pathlib import Path

from transformers.image_utils import get_image_size, to_numpy_array
from transformers.processing_utils import MultiModalData, ProcessorMixin
from transformers.utils import logging

from .errors_langbridge import LangBridgeInputError
from .tiling_langbridge import check_tiling, num_image_tokens, num_views

logger = logging.get_logger(__name__)

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# Seconds to wait for an image URL (transformers' `load_image` waits without limit unless told).
IMAGE_FETCH_TIMEOUT = 30.0


def as_rgb(image):
    """An RGB copy of a PIL image. 16-bit greyscale (PNG's `I;16`) and 32-bit integer images are scaled to 8 bits
    (Pillow's own conversion clips them, so a 16-bit image turns white); other modes convert as Pillow does."""
    import numpy as np
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode in SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        values = np.asarray(image).astype(np.float64)
        if image.mode in SIXTEEN_BIT_MODES or values.max(initial=0) > 255:  # 16-bit range (PNG reads as I or I;16)
            values = values / 257.0
        grey = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
        return grey.convert("RGB")
    return image.convert("RGB")


def _verify(source, name: str) -> None:
    """Pillow's `verify` checks what a format lets it check (PNG: every chunk's checksum, the image data's too)."""
    from PIL import Image

    with Image.open(source) as probe:
        probe.verify()


def fetch_image(url: str, timeout: float = IMAGE_FETCH_TIMEOUT) -> bytes:
    """The bytes behind an http(s) image URL, fetched as transformers' `load_image` does (httpx, redirects
    followed); a URL that cannot be fetched (no network, a refused connection, a status other than success) is refused
    saying so and why. `HF_HUB_OFFLINE` concerns the Hub, not image URLs, as in transformers."""
    try:  # the HTTP client transformers' own `load_image` uses (huggingface_hub's; `httpx2` from huggingface_hub 2)
        from huggingface_hub.utils import httpx
    except ImportError:  # pragma: no cover - huggingface_hub without it
        import httpx

    try:
        response = httpx.get(url, timeout=timeout, follow_redirects=True)
        response.raise_for_status()
    except httpx.HTTPStatusError as error:
        reason = f"the server answered {error.response.status_code} {error.response.reason_phrase}".rstrip()
    except httpx.HTTPError as error:
        reason = " ".join(str(error).split()) or type(error).__name__
    else:
        return response.content
    raise LangBridgeInputError(
        f"could not fetch the image {url} ({reason}); check the address and the network, or download the image and "
        "give its local path."
    )


def _shown(text: str) -> str:
    return text if len(text) <= 80 else text[:77] + "..."


def image_source(text: str):
    """What a string given as an image stands for, as transformers' `load_image` reads it: an http(s) URL (fetched),
    a local file, a `data:image/...;base64,` URL, or base64 image data. Returns (a path or bytes, its name)."""
    if text.startswith(("http://", "https://")):
        return fetch_image(text), text
    if os.path.isfile(text):
        return text, text
    if text.startswith("data:"):
        header, _, payload = text.partition(",")
        if not header.endswith(";base64"):
            raise LangBridgeInputError(
                f"cannot read the image {_shown(text)} (a data: URL that is not base64-encoded); give it as "
                "data:image/png;base64,... ."
            )
        try:
            return base64.b64decode("".join(payload.split()), validate=True), "a data: URL image"
        except (binascii.Error, ValueError) as error:
            raise LangBridgeInputError(
                f"cannot read the image {_shown(text)} (its base64 data is not valid: {error}); encode the image again."
            ) from None
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        data = None
    if data and _is_image_data(data):
        return data, "base64 image data"
    what = "a folder, not an image file" if os.path.isdir(text) else "no such file"
    raise LangBridgeInputError(
        f"cannot read the image {_shown(text)} ({what}, and not an http(s) URL, a data: URL or base64 image data); "
        "give an existing image file or URL, or remove it from the data."
    )


def _is_image_data(data: bytes) -> bool:
    """Whether Pillow recognises bytes as an image (only its header is read)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)):
            return True
    except (UnidentifiedImageError, OSError, ValueError):
        return False


def check_image_size(image, name: str) -> None:
    """Refuse an image without pixels (0 wide or 0 high), which image processors cannot resize."""
    size = getattr(image, "size", None) if not hasattr(image, "shape") else tuple(image.shape)
    if size is not None and not isinstance(size, int) and 0 in tuple(size):
        shown = "x".join(str(n) for n in size)
        raise LangBridgeInputError(
            f"the image {name} has no pixels ({shown}); give an image at least 1 pixel wide and high."
        )


def open_image(source, name: str | None = None):
    """An image, fully decoded, checked and in RGB, from a path, an http(s) URL, base64 data (or a
    `data:image/...;base64,` URL), bytes, a `{"bytes", "path"}` dict or a PIL image.

    Decoding happens here, so a damaged or truncated file fails here, with its name (`name`, e.g. `data.jsonl:7`,
    says where it was referred to); a PNG's checksums are verified, so damaged image data is not read as pixels.
    """
    from PIL import Image

    if isinstance(source, dict):
        data, path = source.get("bytes"), source.get("path")
        source = data if data else path
        name = name or path or "<image bytes>"
    if isinstance(source, str):
        source, found = image_source(source)
        name = name or found
    if isinstance(source, (bytes, bytearray)):
        source, name = io.BytesIO(source), name or "<image bytes>"
    name = (
        name
        or getattr(source, "filename", None)
        or (str(source) if not isinstance(source, Image.Image) else "given as a PIL image")
    )
    try:
        if isinstance(source, Image.Image):
            filename = getattr(source, "filename", None)
            if filename and source.format == "PNG" and os.path.isfile(filename):
                _verify(filename, name)
            source.load()
            check_image_size(source, name)
            return as_rgb(source)
        if isinstance(source, Path) and not os.path.isfile(source):
            what = "a folder, not an image file" if source.is_dir() else "no such file"
            raise LangBridgeInputError(
                f"cannot read the image {name} ({what}); give an existing image file or URL, or remove it from the data."
            )
        _verify(source, name)
        if isinstance(source, io.BytesIO):
            source.seek(0)
        image = Image.open(source)
        image.load()
        check_image_size(image, name)
        return as_rgb(image)
    except LangBridgeInputError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise LangBridgeInputError(
            f"cannot read the image {name} ({str(error) or type(error).__name__}); replace it with a readable PNG or "
            "JPEG file, or remove it from the data."
        ) from error


def fixed_output_size(image_processor) -> tuple[int, int] | None:
    """(height, width) of every image the processor makes, when that does not depend on the input: a center crop
    to `crop_size`, or a resize to a fixed `size` without one. None for aspect-preserving processors."""

    def height_width(size) -> tuple[int, int] | None:
        size = dict(size or {})
        return (int(size["height"]), int(size["width"])) if "height" in size and "width" in size else None

    if getattr(image_processor, "do_center_crop", False):
        return height_width(getattr(image_processor, "crop_size", None))
    if getattr(image_processor, "do_resize", False):
        return height_width(getattr(image_processor, "size", None))
    return None


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
        vision_aspect_ratio: set (`"anyres"` or `"anyres_max_N"`, as in the model config) when the model tiles
            images; the image processor is then a LLaVA-NeXT one whose `image_grid_pinpoints` cut the tiles. None: one
            view per image.
        patch_merge_type: with tiling, the model config's `patch_merge_type`.
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
        vision_aspect_ratio=None,
        patch_merge_type=None,
        **kwargs,
    ):
        self.image_token = getattr(tokenizer, "image_token", None) or image_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token) if tokenizer is not None else None
        if tokenizer is not None and self.image_token_id in (None, tokenizer.unk_token_id):
            raise LangBridgeInputError(
                f"The tokenizer has no {self.image_token!r} token. Add it as a special token "
                f"(tokenizer.add_special_tokens({{'additional_special_tokens': [{self.image_token!r}]}})) and resize "
                "the LLM's embeddings (model.resize_token_embeddings(len(tokenizer))); with langbridge-hf installed, "
                "`langbridge compose` does both."
            )
        self.patch_size = patch_size
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.num_additional_image_tokens = num_additional_image_tokens
        self.vision_aspect_ratio = vision_aspect_ratio
        self.patch_merge_type = patch_merge_type or ("spatial_unpad" if vision_aspect_ratio else None)
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        if self.tiling:
            pinpoints = getattr(image_processor, "image_grid_pinpoints", None)
            if pinpoints is None:
                raise LangBridgeInputError(
                    f"vision_aspect_ratio={vision_aspect_ratio!r} asks for tiling but the image processor "
                    f"({type(image_processor).__name__}) has no image_grid_pinpoints; use a LLaVA-NeXT image processor "
                    "(transformers' LlavaNextImageProcessor with image_grid_pinpoints; with langbridge-hf installed, "
                    "`langbridge compose --image-grid-pinpoints ...` builds one)."
                )
            check_tiling(pinpoints, self.tile_size, vision_aspect_ratio, self.patch_merge_type)

    @property
    def tiling(self) -> bool:
        """Whether images are tiled (LLaVA-NeXT anyres): then each image's token count depends on its size."""
        return self.vision_aspect_ratio is not None

    @property
    def tile_size(self) -> int:
        """The side of a tile (and of the base view): the image processor's crop size."""
        crop = dict(
            getattr(self.image_processor, "crop_size", None) or getattr(self.image_processor, "size", None) or {}
        )
        return int(crop.get("height") or crop["shortest_edge"])

    def num_image_tokens(self, height: int, width: int) -> int:
        """Placeholders for an image of this original size: one view's tokens, or, tiled, the base view's plus the
        tiles' as the model packs them (`tiling_langbridge.num_image_tokens`)."""
        if not self.tiling:
            return self.image_seq_length(*self.processed_image_size(height, width))
        return num_image_tokens(
            (height, width),
            self.image_processor.image_grid_pinpoints,
            self.tile_size,
            self.tile_size // self.patch_size,
            self.vision_aspect_ratio,
            self.patch_merge_type,
        )

    def num_image_views(self, height: int, width: int) -> int:
        """How many views (base + tiles) an image of this size becomes: 1 without tiling."""
        return (
            num_views((height, width), self.image_processor.image_grid_pinpoints, self.tile_size) if self.tiling else 1
        )

    def image_seq_length(self, height: int, width: int) -> int:
        """How many visual tokens the model makes of an image of this (processed) size."""
        count = (height // self.patch_size) * (width // self.patch_size) + self.num_additional_image_tokens
        return count - 1 if self.vision_feature_select_strategy == "default" else count

    def processed_image_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) the image processor turns an image of this size into: the fixed output of a
        center-cropping (CLIP) or fixed-size (SigLIP) processor, otherwise measured on a blank image of that size.
        vLLM asks this for 10,000 x 10,000 images at start-up, so the fixed sizes are read, not measured."""
        fixed = fixed_output_size(self.image_processor)
        if fixed is not None:
            return fixed
        from PIL import Image

        pixel_values = self.image_processor(Image.new("RGB", (int(width), int(height))), return_tensors="np")[
            "pixel_values"
        ]
        return tuple(pixel_values.shape[-2:])

    def _get_num_multimodal_tokens(self, image_sizes=None, **kwargs) -> MultiModalData:
        """Placeholder tokens per image of the given (height, width) sizes, before any pixels are processed:
        what inference engines (vLLM's Transformers backend) ask to lay out prompts."""
        if image_sizes is None:
            return MultiModalData()
        counts = [self.num_image_tokens(height, width) for height, width in image_sizes]
        # rows of pixel_values per image: tiled images send their views one after another (see `_views_in_rows`)
        views = [self.num_image_views(height, width) for height, width in image_sizes]
        return MultiModalData(num_image_tokens=counts, num_image_patches=views)

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        if self.tiling:  # counted from the original size, which the image processor returns
            height, width = (int(side) for side in image_inputs["image_sizes"][image_idx])
            return self.image_token * self.num_image_tokens(height, width)
        height, width = get_image_size(to_numpy_array(image_inputs["pixel_values"][image_idx]))
        return self.image_token * self.image_seq_length(height, width)

    def __call__(self, images=None, text=None, videos=None, audio=None, **kwargs):
        """Images and text in; `input_ids`, `attention_mask`, `pixel_values` out.

        `videos`, `audio` and `audios` are accepted and ignored (evaluation harnesses pass them to every model);
        a truncation that would cut an image's tokens is refused.
        """
        ignored = [
            name
            for name, value in (("videos", videos), ("audio", audio), ("audios", kwargs.pop("audios", None)))
            if value is not None
        ]
        if ignored:
            logger.warning_once(f"LangBridge takes images and text only; ignoring {', '.join(ignored)}.")
        images = self._checked_images(images, text)
        try:
            outputs = super().__call__(images=images, text=text, **kwargs)
        except ValueError as error:
            if not self._truncation_cut_images(images, text, kwargs):
                raise
            raise LangBridgeInputError(
                f"Truncation would cut the {self.image_token} tokens of an image (max_length="
                f"{kwargs.get('max_length')}): the model needs all of an image's tokens or none. Raise max_length, "
                "turn truncation off, or drop the sample."
            ) from error
        if not images and kwargs.get("return_tensors") and "pixel_values" not in outputs:
            # Text only: no images, but the key is there (0 rows), so a pipeline batch can mix these with image chats.
            outputs["pixel_values"] = self._no_pixel_values(kwargs["return_tensors"])
            if self.tiling:
                outputs["image_sizes"] = self._no_image_sizes(kwargs["return_tensors"])
        elif self.tiling and "image_sizes" in outputs:
            outputs["pixel_values"] = self._views_in_rows(outputs["pixel_values"], outputs["image_sizes"])
        return outputs

    def _truncation_cut_images(self, images, text, kwargs) -> bool:
        """Whether a failed call fails only because of its truncation (the same call without it succeeds): the
        only way truncation can break it is by cutting an image's tokens."""
        if not kwargs.get("truncation"):
            return False
        try:
            super().__call__(images=images, text=text, **{**kwargs, "truncation": False})
        except ValueError:
            return False
        return True

    def _views_in_rows(self, pixel_values, image_sizes):
        """Tiled: the image processor's [images, views padded to the most, C, H, W] as the real views one after
        another, [views, C, H, W]: no padding views to encode, and pipeline batches of images with different numbers
        of tiles concatenate (`image_sizes` says which rows belong to which image)."""
        import numpy as np

        counts = [self.num_image_views(int(h), int(w)) for h, w in image_sizes]
        rows = [image[:count] for image, count in zip(pixel_values, counts)]
        if hasattr(pixel_values, "new_zeros"):  # a torch tensor
            import torch

            return torch.cat(rows, dim=0)
        if isinstance(pixel_values, np.ndarray):
            return np.concatenate(rows, axis=0)
        return [view for image in rows for view in image]

    def _no_pixel_values(self, return_tensors):
        from PIL import Image

        blank = self.image_processor(Image.new("RGB", (32, 32)), return_tensors=return_tensors)["pixel_values"]
        return blank[0, :0] if self.tiling else blank[:0]

    def _no_image_sizes(self, return_tensors):
        from PIL import Image

        return self.image_processor(Image.new("RGB", (32, 32)), return_tensors=return_tensors)["image_sizes"][:0]

    def _checked_images(self, images, text):
        """Images opened and checked (paths are decoded with `open_image`; PIL images converted to RGB the 16-bit
        aware way), and, when they come nested per sample, each sample's images matched to its own text."""
        from PIL import Image

        def check(image):
            if isinstance(image, (str, Path, bytes, dict)):
                return open_image(image)
            if isinstance(image, Image.Image) and (image.mode != "RGB" or getattr(image, "filename", None)):
                return open_image(image)
            check_image_size(image, "given as a PIL image" if isinstance(image, Image.Image) else "given as an array")
            return image

        if images is None:
            return None
        if not isinstance(images, (list, tuple)):
            return check(images)
        nested = any(isinstance(item, (list, tuple)) for item in images)
        if not nested:
            return [check(image) for image in images]
        texts = [text] if isinstance(text, str) else text
        if isinstance(texts, (list, tuple)) and all(isinstance(t, str) for t in texts):
            if len(images) != len(texts):
                raise LangBridgeInputError(
                    f"Images come as {len(images)} per-sample lists but there are {len(texts)} texts: give one list of "
                    "images per text (an empty list for a text without images)."
                )
            for number, (sample_images, sample_text) in enumerate(zip(images, texts)):
                sample_images = sample_images if isinstance(sample_images, (list, tuple)) else [sample_images]
                placeholders = sample_text.count(self.image_token)
                if placeholders != len(sample_images):
                    raise LangBridgeInputError(
                        f"Sample {number} has {placeholders} {self.image_token} in its text but {len(sample_images)} "
                        "image(s) in its list: each text's images must be in its own list, one per placeholder, in order."
                    )
        checked = [[check(image) for image in (item if isinstance(item, (list, tuple)) else [item])] for item in images]
        return checked if any(checked) else None

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "pixel_values", *(["image_sizes"] if self.tiling else [])]


__all__ = ["LangBridgeProcessor"]
