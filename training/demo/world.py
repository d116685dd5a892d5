"""A small synthetic vision-language world: scenes of coloured shapes, their captions, and questions about them.

Deterministic from a seed, rendered with PIL, written in LLaVA's JSON layout (an image folder plus
`conversations` records) and as a `datasets` dataset, so the training recipes read it as they read real data.
Held-out questions are written as JSONL (image, question, answers, kind) for scoring by generation.
"""

import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30)}
SHAPES = ("circle", "square", "triangle")
COLUMNS = ("left", "centre", "right")
NUMBERS = ("zero", "one", "two", "three")
QUESTION_KINDS = ("colour", "shape", "count", "position", "existence", "yes/no")


@dataclass(frozen=True)
class Scene:
    """One kind of shape, drawn `count` times one above the other in one column. One kind per scene keeps every
    question a matter of reading the picture, not of binding attributes to objects (beyond LLMs this small)."""

    shape: str
    colour: str
    column: int  # 0 left, 1 centre, 2 right
    rows: tuple[int, ...]  # the rows (0 top .. 2 bottom) a copy stands in

    @property
    def count(self) -> int:
        return len(self.rows)

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


def random_scene(rng: random.Random) -> Scene:
    count = rng.randint(1, 3)
    return Scene(
        rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.randrange(3), tuple(sorted(rng.sample(range(3), count)))
    )


def render(scene: Scene, size: int = 64, seed: int = 0) -> Image.Image:
    """The scene on a light background, with a little jitter so no two renderings are the same."""
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), (245, 245, 240))
    draw = ImageDraw.Draw(image)
    cell = size / 3
    for row in scene.rows:
        radius = cell * rng.uniform(0.26, 0.34)
        cx = (scene.column + 0.5) * cell + rng.uniform(-cell / 12, cell / 12)
        cy = (row + 0.5) * cell + rng.uniform(-cell / 12, cell / 12)
        box = [cx - radius, cy - radius, cx + radius, cy + radius]
        fill = COLOURS[scene.colour]
        if scene.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif scene.shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill)
    return image


def caption(scene: Scene) -> str:
    plural = "s" if scene.count > 1 else ""
    return f"{NUMBERS[scene.count]} {scene.name}{plural} on the {COLUMNS[scene.column]}."


def questions(scene: Scene, rng: random.Random) -> list[tuple[str, str, str]]:
    """(kind, question, answer), one of each kind in QUESTION_KINDS. Answers are single words."""
    present = rng.random() < 0.5
    others = [
        (s, c)
        for s in SHAPES
        for c in COLOURS
        if (s, c) != (scene.shape, scene.colour) and (s == scene.shape or c == scene.colour)
    ]  # absent kinds that share a word with the one present
    asked_shape, asked_colour = (scene.shape, scene.colour) if present else rng.choice(others)
    claimed_column = scene.column if rng.random() < 0.5 else rng.choice([c for c in range(3) if c != scene.column])
    return [
        ("colour", f"What colour is the {scene.shape}?", scene.colour),
        ("shape", f"What shape is the {scene.colour} object?", scene.shape),
        ("count", "How many shapes are there?", NUMBERS[scene.count]),
        ("position", f"Where is the {scene.name}?", COLUMNS[scene.column]),
        ("existence", f"Is there a {asked_colour} {asked_shape}?", "yes" if present else "no"),
        (
            "yes/no",
            f"Is the {scene.name} on the {COLUMNS[claimed_column]}?",
            "yes" if claimed_column == scene.column else "no",
        ),
    ]


def scenes(seed: int, count: int) -> list[tuple[Scene, int]]:
    """`count` scenes with their rendering seeds, deterministic from `seed`."""
    rng = random.Random(seed)
    return [(random_scene(rng), rng.randrange(1 << 30)) for _ in range(count)]


