"""High-resolution images by tiling, as LLaVA-NeXT's "anyres" does it: the geometry shared by processor and model.

An image of (height, width) is resized to fit the best of a list of grid resolutions (`image_grid_pinpoints`,
(height, width) pairs in pixels, multiples of the tower's input size), padded to it, and cut into tiles of the
tower's input size; a resized copy of the whole image (the base view) comes first. Every view goes through the
vision tower and the LangBridge projector. Then, as `patch_merge_type` says:

* `"spatial_unpad"` (LLaVA-NeXT, and the default): the tiles' visual tokens are laid out as one feature map, the
  rows or columns that only saw padding are cut away (`unpad_bounds`), with `vision_aspect_ratio="anyres_max_N"` a
  map larger than N tiles is shrunk bilinearly, and the learned `image_newline` embedding ends every row;
* `"spatial"`: the tiles' tokens row by row across the whole grid, nothing cut, no newline;
* `"flat"`: the base view, then each tile's tokens in turn.

The processor counts placeholders with `num_image_tokens` and the model packs features with the same functions,
so the two cannot disagree. The official code computes the unpadded size with `int()` (transformers rounds
first); the official rule is kept so converted checkpoints see what they were trained with.

This file travels with checkpoints as remote code: it imports only the standard library, `transformers` and its
sibling errors_langbridge.py.
"""

import math
import re

from transformers.image_processing_utils import select_best_resolution

from .errors_langbridge import LangBridgeInputError

PATCH_MERGE_TYPES = ("spatial_unpad", "spatial", "flat")
# The tiling settings' defaults: what a model without a grid (one view per image) carries, and ignores.
DEFAULT_VISION_ASPECT_RATIO = "anyres"
DEFAULT_PATCH_MERGE_TYPE = "spatial_unpad"
# LLaVA-NeXT's grid, in tiles (rows, columns): 1x2, 2x1, 2x2, 3x1, 1x3 (672 x 672 and 336 x 1008 at 336 px).
LLAVA_NEXT_GRIDS = [(1, 2), (2, 1), (2, 2), (3, 1), (1, 3)]


def max_tiles(vision_aspect_ratio: str) -> int | None:
    """N of `"anyres_max_N"`, None for plain `"anyres"`; anything else is refused with the accepted forms."""
    if vision_aspect_ratio == "anyres":
        return None
    match = re.fullmatch(r"anyres_max_(\d+)", str(vision_aspect_ratio))
    if not match or int(match.group(1)) < 1:
        raise LangBridgeInputError(
            f"vision_aspect_ratio {vision_aspect_ratio!r} is not understood: use 'anyres' (LLaVA-NeXT) or "
            "'anyres_max_N' with N >= 1 (LLaVA-OneVision: the tiled feature map is shrunk to about N tiles)."
        )
    return int(match.group(1))


def check_tiling(image_grid_pinpoints, tile_size: int, vision_aspect_ratio: str, patch_merge_type: str) -> None:
    """Refuse tiling settings that cannot work, naming the value and the fix."""
    if patch_merge_type not in PATCH_MERGE_TYPES:
        raise LangBridgeInputError(f"patch_merge_type {patch_merge_type!r} is not one of {list(PATCH_MERGE_TYPES)}.")
    max_tiles(vision_aspect_ratio)
    if not isinstance(image_grid_pinpoints, (list, tuple)) or not image_grid_pinpoints:
        raise LangBridgeInputError(
            f"image_grid_pinpoints must be a non-empty list of [height, width] pairs in pixels, not {image_grid_pinpoints!r}."
        )
    for pair in image_grid_pinpoints:
        ok = (
            isinstance(pair, (list, tuple))
            and len(pair) == 2
            and all(
                isinstance(side, int) and not isinstance(side, bool) and side > 0 and side % tile_size == 0
                for side in pair
            )
        )
        if not ok:
            raise LangBridgeInputError(
                f"image_grid_pinpoints entry {pair!r} is not a [height, width] pair of positive multiples of the vision "
                f"tower's input size {tile_size} (each side must be a whole number of tiles)."
            )


def untiled_settings(vision_aspect_ratio, patch_merge_type) -> list[str]:
    """The tiling settings given other values than their defaults: they do nothing without a grid."""
    given = {"vision_aspect_ratio": vision_aspect_ratio, "patch_merge_type": patch_merge_type}
    defaults = {"vision_aspect_ratio": DEFAULT_VISION_ASPECT_RATIO, "patch_merge_type": DEFAULT_PATCH_MERGE_TYPE}
    return [f"{name} {value!r}" for name, value in given.items() if value not in (None, defaults[name])]


def check_untiled(vision_aspect_ratio, patch_merge_type) -> None:
    """Refuse tiling settings given without a grid (image_grid_pinpoints None): the model sees one view per image,
    so they would be saved and do nothing."""
    stray = untiled_settings(vision_aspect_ratio, patch_merge_type)
    if stray:
        verb, pronoun = ("apply", "them") if len(stray) > 1 else ("applies", "it")
        raise LangBridgeInputError(
            f"{' and '.join(stray)} only {verb} when images are tiled, and image_grid_pinpoints is not set (one view "
            "per image): give image_grid_pinpoints too (with langbridge-hf installed: `langbridge compose "
            f"--image-grid-pinpoints llava-next`), or leave {pronoun} out."
        )


