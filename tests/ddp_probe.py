"""Run the SFT recipe under torchrun and record, per rank, a digest of the final weights; under DeepSpeed ZeRO-3,
rank 0 also saves the visual tokens of a fixed image computed by the partitioned model before the first step.

python -m torch.distributed.run --nproc_per_node 2 tests/ddp_probe.py --config cfg.yaml
"""

import hashlib
import json
from pathlib import Path

import torch
from transformers import TrainerCallback
from trl import ModelConfig, SFTConfig, TrlParser

from langbridge_training import sft
from langbridge_training.arguments import LangBridgeArguments


class WeightDigest(TrainerCallback):
    def on_train_end(self, args, state, control, model=None, **kwargs):
        model = getattr(model, "module", model)
        weights = b"".join(v.detach().cpu().numpy().tobytes() for _, v in sorted(model.state_dict().items()))
        digest = {"world_size": args.world_size, "parameters": hashlib.sha256(weights).hexdigest()}
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.output_dir) / f"digest-rank{args.process_index}.json").write_text(json.dumps(digest))


class PartitionedVisualTokens(TrainerCallback):
    """ZeRO-3 only: before the first training step, the visual tokens of a fixed image computed by the partitioned
    model called directly, outside DeepSpeed's engine forward, as `generate` calls it. There only a called module
    gathers its weights (inside the engine's forward, DeepSpeed gathers any parameter a forward reads and registers it
    with the running module, whose later calls then gather it too), so the projector's vocabulary layer is empty and
    must be called, not read. Both ranks run the model (each layer all-gathers as it is called); rank 0 saves."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        model = getattr(model, "module", model)
        vocab_proj = model.model.multi_modal_projector.vocab_proj
        if not hasattr(vocab_proj.weight, "ds_id"):  # not partitioned by ZeRO-3
            return
        calls = []
        hook = vocab_proj.register_forward_hook(lambda module, args, output: calls.append(output.shape))
        size = model.config.vision_config.image_size
        pixel_values = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            visual_tokens = model.model.get_image_features(pixel_values=pixel_values).pooler_output[0]
        hook.remove()
        if args.process_index == 0:
            record = {
                "pixel_values": pixel_values,
                "visual_tokens": visual_tokens,
                "vocab_proj_calls": torch.tensor(len(calls)),  # the fold reads the layer's weight and never calls it
                "weight_numel_outside_forward": torch.tensor(vocab_proj.weight.numel()),
            }
            torch.save(record, Path(args.output_dir) / "zero3-visual-tokens.pt")


if __name__ == "__main__":
    arguments = TrlParser((LangBridgeArguments, SFTConfig, ModelConfig)).parse_args_and_config()
    sft.main(*arguments, callbacks=[WeightDigest(), PartitionedVisualTokens()])