def write_split(folder: str | Path, name: str, seed: int, num_scenes: int, image_size: int = 64) -> dict:
    """One split of the world: its images, and the same scenes as captions (stage 1), conversations (stage 2)
    and single questions (scoring). Returns the paths written."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed + 1)
    captions, conversations, evaluation = [], [], []
    for n, (scene, render_seed) in enumerate(scenes(seed, num_scenes)):
        image = f"{name}_{n:06d}.png"
        render(scene, image_size, render_seed).save(folder / "images" / image)
        captions.append(
            {
                "id": f"{name}-{n}",
                "image": image,
                "conversations": [
                    {"from": "human", "value": "<image>\nDescribe the image briefly."},
                    {"from": "gpt", "value": caption(scene)},
                ],
            }
        )
        asked = questions(scene, rng)
        for kind, question, answer in asked:
            evaluation.append({"image": image, "question": question, "answers": [answer], "kind": kind})
        rng.shuffle(asked)
        turns = []
        for position, (_, question, answer) in enumerate(asked[:3]):
            turns += [
                {"from": "human", "value": ("<image>\n" if position == 0 else "") + question},
                {"from": "gpt", "value": answer},
            ]
        conversations.append({"id": f"{name}-{n}", "image": image, "conversations": turns})
    paths = {"images": folder / "images"}
    for kind, records in (("captions", captions), ("conversations", conversations)):
        paths[kind] = folder / f"{name}_{kind}.json"
        paths[kind].write_text(json.dumps(records, indent=1))
    paths["questions"] = folder / f"{name}_questions.jsonl"
    paths["questions"].write_text("".join(json.dumps(r) + "\n" for r in evaluation))
    return paths


def write_messages_dataset(llava_json: str | Path, image_folder: str | Path, out: str | Path) -> Path:
    """The same samples as a `datasets` dataset (`messages` + embedded `images`), saved with `save_to_disk`."""
    from datasets import Dataset, Sequence
    from datasets import Image as ImageFeature

    from ..data import llava_record_to_sample

    rows = {"messages": [], "images": []}
    for record in json.loads(Path(llava_json).read_text()):
        sample = llava_record_to_sample(record, image_folder)
        rows["messages"].append(sample["messages"])
        rows["images"].append(sample["images"])
    Dataset.from_dict(rows).cast_column("images", Sequence(ImageFeature())).save_to_disk(out)
    return Path(out)


def scene_table(scene: Scene) -> str:
    """The scene as a table of words read row by row, the way an image's 3 x 3 patches are read: the count in
    the left, centre and right columns, then their colours, then their shapes (`none` for an empty column)."""
    rows = [
        [word if column == scene.column else "none" for column in range(3)]
        for word in (NUMBERS[scene.count], scene.colour, scene.shape)
    ]
    return " ".join(word for row in rows for word in row)


def world_texts(seed: int, num_scenes: int) -> list[str]:
    """What the world's LLMs read before they see an image. Like a real LLM's corpus, it teaches them to use
    what came before: a scene table is followed by the sentence it makes, a description by questions about
    it (answered from it), plus plain phrasing about the shapes. (A real LLM knows countless text formats; this
    one knows the table, the form a word-by-word reading of an image's patches can take.)"""
    rng = random.Random(seed)
    documents = []
    for scene, _ in scenes(seed, num_scenes):
        asked = [f"{q} {a}." for _, q, a in questions(scene, rng)]
        rng.shuffle(asked)
        documents.append(scene_table(scene) + "\n" + caption(scene))
        documents.append(caption(scene) + "\n" + "\n".join(asked[:3]))
        if rng.random() < 0.7:  # reading skills first; plain phrasing now and then
            continue
        documents.append(
            rng.choice(
                [
                    f"The {scene.shape} is {scene.colour}.",
                    f"A {scene.shape} can be {', '.join(list(COLOURS)[:-1])} or {list(COLOURS)[-1]}.",
                    f"There are {NUMBERS[scene.count]} shapes here, all of them {scene.colour}.",
                    f"Left, centre and right are the three places a shape can be. This {scene.shape} is on the {COLUMNS[scene.column]}.",
                ]
            )
        )
    return documents


def world_dialogues(seed: int, num_scenes: int) -> list[list[dict]]:
    """Chat conversations about described scenes: the user gives the description, the assistant answers."""
    rng = random.Random(seed)
    dialogues = []
    for scene, _ in scenes(seed, num_scenes):
        asked = rng.sample(questions(scene, rng), 2)
        first = {"role": "user", "content": f"{caption(scene)}\n{asked[0][1]}"}
        dialogues.append(
            [
                first,
                {"role": "assistant", "content": asked[0][2]},
                {"role": "user", "content": asked[1][1]},
                {"role": "assistant", "content": asked[1][2]},
            ]
        )
    return dialogues


def write_llava_dataset(
    folder: str | Path, num_scenes: int, seed: int = 0, kind: str = "caption", image_size: int = 64
) -> Path:
    """One LLaVA JSON file of the world: `caption` (one image-caption pair per scene, as
    `blip_laion_cc_sbu_558k.json`) or `qa` (a multi-turn conversation per scene, as `llava_v1_5_mix665k.json`)."""
    paths = write_split(folder, f"s{seed}", seed, num_scenes, image_size)
    return paths["captions" if kind == "caption" else "conversations"]
