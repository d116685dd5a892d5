"""Teach a small causal LM a language before it meets images: next-token training on packed texts.

Used to turn the randomly initialised LLMs of tests and the demo into ones that know their world's words; a
frozen LLM that knows nothing gives an adapter nothing to steer. Texts are packed into blocks with EOS between
them, as real LLMs are pretrained, so the model learns to start afresh after whatever came before: the
visual tokens an adapter puts in front of a caption are such a "before".
"""

import random
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from modeling_langbridge.model.modeling_langbridge import hub_kernels_wanted


def packed_blocks(token_lists: list[list[int]], eos_id: int, block_size: int, rng: random.Random):
    """Endless blocks of `block_size` tokens: random texts, each followed by EOS, the block starting mid-stream."""
    stream: list[int] = []
    while True:
        while len(stream) < 2 * block_size:
            stream += rng.choice(token_lists) + [eos_id]
        start = rng.randrange(block_size)
        yield stream[start : start + block_size]
        stream = stream[start + block_size :]


def train_causal_lm(
    folder: str | Path,
    texts: list[str],
    steps: int = 300,
    batch_size: int = 16,
    block_size: int = 64,
    learning_rate: float = 3e-3,
    seed: int = 0,
    progress: bool = True,
    on_step=None,
    use_kernels: bool | None = None,
) -> list[float]:
    """Train the LM saved in `folder` on `texts` and save it back. Returns the loss of every step. `progress` shows a
    bar; `on_step`, if given, is called after every step (the demo's own bar)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, use_kernels=hub_kernels_wanted(use_kernels)
    )
    model.train()
    token_lists = tokenizer(texts, add_special_tokens=False)["input_ids"]
    blocks = packed_blocks(token_lists, tokenizer.eos_token_id, block_size, rng)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=steps, pct_start=0.1)
    losses = []
    for _ in tqdm(range(steps), desc=f"Training {Path(folder).name} on text", disable=not progress):
        input_ids = torch.tensor([next(blocks) for _ in range(batch_size)])
        loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        if on_step is not None:
            on_step()
    model.save_pretrained(folder)
    return losses
