"""TRL's SFTTrainer with what LangBridge training adds: learning rates per part, a float32 projector under
QLoRA, and the data report at the end."""

import json
from pathlib import Path

import torch
from transformers import Trainer
from trl import SFTTrainer

from .data import DataReport


class LangBridgeTrainer(SFTTrainer):
    def __init__(self, *args, projector_lr: float | None = None, vision_tower_lr: float | None = None,
                 data_report: DataReport | None = None, image_loader=None, **kwargs):
        self.projector_lr = projector_lr
        self.vision_tower_lr = vision_tower_lr
        self.data_report = data_report or DataReport()
        self.image_loader = image_loader
        training_args = kwargs["args"]
        training_args.remove_unused_columns = False  # the collator needs the messages and images
        training_args.assistant_only_loss = False  # the collator decides what is learned, template or not
        super().__init__(*args, **kwargs)
        # TRL casts the trainable parameters of a quantized model to bf16 (for LoRA, as QLoRA recommends); the
        # projector and a trainable vision tower are trained in full and keep float32 so small updates survive.
        for name, parameter in self.model.named_parameters():
            if parameter.requires_grad and ("multi_modal_projector" in name or "vision_tower" in name):
                parameter.data = parameter.data.float()

    def create_optimizer(self, model=None):
        """AdamW (or the configured optimizer) with the projector and the vision tower at their own rates."""
        if self.optimizer is not None:
            return self.optimizer
        model = model or self.model
        decay = set(self.get_decay_parameter_names(model))
        groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
        for name, parameter in model.named_parameters():
            if not parameter.requires_grad:
                continue
            rate = self.args.learning_rate
            if "multi_modal_projector" in name and self.projector_lr is not None:
                rate = self.projector_lr
            elif "vision_tower" in name and self.vision_tower_lr is not None:
                rate = self.vision_tower_lr
            weight_decay = self.args.weight_decay if name in decay else 0.0
            groups.setdefault((rate, weight_decay), []).append(parameter)
        optimizer_class, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, model)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_class(
            [{"params": params, "lr": rate, "weight_decay": wd} for (rate, wd), params in groups.items()],
            **optimizer_kwargs,
        )
        return self.optimizer

    def report_data(self) -> str:
        """The data summary, printed and saved as data_report.json in the output folder."""
        if self.image_loader is not None:
            self.data_report.skipped_bad_images = self.image_loader.skipped
        summary = self.data_report.summary()
        if self.is_world_process_zero():
            print(f"Data: {summary}")
            Path(self.args.output_dir).mkdir(parents=True, exist_ok=True)
            (Path(self.args.output_dir) / "data_report.json").write_text(json.dumps(self.data_report.to_dict(), indent=2))
        return summary
