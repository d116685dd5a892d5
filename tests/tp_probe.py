"""Tensor parallelism on CPU processes (gloo): transformers' own `tp_plan="auto"` loading.

    python -m torch.distributed.run --nproc_per_node 2 tests/tp_probe.py MODEL_DIR OUT.pt

Each rank loads the saved LangBridge folder with `distributed_config=DistributedConfig(tp_plan="auto")` (what
`from_pretrained(..., tp_plan="auto")` becomes, without its deprecation warning): transformers starts gloo on CPU, shards the LLM
by its config's plan (attention and MLP projections colwise/rowwise, the input embeddings on the vocabulary) and the
head by LangBridge's `_tp_plan` (`colwise_gather_output`), and loads each rank's shard. Every rank runs a forward
pass and greedy generation on a fixed image and question (the collectives need all of them); rank 0 saves the
logits, the generated tokens and, for every rank, the local and full shape of each parameter.
"""

import sys

import torch
import torch.distributed as dist
from fsdp_probe import image_inputs
from torch.distributed.tensor import DTensor
from transformers import AutoModelForImageTextToText, DistributedConfig

import modeling_langbridge  # noqa: F401  (registers the Auto classes)


def shapes(model) -> dict:
    """Per parameter: its shape on this rank and the whole parameter's, and whether it is a DTensor."""
    record = {}
    for name, p in model.named_parameters():
        local = p.to_local() if isinstance(p, DTensor) else p
        record[name] = {"local": list(local.shape), "full": list(p.shape), "dtensor": isinstance(p, DTensor)}
    return record


def main(model_dir: str, out: str) -> None:
    model = AutoModelForImageTextToText.from_pretrained(
        model_dir, distributed_config=DistributedConfig(tp_plan="auto"), dtype=torch.float32
    ).eval()
    assert dist.is_initialized() and dist.get_world_size() == 2, "transformers did not start the process group"
    inputs = image_inputs(model_dir)
    with torch.no_grad():
        logits = model(**inputs).logits
        generated = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    head, embeddings = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    local = {
        "shapes": shapes(model),
        "tied": head is embeddings,
        "plan": dict(model.tp_plan),
    }
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    if dist.get_rank() == 0:
        torch.save(
            {
                "logits": logits.detach(),
                "generated": generated[:, inputs["input_ids"].shape[1] :],
                "ranks": gathered,
                "world_size": dist.get_world_size(),
            },
            out,
        )
    # Both ranks past every collective before either tears gloo down (see tests/fsdp_probe.py: a rank that
    # destroyed its group while the other still had work in flight aborted once in CI).
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
