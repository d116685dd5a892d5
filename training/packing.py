"""Padding-free and packed batches of image-text samples (TRL's `padding_free` and `packing`, which TRL 1.16 refuses
for vision data).

A packed batch holds whole samples one after another in each row: `position_ids` restart at 0 at every sample and
there is no `attention_mask`, so transformers builds each sample's own causal mask from the positions (SDPA, eager,
flex attention: `masking_utils.find_packed_sequence_indices`) and flash attention runs its variable-length kernel on
the sample boundaries (`cu_seq_lens_q`/`_k`, given here, as TRL gives them). Each sample's images sit at its own
placeholders (`pixel_values` and `image_sizes` follow the samples in row order), and the first token of every sample
is -100 in the labels, so no token is ever predicted from the sample before it.

Three layouts (`Packing.mode`):
- `padded`: as before, one sample a row, padded to the longest.
- `padding_free`: the samples of each batch, as the sampler drew them, concatenated: with SDPA / eager / flex
  attention, which compute (masked) attention over a whole row, in the fewest rows of at most `max_length` tokens,
  balanced; with flash attention, whose varlen kernel pays only for each sample's own length, in one row.
- `packed`: before training, whole samples are packed by best-fit decreasing into rows of at most `max_length`
  tokens (their lengths measured with the truncation check, images counted by their size); a dataset item is a row,
  and a batch is `per_device_train_batch_size` rows.
"""

from collections import defaultdict, deque
from dataclasses import dataclass

import torch

from modeling_langbridge.errors import LangBridgeUsageError

# Attention implementations that keep a packed sample to itself: the masks transformers builds from `position_ids`
# (sdpa, eager, flex_attention), or flash attention's variable-length path (any implementation named "flash...").
MASKED_ATTENTION = ("sdpa", "eager", "flex_attention")
# Layer kinds whose sequence mixing is attention under those masks; linear-attention and state-space layers
# (Qwen3-Next, Jamba, Mamba hybrids) carry state across the row and would mix the samples.
ATTENTION_LAYERS = {"full_attention", "sliding_attention"}
ATTENTION_ACCEPTED = (
    "sdpa, eager, flex_attention, or a flash attention (flash_attention_2, flash_attention_3, a kernels-community "
    "flash-attn kernel)"
)


def packs_samples_apart(attn_implementation: str | None) -> bool:
    """Whether an attention implementation keeps each packed sample to itself (None: transformers' default, sdpa)."""
    if attn_implementation is None:
        return True
    name = str(attn_implementation)
    return name in MASKED_ATTENTION or ("flash" in name and not name.startswith("paged"))


def is_flash(attn_implementation: str | None) -> bool:
    return attn_implementation is not None and "flash" in str(attn_implementation)


@dataclass(frozen=True)
class Packing:
    """How a recipe lays out its batches (module docstring). `one_row`: every sample of a batch in one row, the
    boundaries handed to flash attention's varlen kernel; otherwise rows of at most `max_length` tokens."""

    mode: str = "padded"  # "padded", "padding_free" or "packed"
    one_row: bool = False

    @property
    def on(self) -> bool:
        return self.mode != "padded"

    def for_model(self, model) -> "Packing":
        """This layout checked against the loaded model (`check_model_packs`), in one row under flash attention."""
        if not self.on:
            return self
        implementation = check_model_packs(model)
        return Packing(self.mode, one_row=is_flash(implementation))


