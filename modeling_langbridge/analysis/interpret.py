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

from ..assembly.vocab import SharedVocabulary
from ..errors import LangBridgeUsageError


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
        Path(path).write_text(
            json.dumps(
                {
                    "views": "base view, then the tiles as one map",
                    "base": asdict(self.base),
                    "tiles": asdict(self.tiles),
                    "tile_grid": self.tile_grid,
                    "canvas": self.canvas,
                    "placement": self.placement,
                    **extra,
                },
                ensure_ascii=False,
                indent=1,
            )
        )
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
        raise LangBridgeUsageError(
            f"{type(model).__name__} has no vocabulary coefficients; only LangBridge models can be read this way."
        )
    processed = processor.image_processor(image, return_tensors="pt")
    strings = vocabulary_strings(model, processor.tokenizer)
    if not getattr(model.config, "tiling", False):
        return _reading(patch_coefficients(model, processed["pixel_values"])[0], strings, top_k)

    from ..model.tiling_langbridge import grid_shape

    tile = model.config.vision_config.image_size
    rows, columns = grid_shape((image.height, image.width), model.config.image_grid_pinpoints, tile)
    coefficients = patch_coefficients(model, processed["pixel_values"][0][: 1 + rows * columns])  # [views, P, T]
    side = math.isqrt(coefficients.shape[1])
    tiles = (
        coefficients[1:]
        .reshape(rows, columns, side, side, -1)
        .permute(0, 2, 1, 3, 4)
        .reshape(rows * columns * side * side, -1)
    )
    canvas = (rows * tile, columns * tile)
    scale = min(canvas[0] / image.height, canvas[1] / image.width)  # as the image processor fits it (aspect kept)
    height, width = min(math.ceil(image.height * scale), canvas[0]), min(math.ceil(image.width * scale), canvas[1])
    return TiledReading(
        base=_reading(coefficients[0], strings, top_k),
        tiles=_reading(tiles, strings, top_k, grid=(rows * side, columns * side)),
        tile_grid=(rows, columns),
        canvas=canvas,
        placement=((canvas[0] - height) // 2, (canvas[1] - width) // 2, height, width),
    )


def check_top_k(top_k, available: int, what: str = "tokens of the shared vocabulary") -> None:
    """`top_k` is a whole number from 1 to the number of tokens there are to rank."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= available:
        raise LangBridgeUsageError(
            f"top_k {top_k!r} is not a whole number from 1 to {available}, the number of {what}; give one in that range."
        )


def _reading(
    coefficients: torch.Tensor, strings: list[str], top_k: int, grid: tuple[int, int] | None = None
) -> PatchReading:
    """Top-k tokens per patch of [patches, T] coefficients on a square grid (or the given one)."""
    check_top_k(top_k, coefficients.shape[-1])
    patches = coefficients.shape[0]
    side = math.isqrt(patches)
    if grid is None and side * side != patches:
        raise LangBridgeUsageError(
            f"{patches} visual tokens do not form a square grid (CLS kept?); cannot place them on the image."
        )
    weights, ids = coefficients.float().topk(top_k, dim=-1)
    return PatchReading(
        grid=grid or (side, side),
        tokens=[[strings[i] for i in row] for row in ids.tolist()],
        weights=weights.tolist(),
        token_ids=ids.tolist(),
    )


def token_label(token: str) -> str:
    """A token as a person reads it: a word without its leading space, punctuation in quotes, whitespace by name."""
    text = token.strip()
    if not text:
        return "newline" if "\n" in token else "tab" if "\t" in token else "space"
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text if any(ch.isalnum() for ch in text) else f'"{text}"'


def _wrapped(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """`text` broken into lines no wider than `width` pixels (a word longer than that gets a line of its own)."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            trial = f"{line} {word}" if line else word
            if line and draw.textlength(trial, font=font) > width:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return lines


def draw_overlay(
    image: Image.Image,
    reading: PatchReading | TiledReading,
    path: str | Path,
    cell: int = 120,
    lines: int | None = None,
    title: str | None = None,
    legend: str | None = None,
) -> Path:
    """Two panels side by side: the image enlarged on its patch grid, and the same grid with each patch's top tokens
    written in its cell (strongest first, its weight in grey), so the words never hide the picture. `title` (e.g.
    the file, the question and the model's answer) is wrapped above, never cut; `lines` limits the tokens per
    patch (default: all the reading holds). The grids end at the bottom edge and the image panel starts at x = 0.
    A tiled reading draws the base view, and below it the tiles over the image as fitted into its grid resolution."""
    if isinstance(reading, TiledReading):
        return _draw_tiled(image, reading, path, cell, lines, title)
    rows, columns = reading.grid
    width, height, gap = columns * cell, rows * cell, max(12, cell // 6)
    shown = max(len(t) for t in reading.tokens) if lines is None else lines
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    heading = ImageFont.load_default(size=max(15, min(22, cell // 6)))
    small = ImageFont.load_default(size=max(12, min(16, cell // 8)))
    legend = legend or (
        f"Left: the image on its {rows} x {columns} patch grid. Right: each patch's top {shown} "
        "token(s), strongest first, with the weight in grey."
    )
    text_lines = [
        (line, heading, "black") for line in (_wrapped(measure, title, heading, 2 * width + gap - 12) if title else [])
    ]
    text_lines += [(line, small, (90, 90, 90)) for line in _wrapped(measure, legend, small, 2 * width + gap - 12)]
    top = 8 + sum(font.size + 6 for _, font, _ in text_lines) + 6
    canvas = Image.new("RGB", (2 * width + gap, top + height), "white")
    picture = image.convert("RGB").resize((width, height), Image.Resampling.NEAREST)
    canvas.paste(picture, (0, top))
    draw = ImageDraw.Draw(canvas, "RGBA")
    y = 8
    for line, font, colour in text_lines:
        draw.text((6, y), line, fill=colour, font=font)
        y += font.size + 6

    line_height = (cell - 8) // max(1, shown)
    size = max(9, min(cell // 6, int(line_height * 0.8)))
    fonts = {n: ImageFont.load_default(size=n) for n in range(9, size + 1)}
    weight_font = ImageFont.load_default(size=max(9, min(12, size - 4)))
    tokens_left = width + gap
    for index, (tokens, weights) in enumerate(zip(reading.tokens, reading.weights)):
        row, column = divmod(index, columns)
        x, y = column * cell, top + row * cell
        draw.rectangle([x, y, x + cell - 1, y + cell - 1], outline=(0, 0, 0, 70))
        mean = (
            picture.crop((x, y - top, x + cell, y - top + cell)).resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))
        )
        tx = tokens_left + x
        draw.rectangle(
            [tx, y, tx + cell - 1, y + cell - 1],
            fill=tuple(int(255 - 0.22 * (255 - c)) for c in mean),
            outline=(0, 0, 0, 110),
        )
        for line, (token, weight) in enumerate(list(zip(tokens, weights))[:shown]):
            label, value = token_label(token), f"{weight:.2g}"
            font = fonts[size]
            while (
                font.size > 9
                and draw.textlength(label, font=font) + draw.textlength(value, font=weight_font) + 12 > cell
            ):
                font = fonts[font.size - 1]
            ly = y + 4 + line * line_height
            draw.text((tx + 4, ly), label, fill=(0, 0, 0) if line == 0 else (40, 40, 40), font=font)
            draw.text(
                (tx + cell - 4 - draw.textlength(value, font=weight_font), ly + font.size - weight_font.size),
                value,
                fill=(110, 110, 110),
                font=weight_font,
            )
    path = Path(path)
    canvas.save(path)
    return path


def _draw_tiled(
    image: Image.Image, reading: TiledReading, path: str | Path, cell: int, lines: int | None, title: str | None
) -> Path:
    path = Path(path)
    base = Image.open(
        draw_overlay(image, reading.base, path, cell, lines, (title + "  |  " if title else "") + "base view")
    )
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
            draw.rectangle(
                [x, y, x + per_tile_columns * cell - 1, y + per_tile_rows * cell - 1], outline=(220, 30, 30), width=3
            )
    sheet = Image.new("RGB", (max(base.width, tiles.width), base.height + 12 + tiles.height), "white")
    sheet.paste(base, (0, 0))
    sheet.paste(tiles, (0, base.height + 12))
    sheet.save(path)
    return path
