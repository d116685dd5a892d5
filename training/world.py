"""A small synthetic vision-language world: scenes of coloured shapes, their captions, and questions about them.

Deterministic from a seed, rendered with PIL, written in LLaVA's JSON layout (an image folder plus
`conversations` records) so the training recipes read it exactly as they read real data.
"""

import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.16, "large": 0.3}
COLUMNS = ("left", "centre", "right")
NUMBERS = ("zero", "one", "two", "three", "four")


@dataclass(frozen=True)
class Thing:
    shape: str
    colour: str
    size: str
    column: int  # 0 left, 1 centre, 2 right

    @property
    def name(self) -> str:
        return f"{self.size} {self.colour} {self.shape}"


def random_scene(rng: random.Random, max_things: int = 3) -> list[Thing]:
    """One to `max_things` shapes, each in its own column, no two alike in shape and colour."""
    count = rng.randint(1, max_things)
    columns = rng.sample(range(3), count)
    kinds = rng.sample([(s, c) for s in SHAPES for c in COLOURS], count)
    return [Thing(shape, colour, rng.choice(list(SIZES)), column) for (shape, colour), column in zip(kinds, columns)]


def render(scene: list[Thing], size: int = 64, seed: int = 0) -> Image.Image:
    """The scene on a light background, with a little jitter so no two renderings are the same."""
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), (245, 245, 240))
    draw = ImageDraw.Draw(image)
    for thing in sorted(scene, key=lambda t: t.column):
        radius = SIZES[thing.size] * size / 2 * 1.6
        cx = (thing.column + 0.5) * size / 3 + rng.uniform(-2, 2)
        cy = size / 2 + rng.uniform(-size / 6, size / 6)
        box = [cx - radius, cy - radius, cx + radius, cy + radius]
        fill = COLOURS[thing.colour]
        if thing.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif thing.shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill)
    return image


def caption(scene: list[Thing]) -> str:
    parts = [f"a {t.name} on the {COLUMNS[t.column]}" for t in sorted(scene, key=lambda t: t.column)]
    return (", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]) + "."


def questions(scene: list[Thing], rng: random.Random) -> list[tuple[str, str, str]]:
    """(kind, question, answer) about the scene: colour, shape, count, position, existence."""
    thing = rng.choice(scene)
    absent = rng.choice([(s, c) for s in SHAPES for c in COLOURS if not any(t.shape == s and t.colour == c for t in scene)])
    present = rng.random() < 0.5
    asked_shape, asked_colour = (thing.shape, thing.colour) if present else absent
    return [
        ("colour", f"What colour is the {thing.shape}?", thing.colour),
        ("shape", f"What shape is the {thing.colour} object?", thing.shape),
        ("count", "How many shapes are there?", NUMBERS[len(scene)]),
        ("position", f"Where is the {thing.colour} {thing.shape}?", COLUMNS[thing.column]),
        ("existence", f"Is there a {asked_colour} {asked_shape}?", "yes" if present else "no"),
    ]


def write_llava_dataset(folder: str | Path, num_scenes: int, seed: int = 0, kind: str = "caption",
                        image_size: int = 64) -> Path:
    """Images in `folder/images`, records in `folder/{kind}.json` (LLaVA layout). `kind`: `caption` (one
    image-caption pair per scene, as `blip_laion_cc_sbu_558k.json`) or `qa` (a multi-turn conversation per scene,
    as `llava_v1_5_mix665k.json`)."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    records = []
    for n in range(num_scenes):
        scene = random_scene(rng)
        name = f"{seed}_{n:06d}.png"
        render(scene, image_size, seed=rng.randrange(1 << 30)).save(folder / "images" / name)
        if kind == "caption":
            conversation = [{"from": "human", "value": "<image>\nDescribe the image briefly."},
                            {"from": "gpt", "value": caption(scene)}]
        else:
            turns = questions(scene, rng)
            rng.shuffle(turns)
            conversation = []
            for position, (_, question, answer) in enumerate(turns[:2]):
                conversation.append({"from": "human", "value": ("<image>\n" if position == 0 else "") + question})
                conversation.append({"from": "gpt", "value": answer})
        records.append({"id": f"{seed}-{n}", "image": name, "conversations": conversation})
    path = folder / f"{kind}.json"
    path.write_text(json.dumps(records, indent=1))
    return path
