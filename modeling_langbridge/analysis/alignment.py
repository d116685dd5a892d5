"""How close visual tokens sit to the LLM's word embeddings: the paper's Figure 1 analysis.

An ordinary connector (LLaVA's MLP) puts visual tokens anywhere in the LLM's input space; the paper shows that
during training they drift towards the word embeddings, each patch's nearest token often naming what the patch
shows. Here that is measured for any VLM whose `get_image_features` gives the tokens the LLM reads (transformers'
`LlavaForConditionalGeneration` and ours): per patch, the vocabulary tokens of highest cosine similarity, and over
images the mean top-1 similarity and, with captions, the share of patches whose nearest token is a caption word.
"""

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from ..assembly.vocab import TokenizerVocabulary
from ..errors import LangBridgeUsageError, loading
from .interpret import PatchReading, check_top_k

# Words too common to show that a patch was grounded in the image.
FUNCTION_WORDS = {
    "a",
    "an",
    "the",
    "and",
    "or",
    "of",
    "on",
    "in",
    "at",
    "to",
    "is",
    "are",
    "with",
    "there",
    "it",
    "its",
}


def visual_tokens(model, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None = None) -> torch.Tensor:
    """The embeddings the LLM receives for each image: [images, patches, hidden] (`image_sizes` for tiled models)."""
    sizes = {} if image_sizes is None else {"image_sizes": image_sizes}
    with torch.no_grad():
        output = model.get_image_features(pixel_values=pixel_values.to(model.device, model.dtype), **sizes)
    tokens = output.pooler_output if hasattr(output, "pooler_output") else output
    return torch.stack(list(tokens))


def nearest_tokens(vectors: torch.Tensor, embeddings: torch.Tensor, top_k: int = 3, chunk: int = 4096):
    """Cosine similarity of each vector [N, D] to each embedding [V, D]; the top-k (similarities, row indices)."""
    keys = F.normalize(embeddings.float(), dim=-1)
    similarities, indices = [], []
    for start in range(0, vectors.shape[0], chunk):
        scores = F.normalize(vectors[start : start + chunk].float(), dim=-1) @ keys.T
        top = scores.topk(top_k, dim=-1)
        similarities.append(top.values)
        indices.append(top.indices)
    return torch.cat(similarities), torch.cat(indices)


class NearestWords:
    """The LLM's readable vocabulary, ready to look up visual tokens' nearest words (built once per model)."""

    def __init__(self, model, tokenizer):
        vocabulary = TokenizerVocabulary(tokenizer)
        self.ids = vocabulary.word_like_ids()  # no special, added or byte-fallback tokens, no bare spaces
        self.words = [vocabulary.text_of[i] for i in self.ids]
        embedding = model.get_input_embeddings()
        with torch.no_grad():
            self.embeddings = embedding(torch.tensor(self.ids, device=embedding.weight.device)).float()

    def read(self, tokens: torch.Tensor, top_k: int = 3) -> PatchReading:
        """`tokens` [patches, hidden] of one image -> its nearest words per patch, weights = cosine similarity."""
        check_top_k(top_k, len(self.words), "readable words of the LLM's vocabulary")
        similarities, rows = nearest_tokens(tokens, self.embeddings, top_k)
        side = math.isqrt(tokens.shape[0])
        grid = (side, side) if side * side == tokens.shape[0] else (1, tokens.shape[0])
        return PatchReading(
            grid=grid,
            tokens=[[self.words[r] for r in row] for row in rows.tolist()],
            weights=similarities.tolist(),
            token_ids=[[self.ids[r] for r in row] for row in rows.tolist()],
        )


def read_nearest(model, processor, image: Image.Image, top_k: int = 3) -> PatchReading:
    """Each patch's nearest vocabulary tokens by cosine similarity (a similarity search, for any connector)."""
    processed = processor.image_processor(image, return_tensors="pt")
    tokens = visual_tokens(model, processed["pixel_values"], processed.get("image_sizes"))
    return NearestWords(model, processor.tokenizer).read(tokens[0], top_k)


def content_words(text: str) -> set[str]:
    """Lower-cased words of a caption that could name something: function words and punctuation left out."""
    words = "".join(c if c.isalnum() else " " for c in text.lower()).split()
    return {w for w in words if w not in FUNCTION_WORDS}


@dataclass
class AlignmentPoint:
    checkpoint: str
    step: int | None
    mean_top1_cosine: float
    grounded_share: float | None  # patches whose nearest token is a content word of the image's caption
    patches: int


