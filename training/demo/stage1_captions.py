"""Stage 1's own test: caption unseen images in the pretraining format (the image, then the caption), scored per
attribute. It measures a connector before any SFT, so a transferred adapter can be judged by what it carries, apart
from what a short SFT adds or cannot repair."""

import json
import re
from pathlib import Path

import torch
from PIL import Image

from .world import COLOURS, COLUMNS, NUMBERS, SHAPES

ATTRIBUTES = ("count", "colour", "shape", "column")
CAPTION = re.compile(
    rf"^({'|'.join(NUMBERS)}) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})s? on the ({'|'.join(COLUMNS)})\.?$"
)


def parse_caption(text: str) -> dict[str, str] | None:
    """The four attributes of a caption in the world's wording, or None when it is not one."""
    match = CAPTION.match(text.strip())
    return dict(zip(ATTRIBUTES, match.groups())) if match else None


def caption_accuracy(
    model_dir: str | Path,
    captions_file: str | Path,
    image_folder: str | Path,
    predictions: Path | None = None,
    batch_size: int = 64,
    max_new_tokens: int = 12,
    use_kernels: bool | None = None,
) -> dict:
    """Share of images whose greedy caption is exactly right, and right per attribute (a caption not in the world's
    wording counts as wrong for every attribute)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from modeling_langbridge.analysis.alignment import read_captions
    from modeling_langbridge.model.modeling_langbridge import hub_kernels_wanted

    model = AutoModelForImageTextToText.from_pretrained(model_dir, use_kernels=hub_kernels_wanted(use_kernels)).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    captions = read_captions(captions_file)
    images = {name: Path(image_folder) / name for name in sorted(captions)}
    records = caption_records(model, processor, captions, images, batch_size, max_new_tokens)
    if predictions is not None:
        predictions.write_text("".join(json.dumps(r) + "\n" for r in records))
    return scored(records)


def caption_records(
    model, processor, captions: dict, images: dict, batch_size: int = 64, max_new_tokens: int = 12, before_batch=None
) -> list[dict]:
    """Greedy captions of `images` (name: path or PIL image) in stage 1's format, each checked against `captions`
    per attribute. `before_batch(names)` is called before each batch is generated (for measures that steer the
    visual tokens)."""
    names = list(images)
    records = []
    for start in range(0, len(names), batch_size):
        batch = names[start : start + batch_size]
        pictures = [
            (images[n] if isinstance(images[n], Image.Image) else Image.open(images[n])).convert("RGB") for n in batch
        ]
        inputs = processor(
            images=pictures,
            text=[processor.image_token] * len(batch),
            return_tensors="pt",
            padding=True,
            padding_side="left",
        )
        if before_batch is not None:
            before_batch(batch)
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        texts = processor.tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        for name, text in zip(batch, texts):
            written = text.strip().split("\n")[0].strip()
            truth, read = parse_caption(captions[name]), parse_caption(written) or {}
            records.append(
                {
                    "image": name,
                    "caption": captions[name],
                    "prediction": written,
                    **{key: read.get(key) == truth[key] for key in ATTRIBUTES},
                }
            )
    return records


def scored(records: list[dict]) -> dict:
    accuracy = {key: sum(r[key] for r in records) / len(records) for key in ATTRIBUTES}
    accuracy["exact"] = sum(all(r[key] for key in ATTRIBUTES) for r in records) / len(records)
    return accuracy | {"images": len(records)}
