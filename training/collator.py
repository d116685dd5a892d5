"""Batches for LangBridge training: pixel values, token ids, and labels on the tokens worth learning.

Two formats, as in LLaVA: `chat` (stage 2) learns the assistant replies only, marked by the chat template's
`{% generation %}` blocks; `plain` (stage 1) shows the images and learns the caption (and LLaVA's closing newline) after them. Image
placeholders, prompts and padding are always -100, whatever the template does.

With `packing` on (`padding_free` or `packed`, training/packing.py) the samples are built exactly so, then laid out
in packed rows: no padding between samples, positions restarting at each, labels -100 at every sample's first token.
"""

from dataclasses import dataclass, field

import torch

from .data import render_plain
from .packing import Packing, pack_batch, row_layout


@dataclass
class LangBridgeCollator:
    processor: object
    max_length: int | None = None
    mode: str = "chat"  # "chat" or "plain"
    packing: Packing = field(default_factory=Packing)  # packed: each example is a planned row of samples

    def __call__(self, examples: list[dict]) -> dict:
        if not self.packing.on:
            return self._samples(examples)
        groups = None
        if self.packing.mode == "packed":  # a row planned before training: its samples' messages and images
            groups = [n for n, example in enumerate(examples) for _ in example["messages"]]
            examples = [
                {"messages": messages, "images": images}
                for example in examples
                for messages, images in zip(example["messages"], example["images"])
            ]
        batch = self._samples(examples)
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        rows = row_layout(lengths, groups, self.max_length, self.packing.one_row)
        sizes = batch.get("image_sizes")
        views = (
            [self.processor.num_image_views(int(h), int(w)) for h, w in sizes.tolist()]
            if getattr(self.processor, "tiling", False) and sizes is not None
            else [1] * sum(len(example["images"]) for example in examples)
        )
        return pack_batch(
            batch,
            rows,
            [len(example["images"]) for example in examples],
            views,
            self.processor.tokenizer.pad_token_id,
            varlen=self.packing.one_row,
        )

    def _samples(self, examples: list[dict]) -> dict:
        """One sample a row, right-padded, with its labels."""
        batch = self._plain(examples) if self.mode == "plain" else self._chat(examples)
        labels = batch["input_ids"].clone()
        learned = batch.pop("learned")
        labels[
            (learned == 0) | (batch["attention_mask"] == 0) | (batch["input_ids"] == self.processor.image_token_id)
        ] = -100
        batch["labels"] = labels
        return batch

    def _processor_kwargs(self) -> dict:
        return {
            "padding": True,
            "padding_side": "right",
            "truncation": self.max_length is not None,
            "max_length": self.max_length,
            "return_tensors": "pt",
        }

    def _chat(self, examples):
        images = [example["images"] for example in examples]
        kwargs = self._processor_kwargs()
        return_tensors = kwargs.pop("return_tensors")
        if any(images):
            kwargs["images"] = images
        batch = self.processor.apply_chat_template(
            [example["messages"] for example in examples],
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
            return_tensors=return_tensors,
            processor_kwargs=kwargs,
        )
        batch["learned"] = batch.pop("assistant_masks")
        return batch

    def _plain(self, examples):
        parts = [render_plain(example["messages"], len(example["images"])) for example in examples]
        images = [image for example in examples for image in example["images"]] or None
        batch = self.processor(
            images=images, text=[prompt + target for prompt, target in parts], **self._processor_kwargs()
        )
        prompt_lengths = [len(self.processor.tokenizer(prompt)["input_ids"]) for prompt, _ in parts]
        # A prompt holds its <image> once; in input_ids each image is its tokens (image_seq_length, or by size if tiled).
        image_tokens = (batch["input_ids"] == self.processor.image_token_id).sum(dim=1)
        num_images = torch.tensor([len(example["images"]) for example in examples])
        starts = torch.tensor(prompt_lengths) + image_tokens - num_images
        positions = torch.arange(batch["input_ids"].shape[1]).unsqueeze(0)
        batch["learned"] = (positions >= starts.unsqueeze(1)).long()
        return batch
