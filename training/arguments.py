"""What a LangBridge recipe takes besides TRL's `SFTConfig` (training) and `ModelConfig` (model, LoRA, 4-bit)."""

from dataclasses import dataclass, field


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
