"""Run the SFT recipe under torchrun and record, per rank, a digest of the final weights.

python -m torch.distributed.run --nproc_per_node 2 tests/ddp_probe.py --config cfg.yaml
"""

import hashlib
import json
from pathlib import Path

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


if __name__ == "__main__":
    arguments = TrlParser((LangBridgeArguments, SFTConfig, ModelConfig)).parse_args_and_config()
    sft.main(*arguments, callbacks=[WeightDigest()])
