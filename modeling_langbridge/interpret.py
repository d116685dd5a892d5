"""Reading LangBridge's visual tokens as words.

Each visual token is `coefficients @ E` over the shared vocabulary, so the words a patch is made of are its
largest coefficients: exact, read from the projector itself, not found by a similarity search. `read_patches`
returns them per patch; `draw_overlay` writes them on the image grid. A tiled model (LLaVA-NeXT anyres) is read
per view: the base view over the whole image, and every tile over its part of the image as the processor fitted it
into the grid resolution.
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


@dataclass
class TiledReading:
    """A tiled image read per view: `base` (the whole image squashed to one tile) and `tiles` (the tiles' patches as
    one map, row-major over `tile_grid` (rows, columns) of tiles). `canvas` is the (height, width) the image was
    fitted into and `placement` its (top, left, height, width) there; the rest of the canvas is padding."""

    base: PatchReading
    tiles: PatchReading
    tile_grid: tuple[int, int]
    canvas: tuple[int, int]
    placement: tuple[int, int, int, int]

    @property
    def grid(self) -> tuple[int, int]:
        return self.base.grid

    def to_json(self, path: str | Path, **extra) -> Path:
        Path(path).write_text(json.dumps({"views": "base view, then the tiles as one map", "base": asdict(self.base),
                                          "tiles": asdict(self.tiles), "tile_grid": self.tile_grid, "canvas": self.canvas,
                                          "placement": self.placement, **extra}, ensure_ascii=False, indent=1))
        return Path(path)


def vocabulary_strings(model, tokenizer) -> list[str]:
    """The text of each shared-vocabulary entry (composed ones included), as a person would read it."""
    return SharedVocabulary.from_model(model.config, tokenizer).tokens


def patch_coefficients(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """The projector's coefficients for every patch of every image: [images, patches, T]."""
    with torch.no_grad():
        features = model.model.get_vision_features(pixel_values.to(model.device, model.dtype))
        return model.model.multi_modal_projector.coefficients(features)


def read_patches(model, processor, image: Image.Image, top_k: int = 3) -> PatchReading | TiledReading:
    """The top-k shared-vocabulary tokens of each patch of `image`, by coefficient (per view when tiled)."""
    if model.config.model_type != "langbridge":
        raise ValueError(f"{type(model).__name__} has no vocabulary coefficients; only LangBridge models can be read this way.")
    processed = processor.image_processor(image, return_tensors="pt")
    strings = vocabulary_strings(model, processor.tokenizer)
    if not getattr(model.config, "tiling", False):
        return _reading(patch_coefficients(model, processed["pixel_values"])[0], strings, top_k)

    from .tiling_langbridge import grid_shape

    tile = model.config.vision_config.image_size
    rows, columns = grid_shape((image.height, image.width), model.config.image_grid_pinpoints, tile)
    coefficients = patch_coefficients(model, processed["pixel_values"][0][: 1 + rows * columns])  # [views, P, T]
    side = math.isqrt(coefficients.shape[1])
    tiles = coefficients[1:].reshape(rows, columns, side, side, -1).permute(0, 2, 1, 3, 4).reshape(rows * columns * side * side, -1)
    canvas = (rows * tile, columns * tile)
    scale = min(canvas[0] / image.height, canvas[1] / image.width)  # as the image processor fits it (aspect kept)
    height, width = min(math.ceil(image.height * scale), canvas[0]), min(math.ceil(image.width * scale), canvas[1])
    return TiledReading(
        base=_reading(coefficients[0], strings, top_k),
        tiles=_reading(tiles, strings, top_k, grid=(rows * side, columns * side)),
        tile_grid=(rows, columns), canvas=canvas,
        placement=((canvas[0] - height) // 2, (canvas[1] - width) // 2, height, width),
    )


def _reading(coefficients: torch.Tensor, strings: list[str], top_k: int, grid: tuple[int, int] | None = None) -> PatchReading:
    """Top-k tokens per patch of [patches, T] coefficients on a square grid (or the given one)."""
    patches = coefficients.shape[0]
    side = math.isqrt(patches)
    if grid is None and side * side != patches:
        raise ValueError(f"{patches} visual tokens do not form a square grid (CLS kept?); cannot place them on the image.")
    weights, ids = coefficients.float().topk(top_k, dim=-1)
    return PatchReading(
        grid=grid or (side, side),
        tokens=[[strings[i] for i in row] for row in ids.tolist()],
        weights=weights.tolist(),
        token_ids=ids.tolist(),
    )


def draw_overlay(image: Image.Image, reading: PatchReading | TiledReading, path: str | Path, cell: int = 96, lines: int = 2,
                 title: str | None = None) -> Path:
    """The image enlarged, the patch grid over it, and each patch's top tokens written in its cell. A tiled reading
    draws the base view, and below it the tiles over the image as fitted into its grid resolution (tile borders bold)."""
    if isinstance(reading, TiledReading):
        return _draw_tiled(image, reading, path, cell, lines, title)
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


def _draw_tiled(image: Image.Image, reading: TiledReading, path: str | Path, cell: int, lines: int, title: str | None) -> Path:
    path = Path(path)
    base = Image.open(draw_overlay(image, reading.base, path, cell, lines, (title + "  |  " if title else "") + "base view"))
    base.load()
    top, left, height, width = reading.placement
    canvas = Image.new("RGB", (reading.canvas[1], reading.canvas[0]), "black")
    canvas.paste(image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC), (left, top))
    rows, columns = reading.tile_grid
    tiles = Image.open(draw_overlay(canvas, reading.tiles, path, cell, lines, f"{rows} x {columns} tiles"))
    tiles.load()
    draw = ImageDraw.Draw(tiles)
    per_tile_rows, per_tile_columns = reading.tiles.grid[0] // rows, reading.tiles.grid[1] // columns
    offset = tiles.height - reading.tiles.grid[0] * cell
    for r in range(rows):
        for c in range(columns):
            x, y = c * per_tile_columns * cell, offset + r * per_tile_rows * cell
            draw.rectangle([x, y, x + per_tile_columns * cell - 1, y + per_tile_rows * cell - 1], outline=(220, 30, 30), width=3)
    sheet = Image.new("RGB", (max(base.width, tiles.width), base.height + 12 + tiles.height), "white")
    sheet.paste(base, (0, 0))
    sheet.paste(tiles, (0, base.height + 12))
    sheet.save(path)
    return path