def measure(
    model,
    processor,
    images: list[Image.Image],
    captions: list[str] | None = None,
    checkpoint: str = "",
    step: int | None = None,
) -> AlignmentPoint:
    """Mean top-1 cosine similarity of the visual tokens to the vocabulary, and the grounded share."""
    words = NearestWords(model, processor.tokenizer)
    top1, grounded, patches = [], 0, 0
    for index, image in enumerate(images):
        processed = processor.image_processor(image, return_tensors="pt")
        reading = words.read(visual_tokens(model, processed["pixel_values"], processed.get("image_sizes"))[0], top_k=1)
        top1 += [w[0] for w in reading.weights]
        patches += len(reading.tokens)
        if captions:
            named = content_words(captions[index])
            grounded += sum(t[0].strip().lower() in named for t in reading.tokens)
    return AlignmentPoint(checkpoint, step, sum(top1) / len(top1), grounded / patches if captions else None, patches)


def checkpoint_step(folder: Path) -> int | None:
    """The training step of a Trainer checkpoint (`checkpoint-N`), else None."""
    state = folder / "trainer_state.json"
    if state.exists():
        return json.loads(state.read_text()).get("global_step")
    name = folder.name
    return int(name.rsplit("-", 1)[1]) if name.startswith("checkpoint-") and name.rsplit("-", 1)[1].isdigit() else None


def expand_checkpoints(paths: list[str | Path]) -> list[Path]:
    """Model folders as given; a training output folder becomes its checkpoint-N folders by step, then itself
    when it holds the final model."""
    folders = []
    for path in map(Path, paths):
        inner = sorted(
            (p for p in path.glob("checkpoint-*") if (p / "config.json").exists()),
            key=lambda p: checkpoint_step(p) or 0,
        )
        if inner:
            folders += inner + ([path] if (path / "config.json").exists() else [])
        else:
            folders.append(path)
    return folders


def read_captions(path: str | Path) -> dict[str, str]:
    """Image file name -> caption, from LLaVA JSON (the assistant's turn) or a plain {image: caption} object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LangBridgeUsageError(
            f"{path} is not a UTF-8 JSON file ({error}); give LLaVA JSON (image + conversations) or {{image: caption}}."
        ) from None
    if isinstance(data, dict) and all(isinstance(v, str) for v in data.values()):
        return {Path(k).name: v for k, v in data.items()}
    captions = {}
    try:
        for record in data if isinstance(data, list) else [None]:
            replies = [
                turn["value"] for turn in record.get("conversations", []) if turn.get("from") in ("gpt", "assistant")
            ]
            if "image" in record and replies:
                captions[Path(record["image"]).name] = replies[0]
    except (AttributeError, KeyError, TypeError) as error:
        raise LangBridgeUsageError(
            f"{path} is neither LLaVA JSON (a list of records with image and conversations) nor an {{image: caption}} "
            f"object ({type(error).__name__}: {error}); give captions in one of those layouts."
        ) from None
    return captions


def alignment_curve(
    checkpoints: list[str | Path],
    images: list[Image.Image],
    captions: list[str] | None = None,
    progress: bool = True,
    use_kernels: bool | None = None,
) -> list[AlignmentPoint]:
    """`measure` at each checkpoint (model folders loadable with AutoModelForImageTextToText); `use_kernels`: Hub
    kernels for them (default: only when the Hub may be reached)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ..model.modeling_langbridge import hub_kernels_wanted

    points = []
    for checkpoint in tqdm(checkpoints, desc="Checkpoints", disable=not progress):
        with loading("checkpoint", checkpoint):
            model = AutoModelForImageTextToText.from_pretrained(
                checkpoint, use_kernels=hub_kernels_wanted(use_kernels)
            ).eval()
            processor = AutoProcessor.from_pretrained(checkpoint)
        points.append(measure(model, processor, images, captions, str(checkpoint), checkpoint_step(Path(checkpoint))))
    return points


def plot_alignment(
    series: dict[str, list[AlignmentPoint]],
    path: str | Path,
    title: str = "Visual tokens vs. the LLM's word embeddings",
) -> Path:
    """Both measures against the training step (or the checkpoint's place in the order given), a line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    everything = [p for points in series.values() for p in points]
    by_step = all(p.step is not None for p in everything)
    with_captions = all(p.grounded_share is not None for p in everything)
    figure, axes = plt.subplots(
        1, 2 if with_captions else 1, figsize=(10 if with_captions else 5.5, 3.8), squeeze=False
    )
    axes = axes[0]
    for label, points in series.items():
        steps = [p.step for p in points] if by_step else list(range(len(points)))
        axes[0].plot(steps, [p.mean_top1_cosine for p in points], marker="o", label=label or None)
        if with_captions:
            axes[1].plot(steps, [100 * p.grounded_share for p in points], marker="o", label=label or None)
    xlabel = "training step" if by_step else "checkpoint (in the order given)"
    axes[0].set(title="mean top-1 cosine similarity", xlabel=xlabel)
    if with_captions:
        axes[1].set(title="nearest token is a caption word (% of patches)", xlabel=xlabel)
    for ax in axes:
        ax.grid(alpha=0.3)
        if any(series):
            ax.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


def save_points(points: list[AlignmentPoint], path: str | Path) -> Path:
    Path(path).write_text(json.dumps([asdict(p) for p in points], indent=1))
    return Path(path)
