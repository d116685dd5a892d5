"""What a LangBridge recipe takes besides TRL's `SFTConfig` (training) and `ModelConfig` (model, LoRA, 4-bit), each
setting checked when the recipe is read (`parse_recipe`), before any work, and refused in one sentence naming it, the
recipe file (or flag) it came from and what it accepts."""

import math
from dataclasses import dataclass, field
from pathlib import Path

from modeling_langbridge.errors import LangBridgeUsageError


class SettingError(LangBridgeUsageError):
    """A setting out of its range: `setting (source) is value; give accepted.` The source (a recipe file, a flag) is
    filled in by whoever knows it (`parse_recipe`)."""

    def __init__(self, setting: str, value, accepted: str, source: str | None = None):
        self.setting, self.value, self.accepted, self.source = setting, value, accepted, source
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f" ({self.source})" if self.source else ""
        return f"{self.setting}{where} is {self.value!r}; give {self.accepted}."


def check_learning_rate(value, setting: str, source: str | None = None):
    """A learning rate that may be left out (None): else a finite number above 0 and at most 1."""
    if value is not None and (not _number(value) or not math.isfinite(value) or not 0 < value <= 1):
        raise SettingError(
            setting, value, "a learning rate above 0 and at most 1, such as 1e-4 (or leave it out)", source
        )
    return value


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class LangBridgeArguments:
    dataset: str = field(
        metadata={"help": "LLaVA JSON file, or a `datasets` name/folder with `messages` and `images`."}
    )
    image_folder: str | None = field(
        default=None, metadata={"help": "Folder the LLaVA JSON's image paths are relative to."}
    )
    dataset_split: str = field(default="train", metadata={"help": "Split of a `datasets` dataset."})
    dataset_config: str | None = field(default=None, metadata={"help": "Configuration name of a `datasets` dataset."})
    data_format: str | None = field(
        default=None,
        metadata={
            "help": "`plain` (images, then the caption; LLaVA's stage 1) or `chat` (assistant replies learned). "
            "Default: plain for pretrain, chat for sft."
        },
    )
    skip_bad_images: bool = field(
        default=True,
        metadata={"help": "Skip (and count) samples whose image is missing or unreadable instead of stopping."},
    )
    max_samples: int | None = field(default=None, metadata={"help": "Train on the first N samples only."})
    train_vision_tower: bool = field(default=False, metadata={"help": "SFT: unfreeze the vision tower (LLaVA-NeXT)."})
    vision_tower_lr: float | None = field(default=None, metadata={"help": "Learning rate of the vision tower."})
    projector_lr: float | None = field(default=None, metadata={"help": "Learning rate of the projector."})
    caption_word_loss: float = field(
        default=0.0,
        metadata={
            "help": "Stage 1, LangBridge: weight of an added loss asking each image's mean coefficients to name its "
            "caption's shared-vocabulary words (training/caption_words.py). 0: off, the paper's stage 1."
        },
    )
    coefficient_spread_loss: float = field(
        default=0.0,
        metadata={
            "help": "Stage 1, LangBridge: weight of an added loss asking each visual token to mix few shared words "
            "(the mean log of its effective number of tokens; training/caption_words.py). 0: off, the paper's stage 1."
        },
    )
    use_kernels: bool | None = field(
        default=None,
        metadata={
            "help": "transformers' Hub kernels (e.g. kernels-community/rotary) for every model the recipe loads. "
            "Default: only when the Hub may be reached (not under HF_HUB_OFFLINE=1), so offline GPU "
            "machines train without them; true on an offline machine reads them from the local cache."
        },
    )
    merge_lora: bool = field(
        default=True,
        metadata={"help": "After LoRA/QLoRA SFT, also save the LoRA merged into a full-precision model in `merged/`."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start over in an output_dir that holds an earlier run (its weights, adapter or checkpoints), "
            "replacing it; without it such a folder is refused, unless resume_from_checkpoint continues that run. "
            "The earlier run's checkpoints are removed when training starts, its weights only once the new ones "
            "are saved whole."
        },
    )

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """Refuse a setting out of range (SettingError); the recipes call it again before any work."""
        from .caption_words import LOSSES as COEFFICIENT_LOSSES
        from .caption_words import check_weight

        if not isinstance(self.dataset, str) or not self.dataset.strip():
            raise SettingError(
                "dataset",
                self.dataset,
                "a LLaVA JSON (.json) or JSON Lines (.jsonl) file, or a "
                "`datasets` folder or name with `messages` and `images`",
            )
        if self.data_format not in (None, "plain", "chat"):
            raise SettingError("data_format", self.data_format, "plain (stage-1 captions) or chat (conversations)")
        whole = isinstance(self.max_samples, int) and not isinstance(self.max_samples, bool)
        if self.max_samples is not None and not (whole and self.max_samples >= 1):
            raise SettingError("max_samples", self.max_samples, "a whole number of at least 1 (or leave it out)")
        for name in ("projector_lr", "vision_tower_lr"):
            check_learning_rate(getattr(self, name), name)
        for name in COEFFICIENT_LOSSES:
            check_weight(getattr(self, name), name)
        for name in ("skip_bad_images", "train_vision_tower", "merge_lora", "overwrite_output_dir"):
            if not isinstance(getattr(self, name), bool):
                raise SettingError(name, getattr(self, name), "true or false")
        if self.use_kernels is not None and not isinstance(self.use_kernels, bool):
            raise SettingError("use_kernels", self.use_kernels, "true, false, or leave it out")


