"""Reading LangBridge's visual tokens as words.

Each visual token is `coefficients @ E` over the shared vocabulary, so the words a patch is made of are its
largest coefficients: exact, read from the projector itself, not found by a similarity search. `read_patches`
returns them per patch; `draw_overlay` writes them on the image grid.
"""

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from .vocab import SharedVocabulary


@dataclass
class PatchReading:
    grid: tuple[int, int]  # patch rows, patch columns
    tokens: list[list[str]]  # per patch (row-major), the top-k tokens, largest coefficient first
    weights: list[list[float]]  # their coefficients
    token_ids: list[list[int]]  # their positions in the shared vocabulary

    def to_json(self, path: str | Path, **extra) -> Path:
        """The reading as JSON; `extra` (e.g. method, prompt, answer) is recorded beside it."""
        Path(path).write_text(json.dumps({**asdict(self), **extra}, ensure_ascii=False, indent=1))
        return Path(path)


def vocabulary_strings(model, tokenizer) -> list[str]:
    """The text of each shared-vocabulary entry (composed ones included), as a person would read it."""
    return SharedVocabulary.from_model(model.config, tokenizer).tokens


def patch_coefficients(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """The projector's coefficients for every patch of every image: [images, patches, T]."""
    with torch.no_grad():
        features = model.model.get_vision_features(pixel_values.to(model.device, model.dtype))
        return model.model.multi_modal_projector.coefficients(features)


def read_patches(model, processor, image: Image.Image, top_k: int = 3) -> PatchReading:
    """The top-k shared-vocabulary tokens of each patch of `image`, by coefficient."""
    if model.config.model_type != "langbridge":
        raise ValueError(f"{type(model).__name__} has no vocabulary coefficients; only LangBridge models can be read this way.")
    pixel_values = processor.image_processor(image, return_tensors="pt")["pixel_values"]
    coefficients = patch_coefficients(model, pixel_values)[0]
    patches = coefficients.shape[0]
    side = math.isqrt(patches)
    if side * side != patches:
        raise ValueError(f"{patches} visual tokens do not form a square grid (CLS kept?); cannot place them on the image.")
    weights, ids = coefficients.float().topk(top_k, dim=-1)
    strings = vocabulary_strings(model, processor.tokenizer)
    return PatchReading(
        grid=(side, side),
        tokens=[[strings[i] for i in row] for row in ids.tolist()],
        weights=weights.tolist(),
        token_ids=ids.tolist(),
    )


def draw_overlay(image: Image.Image, reading: PatchReading, path: str | Path, cell: int = 96, lines: int = 2,
                 title: str | None = None) -> Path:
    """The image enlarged, the patch grid over it, and each patch's top tokens written in its cell."""
    rows, columns = reading.grid
    width, height = columns * cell, rows * cell
    top = 28 if title else 0
    canvas = Image.new("RGB", (width, height + top), "white")
    canvas.paste(image.convert("RGB").resize((width, height), Image.Resampling.NEAREST), (0, top))
    draw = ImageDraw.Draw(canvas, "RGBA")
    font = ImageFont.load_default(size=max(10, cell // 7))
    if title:
        draw.text((6, 6), title, fill="black", font=ImageFont.load_default(size=16))
    for index, tokens in enumerate(reading.tokens):
        row, column = divmod(index, columns)
        x, y = column * cell, top + row * cell
        draw.rectangle([x, y, x + cell - 1, y + cell - 1], outline=(0, 0, 0, 90))
        for line, token in enumerate(tokens[:lines]):
            label = repr(token)[1:-1].strip() or "␣"
            box = draw.textbbox((x + 3, y + 3 + line * (font.size + 4)), label, font=font)
            draw.rectangle([box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1], fill=(255, 255, 255, 210))
            draw.text((x + 3, y + 3 + line * (font.size + 4)), label, fill=(0, 0, 0) if line == 0 else (90, 90, 90), font=font)
    path = Path(path)
    canvas.save(path)
    return path
