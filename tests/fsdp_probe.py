"""FSDP2 on CPU processes (gloo), two ways.

    accelerate launch --config_file configuration/accelerate/fsdp.yaml --num_processes 2 tests/fsdp_probe.py --config cfg.yaml
        the SFT recipe under the shipped FSDP2 launch config; each rank records how its parameters are sharded
    python -m torch.distributed.run --nproc_per_node 2 tests/fsdp_probe.py tokens MODEL_DIR OUT.pt
        a model sharded by hand with the embedding module in its own FSDP unit; rank 0 saves the visual tokens

accelerate 1.16 turns FSDP on only for accelerator devices: on CPU (`DistributedType.MULTI_CPU`) it drops the FSDP
plugin without a word and the run is plain DDP. `cpu_fsdp()` lifts that one gate; everything after it is accelerate's
and torch's real FSDP2 path (`fully_shard` on a gloo CPU mesh, the full-state-dict save).
"""

import json
import sys
from pathlib import Path

import torch


def image_inputs(model_dir) -> dict:
    """A fixed image and question, as the processor prepares them."""
    from transformers import AutoProcessor

    from modeling_langbridge.assembly.tiny import random_shapes_image

    processor = AutoProcessor.from_pretrained(model_dir)
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}],
        add_generation_prompt=True,
    )
    return processor(images=[random_shapes_image(0)], text=[text], return_tensors="pt")


def cpu_fsdp() -> None:
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if self.distributed_type == DistributedType.MULTI_CPU and fsdp_plugin is not None:
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin

    AcceleratorState.__init__ = init


def train() -> None:
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor
    from transformers import TrainerCallback
    from trl import ModelConfig, SFTConfig, TrlParser

    from langbridge_training import sft
    from langbridge_training.arguments import LangBridgeArguments

    class Shards(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            record = {
                name: {
                    "dtensor": isinstance(p, DTensor),
                    "local": (p.to_local() if isinstance(p, DTensor) else p).numel(),
                    "full": p.numel(),
                    "dtype": str(p.dtype),
                    "trainable": p.requires_grad,
                }
                for name, p in model.named_parameters()
            }
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
            (Path(args.output_dir) / f"shards-rank{args.process_index}.json").write_text(
                json.dumps(
                    {
                        "world_size": args.world_size,
                        "fsdp_units": sum(type(m).__name__.startswith("FSDP") for m in model.modules()),
                        "parameters": record,
                    }
                )
            )

    cpu_fsdp()
    arguments = TrlParser((LangBridgeArguments, SFTConfig, ModelConfig)).parse_args_and_config()
    sft.main(*arguments, callbacks=[Shards()])
    if dist.is_initialized():  # as in visual_tokens: no rank tears gloo down with work in flight, none exits without
        dist.barrier()
        dist.destroy_process_group()


def visual_tokens(model_dir: str, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor
    from transformers import AutoModelForImageTextToText

    import modeling_langbridge  # noqa: F401  (registers the Auto classes)

    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    embed = model.get_input_embeddings()
    for module in model.modules():  # decoder and encoder layers, as the wrap policy does
        if type(module).__name__ in model._no_split_modules:
            fully_shard(module, mesh=mesh)
    fully_shard(embed, mesh=mesh)  # its own unit: outside its call, its weight is a shard
    fully_shard(model, mesh=mesh)
    assert isinstance(embed.weight, DTensor) and embed.weight.to_local().shape[0] < embed.weight.shape[0]

    captured = []
    model.model.multi_modal_projector.register_forward_hook(
        lambda module, args, output: captured.append(output.detach())
    )
    with torch.no_grad():
        model(**image_inputs(model_dir))
    if dist.get_rank() == 0:
        torch.save({"visual_tokens": captured[0], "embedding_local_rows": embed.weight.to_local().shape[0]}, out)
    # Both ranks past every collective before either tears gloo down: a rank that destroyed its group while the
    # other still had FSDP's all-gathers in flight aborted once in CI ("terminate called without an active
    # exception", SIGABRT on rank 1 with no Python traceback).
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    if sys.argv[1] == "tokens":
        visual_tokens(sys.argv[2], sys.argv[3])
    else:
        train()