def packing_of(training_args, model_args=None):
    """The batch layout TRL's own settings ask for (`padding_free`, `packing`, `packing_strategy`, `max_length` in
    `SFTConfig`), which the recipes implement for image-text data (training/packing.py) and hand to TRL switched off
    (TRL 1.16 refuses both for vision datasets). Refused (SettingError) where it cannot work: a strategy that cuts
    samples, packing without a row length, an attention that would let packed samples see each other, context or
    sequence parallelism. The loaded model is checked too (`Packing.for_model`)."""
    from .packing import ATTENTION_ACCEPTED, Packing, packs_samples_apart

    packing, padding_free = training_args.packing, training_args.padding_free
    for name, value in (("packing", packing), ("padding_free", padding_free)):
        if not isinstance(value, bool):
            raise SettingError(name, value, "true or false")
    if not (packing or padding_free):
        return Packing()
    if packing and training_args.packing_strategy != "bfd":
        raise SettingError(
            "packing_strategy",
            training_args.packing_strategy,
            "bfd (whole samples, best fit, into rows of at most max_length tokens); 'wrapped' and 'bfd_split' cut "
            "samples at row ends, which would split an image's tokens from its pixels and a reply from its prompt",
        )
    if packing and training_args.max_length is None:
        raise SettingError("max_length", None, "the length of a packed row in tokens, such as 4096, when packing: true")
    attention = getattr(model_args, "attn_implementation", None)
    if not packs_samples_apart(attention):
        raise SettingError(
            "attn_implementation",
            attention,
            f"{ATTENTION_ACCEPTED} with padding_free or packing: {attention!r} would let packed samples attend to "
            "one another",
        )
    parallelism = getattr(training_args, "parallelism_config", None)
    if parallelism is not None and (
        getattr(parallelism, "cp_enabled", False) or getattr(parallelism, "sp_enabled", False)
    ):
        raise SettingError(
            "parallelism_config",
            "context/sequence parallelism",
            "no context or sequence parallelism with padding_free or packing: a row split across GPUs loses the "
            "packed samples' masks (or set padding_free: false and packing: false)",
        )
    return Packing("packed" if packing else "padding_free")


def parse_recipe(config: str | Path, overrides: list[str] = (), parser=None) -> tuple:
    """A recipe's `(LangBridgeArguments, SFTConfig, ModelConfig)` from its YAML file and flags; a setting refused
    while reading them names the recipe file, or the flag that gave it."""
    import yaml
    from trl import ModelConfig, SFTConfig, TrlParser

    parser = parser or TrlParser((LangBridgeArguments, SFTConfig, ModelConfig))
    overrides = [str(item) for item in overrides]
    try:
        parsed = parser.parse_args_and_config(["--config", str(config), *overrides])
        if len(parsed) == 3 and hasattr(parsed[1], "packing_strategy"):  # (LangBridgeArguments, SFTConfig, ModelConfig)
            packing_of(parsed[1], parsed[2])
        return parsed
    except SettingError as error:
        flag = f"--{error.setting}"
        error.source = (
            f"given as {flag}"
            if any(item == flag or item.startswith(flag + "=") for item in overrides)
            else f"in recipe {config}"
        )
        raise
    except yaml.YAMLError as error:
        problem = " ".join(str(error).split())
        raise LangBridgeUsageError(f"recipe {config} is not valid YAML ({problem}); fix the file.") from error
    except LangBridgeUsageError:
        raise
    except ValueError as error:  # TRL's and transformers' checks of the recipe's settings
        message = " ".join(str(error).split())
        raise LangBridgeUsageError(f"recipe {config} (or its flags) is refused: {message}") from error