def check_model_packs(model) -> str:
    """The LLM's attention implementation, once it is known to keep packed samples apart; refused otherwise.

    transformers builds a packed row's per-sample masks from `position_ids` only in LLMs whose forward makes its
    masks with `masking_utils` from them (every decoder LLM of the Llama, Qwen, Mistral, Gemma, Phi families; not
    BLOOM or MPT, whose positions come from the attention mask), and only for attention layers."""
    import inspect
    import re

    language_model = getattr(getattr(model, "model", model), "language_model", model)
    config = language_model.config
    implementation = getattr(config, "_attn_implementation", None)
    if not packs_samples_apart(implementation):
        raise LangBridgeUsageError(
            f"padding_free and packing need an attention that keeps each packed sample to itself; this model's LLM "
            f"runs {implementation!r}. Load it with attn_implementation: one of {ATTENTION_ACCEPTED}, or set "
            "padding_free: false and packing: false."
        )
    layers = set(getattr(config, "layer_types", None) or ()) - ATTENTION_LAYERS
    try:
        source = inspect.getsource(type(language_model).forward)
    except (OSError, TypeError):
        source = ""
    builds_masks = re.search(r"create_\w*mask|mask_function", source) and "position_ids" in source
    if layers or not builds_masks or getattr(config, "alibi", False):
        why = (
            f"its {sorted(layers)} layers carry state along the row"
            if layers
            else "its positions come from the attention mask (ALiBi)"
            if getattr(config, "alibi", False)
            else "it does not build its attention masks from position_ids with transformers' masking_utils"
        )
        raise LangBridgeUsageError(
            f"padding_free and packing cannot keep packed samples apart in this model's LLM "
            f"({type(language_model).__name__}): {why}. Set padding_free: false and packing: false for it."
        )
    return implementation


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` packed into bins of at most `capacity`, longest first, each into the bin it fills best
    (TRL's `bfd`, with a segment tree over the free space; "Fewer Truncations Improve Language Modeling"). Every
    length must be at most `capacity`. Bins come out in the order they were opened, their indices longest first."""
    size = 1 << max(capacity - 1, 0).bit_length()
    tree = [0] * (2 * size)  # max free space (a value in 1..capacity) over each range of free-space values

    def set_free(space: int, present: bool) -> None:
        i = size + space - 1
        tree[i] = space if present else 0
        while i > 1:
            i >>= 1
            left, right = tree[2 * i], tree[2 * i + 1]
            tree[i] = left if left >= right else right

    def smallest_at_least(length: int) -> int:  # the least free space >= length, or 0 if none
        if tree[1] < length:
            return 0
        i = 1
        while i < size:
            i = 2 * i if tree[2 * i] >= length else 2 * i + 1
        return tree[i]

    bins: list[list[int]] = []
    by_space: dict[int, deque] = defaultdict(deque)
    for index in sorted(range(len(lengths)), key=lambda n: -lengths[n]):
        length = lengths[index]
        if not 0 < length <= capacity:
            raise ValueError(f"sample {index} is {length} tokens; bins hold 1 to {capacity}")
        space = smallest_at_least(length)
        if space:
            bin_index = by_space[space].popleft()
            if not by_space[space]:
                set_free(space, False)
        else:
            bins.append([])
            bin_index, space = len(bins) - 1, capacity
        bins[bin_index].append(index)
        space -= length
        if space:
            by_space[space].append(bin_index)
            set_free(space, True)
    return bins


def balanced_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """A batch's samples in the fewest rows of at most `capacity` tokens that hold them, as even as longest-first
    placement makes them (each sample into the emptiest row it fits), so the rows end close together and little
    padding is left at their ends. Within a row, samples keep the batch's order."""
    rows: list[list[int]] = [[] for _ in range(max(1, -(-sum(lengths) // capacity)))]
    loads = [0] * len(rows)
    for index in sorted(range(len(lengths)), key=lambda n: -lengths[n]):
        fitting = [r for r in range(len(rows)) if loads[r] + lengths[index] <= capacity]
        if not fitting:
            rows.append([])
            loads.append(0)
            fitting = [len(rows) - 1]
        row = min(fitting, key=lambda r: loads[r])
        rows[row].append(index)
        loads[row] += lengths[index]
    return [sorted(row) for row in rows if row]


def row_layout(lengths: list[int], groups: list[int] | None, capacity: int | None, one_row: bool) -> list[list[int]]:
    """Which samples (indices of `lengths`) go in which row, in order. One row for all under flash attention.
    Otherwise rows of at most `capacity` tokens: with `groups` (packed: a group is a row planned before training),
    each group in its own row, in its order, a sample that no longer fits (a bad image's replacement is longer)
    starting another; without (padding-free), the batch's samples in as few rows as hold them, balanced
    (`balanced_rows`)."""
    everyone = list(range(len(lengths)))
    if one_row or (capacity is None and groups is None):
        return [everyone]
    if groups is None:
        return balanced_rows(lengths, capacity)
    rows: list[list[int]] = []
    previous, used = None, 0
    for index in everyone:
        if groups[index] != previous or (capacity is not None and used + lengths[index] > capacity):
            rows.append([])
            previous, used = groups[index], 0
        rows[-1].append(index)
        used += lengths[index]
    return rows


def pack_batch(
    batch: dict,
    rows: list[list[int]],
    images_per_sample: list[int],
    views_per_image: list[int],
    pad_id: int,
    varlen: bool = False,
) -> dict:
    """A padded batch of samples (one a row, right-padded, `attention_mask` marking their tokens; labels already -100
    where nothing is learned) laid out in packed `rows` of sample indices.

    Returns `input_ids`, `labels`, `position_ids` [rows, longest row] (row ends padded: pad tokens, -100, and
    positions restarting at 0 so the padding is a sequence of its own), `pixel_values` (and `image_sizes`) in the
    rows' sample order, `sample_spans` [samples, 3] (row, start, length) in that order, the order of the images, and
    with `varlen` (one row) flash attention's `cu_seq_lens_q`/`_k` and `max_length_q`/`_k`. No `attention_mask`, and
    `use_cache` False."""
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    image_starts = [0]
    for count in images_per_sample:
        image_starts.append(image_starts[-1] + count)
    view_starts = [0]  # views: rows of pixel_values (a tiled image has several)
    for count in views_per_image:
        view_starts.append(view_starts[-1] + count)

    width = max(sum(lengths[i] for i in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=batch["input_ids"].dtype)
    labels = torch.full((len(rows), width), -100, dtype=batch["labels"].dtype)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    spans, image_order, view_order = [], [], []
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            n = lengths[i]
            input_ids[r, start : start + n] = batch["input_ids"][i, :n]
            labels[r, start : start + n] = batch["labels"][i, :n]
            labels[r, start] = -100  # a sample's first token is never predicted from the sample before it
            position_ids[r, start : start + n] = torch.arange(n)
            spans.append((r, start, n))
            images = range(image_starts[i], image_starts[i + 1])
            image_order.extend(images)
            view_order.extend(v for image in images for v in range(view_starts[image], view_starts[image + 1]))
            start += n
        position_ids[r, start:] = torch.arange(width - start)
    # transformers builds the per-sample masks only without a cache: a model left to its default (`use_cache`, true
    # in eval mode) would make one and let every sample attend to the ones before it. Training passes False anyway.
    packed = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "use_cache": False}
    if "pixel_values" in batch:
        packed["pixel_values"] = batch["pixel_values"][torch.tensor(view_order, dtype=torch.long)]
    if "image_sizes" in batch:
        packed["image_sizes"] = batch["image_sizes"][torch.tensor(image_order, dtype=torch.long)]
    packed["sample_spans"] = torch.tensor(spans, dtype=torch.long).reshape(-1, 3)
    if varlen:  # the boundaries for flash attention's varlen kernel, computed here rather than in every layer
        if len(rows) != 1:
            raise ValueError("varlen boundaries are for one row")
        boundaries = torch.tensor([0, *torch.tensor([lengths[i] for i in rows[0]]).cumsum(0).tolist()])
        packed["cu_seq_lens_q"] = packed["cu_seq_lens_k"] = boundaries.to(torch.int32)
        packed["max_length_q"] = packed["max_length_k"] = max(lengths)
    return packed


def sample_labels(labels: torch.Tensor, spans: torch.Tensor | None) -> list[torch.Tensor]:
    """Each sample's labels: the rows of a padded batch, or the spans of a packed one (`sample_spans`)."""
    if spans is None:
        return list(labels)
    return [labels[row, start : start + length] for row, start, length in spans.tolist()]
