"""A small vision encoder for the synthetic world, trained on attribute prediction and then frozen, as CLIP is
frozen in LLaVA. It is an ordinary `CLIPVisionModel` folder with a `CLIPImageProcessor`, so `compose` loads it
like any real tower.

The objective: every patch says what stands in its column, one of 36 (shape x colour x count) or nothing. So
each patch carries its column's colour, shape and count: what the world's questions ask about.
"""

from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

from .world import COLOURS, SHAPES, render, scenes

KINDS = [(s, c, n) for s in SHAPES for c in COLOURS for n in (1, 2, 3)]


def patch_labels(scene, grid: int) -> list[int]:
    """Per patch (row-major), 0 when its column is empty, else 1 + the index of the kind standing there."""
    edges = torch.linspace(0, grid, 4).round().long().tolist()
    kind = 1 + KINDS.index((scene.shape, scene.colour, scene.count))
    return [kind if edges[scene.column] <= x < edges[scene.column + 1] else 0 for _ in range(grid) for x in range(grid)]


def train_vision_encoder(
    folder: str | Path,
    *,
    image_size: int = 64,
    patch_size: int = 8,
    hidden_size: int = 64,
    layers: int = 4,
    steps: int = 400,
    batch_size: int = 32,
    learning_rate: float = 2e-3,
    seed: int = 0,
    progress: bool = True,
    on_step=None,
) -> dict:
    """Train the encoder on freshly rendered scenes (a stream: no image is seen twice) and save it. `progress` shows
    a bar; `on_step`, if given, is called after every step.

    Returns the accuracy of the patch predictions on 256 unseen scenes.
    """
    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=hidden_size,
    )
    encoder = CLIPVisionModel(config)
    grid = image_size // patch_size
    head = nn.Linear(hidden_size, 1 + len(KINDS))
    processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    optimizer = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=steps, pct_start=0.1)

    def batch_of(scene_list):
        pixels = processor(
            [render(scene, image_size, render_seed) for scene, render_seed in scene_list], return_tensors="pt"
        )
        labels = torch.tensor([patch_labels(scene, grid) for scene, _ in scene_list])
        return pixels["pixel_values"], labels

    def logits(pixel_values):
        # Layer -2, patch tokens: what the LangBridge projector will read.
        hidden = encoder(pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]
        return head(hidden)

    stream = scenes(seed + 1000, steps * batch_size)
    encoder.train()
    for step in tqdm(range(steps), desc="Training the vision encoder", disable=not progress):
        pixel_values, labels = batch_of(stream[step * batch_size : (step + 1) * batch_size])
        loss = nn.functional.cross_entropy(logits(pixel_values).flatten(0, 1), labels.flatten())
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if on_step is not None:
            on_step()

    encoder.eval()
    with torch.no_grad():
        pixel_values, labels = batch_of(scenes(seed + 2000, 256))
        accuracy = (logits(pixel_values).argmax(-1) == labels).float().mean().item()
    encoder.save_pretrained(folder)
    processor.save_pretrained(folder)
    return {"patch_accuracy": accuracy, "steps": steps}