def grid_pinpoints(grids, tile_size: int) -> list[list[int]]:
    """`image_grid_pinpoints` in pixels from grids in tiles: `[(rows, columns), ...]`, or a string `"1x2,2x1,2x2"`,
    `"(1x1),...,(3x3)"` (every grid in that range, as the official scripts write it) or `"llava-next"`."""
    if isinstance(grids, str):
        text = grids.strip()
        if text == "llava-next":
            grids = LLAVA_NEXT_GRIDS
        elif "..." in text:
            ends = re.findall(r"\((\d+)x(\d+)\)", text)
            if len(ends) < 2:
                raise LangBridgeInputError(f"cannot read the grid range {grids!r}; write it as '(1x1),...,(3x3)'.")
            (r0, c0), (r1, c1) = (tuple(map(int, e)) for e in (ends[0], ends[-1]))
            grids = [(r, c) for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)]
        else:
            try:
                grids = [tuple(int(n) for n in item.strip().strip("()").split("x")) for item in text.split(",")]
            except ValueError:
                raise LangBridgeInputError(
                    f"cannot read the grids {grids!r}; write them as 'ROWSxCOLUMNS,...', e.g. '1x2,2x1,2x2'."
                ) from None
    if any(len(g) != 2 or min(int(n) for n in g) < 1 for g in grids):
        raise LangBridgeInputError(f"every grid needs a positive number of rows and columns, not {grids!r}.")
    return [[int(rows) * tile_size, int(columns) * tile_size] for rows, columns in grids]


def grid_shape(image_size, image_grid_pinpoints, tile_size: int) -> tuple[int, int]:
    """(rows, columns) of tiles an image of `image_size` (height, width) is cut into: the best-fitting pinpoint."""
    height, width = select_best_resolution([int(s) for s in image_size], [list(p) for p in image_grid_pinpoints])
    return height // tile_size, width // tile_size


def unpad_bounds(map_height: int, map_width: int, image_size) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the part of a [map_height x map_width] tiled feature map that saw the image,
    not the padding around it (the official `unpad_image`, including its `int()`)."""
    original_height, original_width = (int(s) for s in image_size)
    if original_width / original_height > map_width / map_height:  # padded above and below
        new_height = int(original_height * (map_width / original_width))
        padding = (map_height - new_height) // 2
        return padding, map_height - padding, 0, map_width
    new_width = int(original_width * (map_height / original_height))
    padding = (map_width - new_width) // 2
    return 0, map_height, padding, map_width - padding


def shrunk_size(height: int, width: int, side: int, vision_aspect_ratio: str) -> tuple[int, int] | None:
    """With `anyres_max_N`, the size an unpadded map of (height, width) is shrunk to when it holds more than about
    N tiles of side x side tokens (the official 1.1 slack); None when it is kept."""
    limit = max_tiles(vision_aspect_ratio)
    if limit is None:
        return None
    times = math.sqrt(height * width / (limit * side**2))
    if times <= 1.1:
        return None
    return int(height // times), int(width // times)


def tiled_layout(
    image_size, image_grid_pinpoints, tile_size: int, side: int, vision_aspect_ratio: str, patch_merge_type: str
) -> dict:
    """Where an image's visual tokens come from: `views` (base + tiles), the tile `grid` (rows, columns), and for
    `spatial_unpad` the kept `bounds` of the tiled map, its final `map` size (after any shrinking) and `newlines`."""
    rows, columns = grid_shape(image_size, image_grid_pinpoints, tile_size)
    layout = {"views": 1 + rows * columns, "grid": (rows, columns)}
    if patch_merge_type != "spatial_unpad":
        layout["tokens"] = layout["views"] * side * side
        return layout
    top, bottom, left, right = unpad_bounds(rows * side, columns * side, image_size)
    height, width = bottom - top, right - left
    layout["bounds"] = (top, bottom, left, right)
    layout["map"] = shrunk_size(height, width, side, vision_aspect_ratio) or (height, width)
    layout["newlines"] = layout["map"][0]
    layout["tokens"] = side * side + layout["map"][0] * (layout["map"][1] + 1)
    return layout


def num_views(image_size, image_grid_pinpoints, tile_size: int) -> int:
    """How many views (base + tiles) the image processor makes of an image of this (height, width)."""
    rows, columns = grid_shape(image_size, image_grid_pinpoints, tile_size)
    return 1 + rows * columns


def num_image_tokens(
    image_size, image_grid_pinpoints, tile_size: int, side: int, vision_aspect_ratio: str, patch_merge_type: str
) -> int:
    """Visual tokens (= placeholders) of an image of this original (height, width) when tiled."""
    return tiled_layout(image_size, image_grid_pinpoints, tile_size, side, vision_aspect_ratio, patch_merge_type)[
        "tokens"
    ]


__all__ = [
    "check_tiling",
    "check_untiled",
    "grid_pinpoints",
    "grid_shape",
    "num_image_tokens",
    "num_views",
    "tiled_layout",
    "unpad_bounds",
]
