"""Where the recipes' loss is computed: TRL's fused LM head (the head and cross-entropy in tiles, only at positions
with a label), never the [tokens x vocabulary] logits; and it is the same loss, with the same gradients, as the
model's own forward."""

import pytest
import torch
import yaml
from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback
from trl import ModelConfig, SFTConfig, TrlParser
from trl.trainer.utils import add_fused_lm_head

from langbridge_training import sft
from langbridge_training.arguments import LangBridgeArguments
from langbridge_training.collator import LangBridgeCollator
from langbridge_training.data import load_llava_json, with_lazy_images

CPU = {
    "use_cpu": True,
    "bf16": False,
    "report_to": [],
    "logging_steps": 1,
    "save_strategy": "no",
    "seed": 0,
    "dataloader_num_workers": 0,
    "max_length": 160,
    "disable_tqdm": True,
    "per_device_train_batch_size": 4,
    "activation_checkpointing": False,
}


class HeadCalls(TrainerCallback):
    """Counts calls of the LM head module during training: each would make full [tokens x vocabulary] logits."""

    def __init__(self):
        self.calls, self.losses = 0, []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        model.get_output_embeddings().register_forward_hook(lambda *_: setattr(self, "calls", self.calls + 1))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])


@pytest.mark.parametrize("use_peft", [False, True], ids=["full", "lora"])
def test_sft_recipe_never_forms_full_logits(world_model_dir, world, tmp_path, use_peft):
    config = tmp_path / "sft.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                **CPU,
                "model_name_or_path": str(world_model_dir),
                "dataset": str(world["qa"]),
                "image_folder": str(world["images"]),
                "output_dir": str(tmp_path / "out"),
                "max_steps": 2,
                "learning_rate": 1e-4,
                "use_peft": use_peft,
                "merge_lora": False,
            }
        )
    )
    probe = HeadCalls()
    args = TrlParser((LangBridgeArguments, SFTConfig, ModelConfig)).parse_args_and_config(["--config", str(config)])
    sft.main(*args, callbacks=[probe])
    assert len(probe.losses) == 2 and all(0 < loss < 20 for loss in probe.losses)
    assert probe.calls == 0


def test_fused_loss_equals_the_models_own_loss_and_gradients(world_model_dir, world):
    model = AutoModelForImageTextToText.from_pretrained(world_model_dir)
    processor = AutoProcessor.from_pretrained(world_model_dir)
    dataset, _ = with_lazy_images(load_llava_json(world["qa"], world["images"]))
    batch = LangBridgeCollator(processor, None, "chat")([dataset[i] for i in range(6)])

    def loss_and_grads(**extra):
        model.zero_grad(set_to_none=True)
        loss = model(**batch, **extra).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain_loss, plain_grads = loss_and_grads()
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # what SFTTrainer does to our model
    fused_loss, fused_grads = loss_and_grads(fused_lm_head=True)
    torch.testing.assert_close(fused_loss, plain_loss, rtol=1e-5, atol=1e-6)
    assert fused_grads.keys() == plain_grads.keys()
    for name, grad in fused_grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-4, atol=1e-6, msg=name)
